"""Faust on the embedded broker (Tansu): right end offsets and a short fetch wait.

Tansu answers ListOffsets "latest" with the base offset of the last record batch + 1, so Faust's
changelog recovery stops early (missing the tail of the table) or trips over its consistency
check. The high watermark inside a Fetch response is right, so in embedded mode only, after
asking for end offsets we fetch from that (possibly wrong) offset − 1 with a throw-away consumer
and take the fetch high watermark. Tansu's fetch is not woken by new records either, so
consumers wait at most ``EMBEDDED_FETCH_MAX_WAIT_MS`` per fetch instead of Faust's 1.5 s.
Real Kafka is untouched (:func:`install` is called only when ``KafkaSettings.embedded``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, TopicPartition

from astreg.settings import EMBEDDED_FETCH_MAX_WAIT_MS, KafkaSettings

__all__ = ["INTERNALS", "true_end_offsets", "install"]

logger = logging.getLogger(__name__)

_DRIVER = "faust.transport.drivers.aiokafka"
INTERNALS = [
    f"{_DRIVER}:AIOKafkaConsumerThread._highwaters(self, partitions)",
    # the short fetch wait: Faust's consumers are aiokafka's, their wait given by keyword
    f"{_DRIVER}:AIOKafkaConsumerThread._create_worker_consumer uses aiokafka.AIOKafkaConsumer(",
    f"{_DRIVER}:AIOKafkaConsumerThread._create_worker_consumer uses fetch_max_wait_ms=",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.__init__ uses fetch_max_wait_ms=500",
]


async def true_end_offsets(kafka: KafkaSettings, reported: Mapping[Any, int]) -> dict[Any, int]:
    """End offsets fixed from Fetch high watermarks (``reported`` = ListOffsets answers)."""
    wanted = {tp: off for tp, off in reported.items() if off > 0}
    out = dict(reported)
    if not wanted:
        return out
    probe = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None,
                             max_partition_fetch_bytes=1024)
    await probe.start()
    try:
        tps = {TopicPartition(tp.topic, tp.partition): tp for tp in wanted}
        probe.assign(list(tps))
        for tp, orig in tps.items():
            probe.seek(tp, wanted[orig] - 1)
        pending = set(tps)
        deadline = asyncio.get_running_loop().time() + 10
        while pending and asyncio.get_running_loop().time() < deadline:
            await probe.getmany(*pending, timeout_ms=300, max_records=1)
            for tp in list(pending):
                hw = probe.highwater(tp)
                if hw is not None:
                    out[tps[tp]] = max(hw, wanted[tps[tp]])
                    pending.discard(tp)
        if pending:
            logger.warning("no high watermark for %s: keeping ListOffsets answers", sorted(map(str, pending)))
    finally:
        await probe.stop()
    return out


def install(kafka: KafkaSettings) -> None:
    """Patch Faust's aiokafka driver so highwaters() are right on the embedded broker (once)."""
    from faust.transport.drivers import aiokafka as driver  # Faust only where a worker runs

    if getattr(driver.AIOKafkaConsumerThread, "_astreg_true_highwaters", False):
        return
    original = driver.AIOKafkaConsumerThread._highwaters

    async def _highwaters(self: Any, partitions: Any) -> Mapping[Any, int]:
        reported = await original(self, partitions)
        return await true_end_offsets(kafka, reported)

    driver.AIOKafkaConsumerThread._highwaters = _highwaters  # type: ignore[method-assign]
    driver.AIOKafkaConsumerThread._astreg_true_highwaters = True  # type: ignore[attr-defined]
    _short_fetch_wait()


def _short_fetch_wait() -> None:
    """Faust hard-codes fetch_max_wait_ms=1500; the embedded broker then delays every record by
    up to 1.5 s (its fetch is not woken by new data). Every aiokafka consumer of the process
    waits at most :data:`~astreg.settings.EMBEDDED_FETCH_MAX_WAIT_MS` instead, whenever it was
    imported or made. Embedded mode only: real Kafka keeps it."""
    cls: Any = aiokafka.AIOKafkaConsumer
    if getattr(cls, "_astreg_short_wait", False):
        return
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, *topics: Any, **kw: Any) -> None:
        kw["fetch_max_wait_ms"] = min(kw.get("fetch_max_wait_ms", 500), EMBEDDED_FETCH_MAX_WAIT_MS)
        original(self, *topics, **kw)

    cls.__init__ = __init__
    cls._astreg_short_wait = True
