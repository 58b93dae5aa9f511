"""Where the worker writes: the locations topic, the dead-letter topic, synthetic events.

:class:`Outputs` sends through the app's producer (locations in one record batch per
partition, ``streams/produce.py``); tests hand it a stand-in ``send``. The agent publishes rows
and dead letters through it, the timers their synthetic events and undecodable node records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import faust

from astreg.auth import Signer
from astreg.deadletter import deadletter_headers
from astreg.partition import partition_for
from astreg.patches.aiokafka import app_producer
from astreg.settings import TopicSettings
from schemas.codec import location_codec, registration_codec
from schemas.models import RegistrationEvent

from .metrics import StreamMetrics
from .produce import send_batches
from .rules import Row, location_of

__all__ = ["Outputs", "Send"]

logger = logging.getLogger(__name__)

Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None], Awaitable[Any]]


class Outputs:
    """Where the worker writes: locations, dead letters, synthetic events (one producer)."""

    def __init__(self, app: faust.App, topics: TopicSettings, metrics: StreamMetrics, send: Send | None = None,
                 signer: Signer | None = None):
        self.app = app
        self.signer = signer  # the workers' key: synthetic events are checked like every record
        self.topics = topics
        self.metrics = metrics
        self._send = send or self._producer_send
        self.locations = location_codec()
        self.registrations = registration_codec()
        self._source_count: int | None = None  # partitions of the registrations topic

    async def _producer_send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> Any:
        return await self.app.producer.send(topic, key, value, None, None, headers)

    async def _producer_send_batch(
        self, topic: str, records: list[tuple[bytes, bytes | None, int | None]]
    ) -> list[asyncio.Future[Any]]:
        # One record batch per partition instead of one producer.send per record (streams/produce.py).
        producer = app_producer(self.app)
        count = len(await producer.partitions_for(topic))
        if self._source_count is None:
            self._source_count = len(await producer.partitions_for(self.topics.topic_registrations))
        if count != self._source_count:  # not co-partitioned: every key through murmur2
            records = [(k, v, None) for k, v, _ in records]
        sent = await send_batches(producer, topic, (
            (partition_for(k, count) if p is None else p, k, v) for k, v, p in records))
        return [fut for _, fut, _ in sent]

    def encode_location(self, row: Row | None) -> bytes | None:
        loc = location_of(row)
        return None if loc is None else self.locations.encode(loc)

    async def location(self, endpoint: str, row: Row | None) -> list[asyncio.Future[Any]]:
        return await self.publish([(endpoint, row, None)])

    async def publish(self, rows: Sequence[tuple[str, Row | None, int | None]]) -> list[asyncio.Future[Any]]:
        """Publish rows (None or no contact left: tombstone) to the locations topic, batched.

        Each row comes with the partition of the registration record it was read from, or
        None. Keyed by the endpoint, that record was placed by Kafka's default partitioner
        (murmur2 of the same key), so on a topic with as many partitions the location
        record's partition is the same one: no second murmur2 (pure Python in aiokafka,
        1.4 µs) per record. Rows without it, or a locations topic with another partition
        count, get murmur2. Returns the delivery futures: the caller lets the source offsets be
        committed only once they are acknowledged."""
        if not rows:
            return []
        records = [(endpoint.encode(), self.encode_location(row), partition) for endpoint, row, partition in rows]
        tombstones = sum(1 for _, value, _ in records if value is None)
        published = self.metrics.published
        if tombstones:
            published.labels("tombstone").inc(tombstones)
        if len(records) > tombstones:
            published.labels("row").inc(len(records) - tombstones)
        topic = self.topics.topic_locations
        if self._send == self._producer_send:
            return await self._producer_send_batch(topic, records)
        futures = []
        for key, value, _ in records:  # a stand-in send (tests): one call per record
            futures.append(await self._send(topic, key, value, None))
        return [f for f in futures if isinstance(f, asyncio.Future)]

    async def deadletter(self, src_topic: str, key: bytes | None, value: bytes | None, reason: str,
                         partition: int | None, offset: int | None, error: str | None = None) -> Any:
        self.metrics.deadletters.labels(src_topic, reason).inc()
        logger.warning("dead letter from %s[%s]@%s: %s %s", src_topic, partition, offset, reason, error or "")
        headers = deadletter_headers(reason, component="stream", topic=src_topic, partition=partition,
                                     offset=offset, error=error)
        return await self._send(self.topics.topic_deadletter, key, value, headers)  # its delivery future

    async def synthetic(self, event: RegistrationEvent) -> Any:
        """Send a synthetic event; returns its delivery future (RecordMetadata: partition, offset)."""
        self.metrics.synthetic.labels(event.kind.value, event.cause or "").inc()
        key, value = event.endpoint.encode(), self.registrations.encode(event)
        headers = self.signer.headers(b"registrations", key, value) if self.signer is not None else None
        return await self._send(self.topics.topic_registrations, key, value, headers)
