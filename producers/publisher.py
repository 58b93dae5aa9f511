"""Send encoded records to Kafka in order, through a bounded buffer that survives outages.

:class:`Publisher` wraps one ``AIOKafkaProducer`` (acks=all, linger, compression, idempotence
from :class:`~astreg.settings.KafkaSettings`). Callers ``put()`` already-encoded records
synchronously — it never blocks, so the AMI reader never stalls — and one sender task drains
the buffer in order. A batch leaves the buffer only once Kafka acknowledged it; on failure the
same batch is retried with backoff (duplicates are harmless: readers drop records whose
``(epoch, seq)`` they already applied). When the buffer is full, older records of the same
coalescing key (one contact, one device, one heartbeat) are dropped first, so the latest state
of every contact survives an outage; only when that is not enough are the oldest records
dropped, counted and logged. ``on_recovered`` is called when Kafka answers again after a
failure, or acknowledged a batch only after ``stall_after`` seconds (an outage shorter than the
request timeout fails nothing, but held heartbeats back): the node then takes a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from astreg.partition import partition_for
from astreg.settings import KafkaSettings

from .metrics import ProducerMetrics

__all__ = ["Publisher", "Record"]

logger = logging.getLogger(__name__)

BATCH = 2000  # records handed to aiokafka before awaiting their acks
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0


@dataclass(slots=True)
class Record:
    topic: str
    key: bytes
    value: bytes
    coalesce: Hashable | None  # records with the same non-None key: only the last one matters
    kind: str  # metrics label
    headers: list[tuple[str, bytes]] | None = None


class Publisher:
    """Ordered, bounded, outage-proof sending of encoded records (see module docstring)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        buffer_size: int = 100_000,
        linger_ms: int = 0,
        compression: str = "none",
        metrics: ProducerMetrics | None = None,
        on_recovered: Callable[[], None] | None = None,
        request_timeout_ms: int = 10_000,
        stall_after: float | None = None,
    ):
        self.kafka = kafka
        self.buffer_size = buffer_size
        self.metrics = metrics or ProducerMetrics()
        self.on_recovered = on_recovered
        self.stall_after = stall_after
        self._buffer: deque[Record] = deque()
        self._inflight: list[Record] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._kafka_up = True
        self._closing = False
        self.sent = 0
        self.dropped = 0
        self.coalesced = 0
        self._producer_kwargs: dict[str, Any] = dict(
            client_id=f"{kafka.client_id}-producer",
            acks="all",
            linger_ms=linger_ms,
            max_batch_size=256 * 1024,
            compression_type=None if compression == "none" else compression,
            enable_idempotence=kafka.idempotent,
            request_timeout_ms=request_timeout_ms,
            retry_backoff_ms=200,
            **kafka.aiokafka_kwargs(),
        )
        self._producer: AIOKafkaProducer | None = None
        self._partitions: dict[str, list[int]] = {}

    # ------------------------------------------------------------ public API

    @property
    def depth(self) -> int:
        """Records not yet acknowledged by Kafka."""
        return len(self._buffer) + len(self._inflight)

    @property
    def kafka_up(self) -> bool:
        return self._kafka_up

    def put(self, record: Record) -> None:
        """Queue one record (never blocks); coalesce or drop old records when full."""
        if len(self._buffer) >= self.buffer_size:
            self._make_room()
        self._buffer.append(record)
        if not self._wakeup.is_set():
            self._wakeup.set()

    async def wait_below(self, depth: int) -> None:
        """Wait until at most ``depth`` records are unacknowledged, or Kafka is down."""
        while self.depth > depth and self._kafka_up and not self._closing:
            await asyncio.sleep(0.005)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="kafka-sender")

    async def flush(self, timeout: float) -> bool:
        """Wait until everything queued so far is acknowledged (False on timeout)."""
        deadline = time.monotonic() + timeout
        while self.depth and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self.depth

    async def stop(self, flush_timeout: float = 5.0) -> None:
        """Flush (bounded), then stop the sender and the Kafka client."""
        if self._task is not None and not self._task.done():
            if not await self.flush(flush_timeout):
                logger.warning("stopping with %d records not acknowledged by Kafka", self.depth)
            self._closing = True
            self._task.cancel()
            # Bounded: the sender may be inside aiokafka's start()/stop() of a client that never
            # reached the broker, and a stop must never hang the process (or a test) on it.
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                logger.warning("Kafka sender did not stop within 5 s: abandoned")
        if self._producer is not None:
            try:
                await asyncio.wait_for(self._producer.stop(), 5)
            except (TimeoutError, KafkaError, OSError) as exc:
                logger.warning("Kafka producer did not stop cleanly: %s", exc)
            self._producer = None

    # ------------------------------------------------------------ buffer

    def _make_room(self) -> None:
        before = len(self._buffer)
        last: dict[Hashable, int] = {}
        for i, rec in enumerate(self._buffer):
            if rec.coalesce is not None:
                last[rec.coalesce] = i
        kept = deque(
            rec
            for i, rec in enumerate(self._buffer)
            if rec.coalesce is None or last[rec.coalesce] == i
        )
        coalesced = before - len(kept)
        self._buffer = kept
        if coalesced:
            self.coalesced += coalesced
            self.metrics.coalesced.inc(coalesced)
        # Coalescing must free a real margin, else the next put would coalesce again at O(n).
        target = int(self.buffer_size * 0.9)
        dropped = 0
        while len(self._buffer) > target:
            self._buffer.popleft()
            dropped += 1
        if dropped:
            self.dropped += dropped
            self.metrics.dropped.inc(dropped)
            logger.error(
                "Kafka buffer full (%d records): dropped the %d oldest records after coalescing %d",
                self.buffer_size, dropped, coalesced,
            )
        else:
            logger.warning("Kafka buffer full: coalesced %d superseded records", coalesced)

    # ------------------------------------------------------------ sender

    async def _ensure_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            producer = AIOKafkaProducer(**self._producer_kwargs)
            try:
                await producer.start()
            except BaseException:
                try:
                    await producer.stop()
                except Exception:  # noqa: BLE001 - already failing; the first error matters
                    pass
                raise
            self._producer = producer
        return self._producer

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        while not self._closing:
            if not self._buffer and not self._inflight:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._inflight:
                n = min(BATCH, len(self._buffer))
                self._inflight = [self._buffer.popleft() for _ in range(n)]
                self.metrics.waiting_since.set(time.time())
            try:
                producer = await self._ensure_producer()
                started = time.perf_counter()
                await asyncio.gather(*await self._send_batches(producer, self._inflight))
            except Exception as exc:  # noqa: BLE001 - KafkaError, OSError, timeouts, client bugs: retry
                if not isinstance(exc, KafkaError | OSError | TimeoutError):
                    logger.exception("unexpected error sending to Kafka")
                if self._kafka_up:
                    logger.error("Kafka unreachable (%s): buffering (%d records)", exc, self.depth)
                self._kafka_up = False
                self.metrics.kafka_up.set(0)
                self.metrics.send_errors.inc()
                self.metrics.buffer_depth.set(self.depth)
                await self._reset_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            took = time.perf_counter() - started
            self.metrics.send_latency.observe(took)
            kinds: dict[str, int] = {}
            for rec in self._inflight:
                kinds[rec.kind] = kinds.get(rec.kind, 0) + 1
            for kind, n in kinds.items():
                self.metrics.events_out.labels(kind).inc(n)
            self.sent += len(self._inflight)
            self._inflight = []
            self.metrics.waiting_since.set(0)
            self.metrics.buffer_depth.set(self.depth)
            backoff = BACKOFF_MIN
            if not self._kafka_up:
                self._kafka_up = True
                self.metrics.kafka_up.set(1)
                logger.info("Kafka reachable again; %d records still buffered", self.depth)
                if self.on_recovered is not None:
                    self.on_recovered()
            elif self.stall_after is not None and took > self.stall_after:
                logger.warning("Kafka took %.1fs to acknowledge a batch; %d records still buffered", took, self.depth)
                if self.on_recovered is not None:
                    self.on_recovered()

    async def _send_batches(self, producer: AIOKafkaProducer, records: list[Record]) -> list[asyncio.Future[Any]]:
        """Hand records to aiokafka as whole batches per partition (far cheaper than one send()
        per record); partitions chosen like aiokafka's default partitioner (murmur2 of the key),
        so every astreg component agrees on where an endpoint lives."""
        batches: dict[tuple[str, int], Any] = {}
        futures: list[asyncio.Future[Any]] = []
        for rec in records:
            parts = self._partitions.get(rec.topic)
            if parts is None:
                parts = self._partitions[rec.topic] = sorted(await producer.partitions_for(rec.topic))
            part = parts[partition_for(rec.key, len(parts))]
            tp = (rec.topic, part)
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = producer.create_batch()
            if batch.append(key=rec.key, value=rec.value, timestamp=None, headers=rec.headers or []) is None:
                futures.append(await producer.send_batch(batch, rec.topic, partition=part))
                batch = batches[tp] = producer.create_batch()
                batch.append(key=rec.key, value=rec.value, timestamp=None, headers=rec.headers or [])
        for (topic, part), batch in batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=part))
        return futures

    async def _reset_producer(self) -> None:
        # A fresh client after a failure: aiokafka keeps failed batches of the old one queued,
        # and the retry must not overtake them (order), so the old one is thrown away.
        producer, self._producer = self._producer, None
        self._partitions.clear()  # a recreated topic may have another layout
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 2)
            except Exception as exc:  # noqa: BLE001 - best effort on a broken client
                logger.debug("closing the failed Kafka client: %s", exc)
