"""The agent ``track_registrations``: registration events → table rows → locations topic.

It takes the registrations topic in batches (raw bytes, decoded here with schemas.codec),
applies :func:`streams.rules.decide` to each event, then per endpoint of the batch writes the
table once if the durable state changed and publishes the row (or a tombstone) once if what
consumers see changed. Undecodable or impossible records go to the dead-letter topic with the
reason in headers; nothing here raises on bad input. Outputs go through :class:`Outputs` (the
app's producer), so the agent stays free of client code.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from astreg.deadletter import deadletter_headers
from astreg.errors import UndecodableRecord
from astreg.partition import partition_for
from schemas.codec import location_codec, registration_codec
from schemas.models import RegistrationEvent

from .produce import send_batches
from .rules import DEFAULT_SKEW_MS, Row, decide, durable_rest, location_of

if TYPE_CHECKING:
    from .app import StreamApp

__all__ = ["attach", "Outputs", "Plan", "plan_batch", "check_event"]

logger = logging.getLogger(__name__)

Send = Callable[[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None], Awaitable[Any]]

# Ignore reasons that mean "this record can never have been valid" → dead-letter topic.
DEADLETTER_REASONS = frozenset({"seq_backwards"})


class Outputs:
    """Where the worker writes: locations, dead letters, synthetic events (one producer)."""

    def __init__(self, stream: StreamApp, send: Send | None = None):
        self.stream = stream
        self.topics = stream.topics.names
        self._send = send or self._producer_send
        self.locations = location_codec()
        self.registrations = registration_codec()
        self._source_count: int | None = None  # partitions of the registrations topic

    async def _producer_send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> Any:
        return await self.stream.app.producer.send(topic, key, value, None, None, headers)

    async def _producer_send_batch(self, topic: str, records: list[tuple[bytes, bytes | None, int | None]]) -> None:
        # One record batch per partition instead of one producer.send per record (streams/produce.py).
        producer = cast(Any, self.stream.app.producer)._ensure_producer()  # the app's aiokafka producer
        count = len(await producer.partitions_for(topic))
        if self._source_count is None:
            self._source_count = len(await producer.partitions_for(self.topics.topic_registrations))
        if count != self._source_count:  # not co-partitioned: every key through murmur2
            records = [(k, v, None) for k, v, _ in records]
        await send_batches(producer, topic, (
            (partition_for(k, count) if p is None else p, k, v) for k, v, p in records))

    def encode_location(self, row: Row | None) -> bytes | None:
        loc = location_of(row)
        return None if loc is None else self.locations.encode(loc)

    async def location(self, endpoint: str, row: Row | None) -> None:
        await self.publish([(endpoint, row, None)])

    async def publish(self, rows: Sequence[tuple[str, Row | None, int | None]]) -> None:
        """Publish rows (None or no contact left: tombstone) to the locations topic, batched.

        Each row comes with the partition of the registration record it was read from, or
        None. Keyed by the endpoint, that record was placed by Kafka's default partitioner
        (murmur2 of the same key), so on a topic with as many partitions the location
        record's partition is the same one: no second murmur2 (pure Python in aiokafka,
        1.4 µs) per record. Rows without it, or a locations topic with another partition
        count, get murmur2."""
        if not rows:
            return
        records = [(endpoint.encode(), self.encode_location(row), partition) for endpoint, row, partition in rows]
        tombstones = sum(1 for _, value, _ in records if value is None)
        published = self.stream.metrics.published
        if tombstones:
            published.labels("tombstone").inc(tombstones)
        if len(records) > tombstones:
            published.labels("row").inc(len(records) - tombstones)
        topic = self.topics.topic_locations
        if self._send == self._producer_send:
            await self._producer_send_batch(topic, records)
        else:  # a stand-in send (tests): one call per record
            for key, value, _ in records:
                await self._send(topic, key, value, None)

    async def deadletter(self, src_topic: str, key: bytes | None, value: bytes | None, reason: str,
                         partition: int | None, offset: int | None, error: str | None = None) -> None:
        self.stream.metrics.deadletters.labels(src_topic, reason).inc()
        logger.warning("dead letter from %s[%s]@%s: %s %s", src_topic, partition, offset, reason, error or "")
        headers = deadletter_headers(reason, component="stream", topic=src_topic, partition=partition,
                                     offset=offset, error=error)
        await self._send(self.topics.topic_deadletter, key, value, headers)

    async def synthetic(self, event: RegistrationEvent) -> Any:
        """Send a synthetic event; returns its delivery future (RecordMetadata: partition, offset)."""
        self.stream.metrics.synthetic.labels(event.kind.value, event.cause or "").inc()
        return await self._send(self.topics.topic_registrations, event.endpoint.encode(),
                                self.registrations.encode(event), None)


def check_event(ev: RegistrationEvent, key: bytes | None) -> str | None:
    """Why a decoded event is impossible (dead letter), or None."""
    if not ev.endpoint:
        return "missing_endpoint"
    if not ev.node:
        return "missing_node"
    if key is not None and key != ev.endpoint.encode():
        return "key_mismatch"  # would break co-partitioning of the table
    return None


@dataclass
class Plan:
    """What one batch of events does: rows to write, rows to publish, dead letters, counts."""

    writes: list[tuple[str, Row, Any]] = field(default_factory=list)  # (endpoint, row, its last event)
    publish: list[tuple[str, Row, int | None]] = field(default_factory=list)  # (endpoint, row, source partition)
    deadletters: list[tuple[Any, str, str | None]] = field(default_factory=list)  # (message, reason, error)
    outcomes: Counter[str] = field(default_factory=Counter)
    size_delta: int = 0  # rows that gained (+1) or lost (-1) their last contact


def plan_batch(events: list[Any], read: Callable[[str, Any], Row | None], decode: Callable[..., RegistrationEvent],
               now_ms: int, skew_ms: int = DEFAULT_SKEW_MS) -> Plan:
    """Apply a batch of Faust events to their rows, synchronously (no await per event).

    Each endpoint's row is read once (``read(endpoint, event)``), every event of the batch is
    applied in order, then the row is to be written only if its durable state changed and
    published only if what consumers see changed (docs/stream.md "Publication").
    """
    plan = Plan()
    before: dict[str, Row | None] = {}
    rows: dict[str, Row] = {}
    last_event: dict[str, Any] = {}
    outcomes = plan.outcomes
    for event in events:
        msg = event.message
        try:
            rec = decode(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset)
        except UndecodableRecord as exc:
            outcomes["deadletter"] += 1
            plan.deadletters.append((msg, "undecodable", exc.reason))
            continue
        problem = check_event(rec, msg.key)
        if problem is not None:
            outcomes["deadletter"] += 1
            plan.deadletters.append((msg, problem, None))
            continue
        key = rec.endpoint
        row = rows.get(key)
        if row is None and key not in before:
            row = before[key] = read(key, event)
        out = decide(row, rec, msg.offset, now_ms=now_ms, skew_ms=skew_ms)
        if out.reason in DEADLETTER_REASONS:
            outcomes["deadletter"] += 1
            plan.deadletters.append((msg, out.reason, None))
            continue
        outcomes[out.reason] += 1
        rows[key] = out.row
        last_event[key] = event
    for key, row in rows.items():
        old = before.get(key)
        # The rules bump ``version`` on every step that changes what consumers see, so an
        # unchanged version means an unchanged visible_key; only the rest of the durable state
        # (snapshot confirmations, expiries, devices) is compared then. A changed version may
        # (rarely: A -> B -> A inside one batch) republish an identical record: harmless.
        if old is not None and (row is old or (
                old.version == row.version and durable_rest(old) == durable_rest(row))):
            continue
        plan.writes.append((key, row, last_event[key]))
        had, has = bool(old is not None and old.contacts), bool(row.contacts)
        plan.size_delta += has - had
        if old is None and not row.contacts:
            continue  # nothing was ever published for it
        if old is None or old.version != row.version:
            msg = last_event[key].message  # keyed by the endpoint: placed by murmur2 (see Outputs.publish)
            plan.publish.append((key, row, msg.partition if msg.key is not None else None))
    return plan


def attach(stream: StreamApp) -> None:
    app, table, settings = stream.app, stream.locations, stream.settings
    codec = registration_codec()
    outputs = Outputs(stream)
    stream.outputs = outputs
    metrics = stream.metrics
    src = stream.topics.names.topic_registrations

    @app.agent(stream.topics.registrations, name="track_registrations")  # type: ignore[arg-type]
    async def track_registrations(records: Any) -> AsyncIterator[int]:
        """Apply every registration event to its endpoint's row, a batch at a time."""
        async for events in records.take_events(settings.batch_size, within=settings.batch_within):
            t0 = time.perf_counter()
            await apply_batch(events)
            logger.debug("batch of %d events applied in %.1f ms", len(events), (time.perf_counter() - t0) * 1000)
            yield len(events)

    applied = stream.applied

    async def apply_batch(events: list[Any]) -> None:
        plan = plan_batch(events, table.read, codec.decode, int(time.time() * 1000),
                          int(stream.settings.max_clock_skew * 1000))
        # Each changelog record goes to the partition of the endpoint's last event (co-partitioned).
        await table.write_batch(plan.writes)
        for msg, reason, error in plan.deadletters:
            await outputs.deadletter(src, msg.key, msg.value, reason, msg.partition, msg.offset, error)
        await outputs.publish(plan.publish)
        for outcome, n in plan.outcomes.items():
            metrics.events.labels(outcome).inc(n)
        if plan.writes:
            metrics.table_writes.inc(len(plan.writes))
        if plan.size_delta:
            metrics.table_size.inc(plan.size_delta)
        for event in events:  # per partition in offset order: the last one is the highest
            applied[event.message.partition] = event.message.offset

    stream.apply_batch = apply_batch
    if settings.ingest == "bulk":
        from astreg.patches.bulk import install  # the agent stays declared: subscription + co-partitioning

        install(stream, apply_batch)
    stream.agent = track_registrations
