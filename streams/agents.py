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
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from faust.streams import _current_event

from astreg.deadletter import deadletter_headers
from astreg.errors import UndecodableRecord
from schemas.codec import location_codec, registration_codec
from schemas.models import RegistrationEvent

from .rules import Row, decide, durable_key, location_of, visible_key

if TYPE_CHECKING:
    from .app import StreamApp

__all__ = ["attach", "Outputs", "Batch", "check_event"]

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

    async def _producer_send(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None
    ) -> Any:
        return await self.stream.app.producer.send(topic, key, value, None, None, headers)

    async def location(self, endpoint: str, row: Row | None) -> None:
        loc = location_of(row)
        value = None if loc is None else self.locations.encode(loc)
        self.stream.metrics.published.labels("tombstone" if value is None else "row").inc()
        await self._send(self.topics.topic_locations, endpoint.encode(), value, None)

    async def deadletter(self, src_topic: str, key: bytes | None, value: bytes | None, reason: str,
                         partition: int | None, offset: int | None, error: str | None = None) -> None:
        self.stream.metrics.deadletters.labels(src_topic, reason).inc()
        logger.warning("dead letter from %s[%s]@%s: %s %s", src_topic, partition, offset, reason, error or "")
        headers = deadletter_headers(reason, component="stream", topic=src_topic, partition=partition,
                                     offset=offset, error=error)
        await self._send(self.topics.topic_deadletter, key, value, headers)

    async def synthetic(self, event: RegistrationEvent) -> None:
        self.stream.metrics.synthetic.labels(event.kind.value, event.cause or "").inc()
        await self._send(self.topics.topic_registrations, event.endpoint.encode(),
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


class Batch:
    """Per-batch working copies: each row read once, written once."""

    def __init__(self) -> None:
        self.before: dict[str, Row | None] = {}
        self.rows: dict[str, Row] = {}
        self.last_event: dict[str, Any] = {}


def attach(stream: StreamApp) -> None:
    app, table, settings = stream.app, stream.locations, stream.settings
    codec = registration_codec()
    outputs = Outputs(stream)
    stream.outputs = outputs
    metrics = stream.metrics
    events_counter = metrics.events

    @app.agent(stream.topics.registrations, name="track_registrations")
    async def track_registrations(records: Any) -> None:
        """Apply every registration event to its endpoint's row, a batch at a time."""
        async for events in records.take_events(settings.batch_size, within=settings.batch_within):
            t0 = time.perf_counter()
            await apply_batch(events)
            logger.debug("batch of %d events applied in %.1f ms", len(events), (time.perf_counter() - t0) * 1000)
            yield len(events)

    async def apply_batch(events: list[Any]) -> None:
        batch = Batch()
        now = int(time.time() * 1000)
        src = stream.topics.names.topic_registrations
        for event in events:
            msg = event.message
            try:
                rec = codec.decode(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset)
            except UndecodableRecord as exc:
                events_counter.labels("deadletter").inc()
                await outputs.deadletter(src, msg.key, msg.value, "undecodable", msg.partition, msg.offset,
                                         exc.reason)
                continue
            problem = check_event(rec, msg.key)
            if problem is not None:
                events_counter.labels("deadletter").inc()
                await outputs.deadletter(src, msg.key, msg.value, problem, msg.partition, msg.offset)
                continue
            key = rec.endpoint
            row = batch.rows.get(key)
            if row is None and key not in batch.before:
                _current_event.set(weakref.ref(event))  # the store looks in this event's partition
                row = table.get(key)
                batch.before[key] = row
            out = decide(row, rec, msg.offset, now_ms=now)
            if out.reason in DEADLETTER_REASONS:
                events_counter.labels("deadletter").inc()
                await outputs.deadletter(src, msg.key, msg.value, out.reason, msg.partition, msg.offset)
                continue
            events_counter.labels(out.reason).inc()
            batch.rows[key] = out.row
            batch.last_event[key] = event
        await flush(batch)

    async def flush(batch: Batch) -> None:
        for key, row in batch.rows.items():
            before = batch.before.get(key)
            if before is not None and durable_key(before) == durable_key(row):
                continue
            _current_event.set(weakref.ref(batch.last_event[key]))
            table[key] = row
            metrics.table_writes.inc()
            had, has = bool(before is not None and before.contacts), bool(row.contacts)
            if had != has:  # rows with a registration written by this worker process
                metrics.table_size.inc() if has else metrics.table_size.dec()
            if before is None or visible_key(before) != visible_key(row):
                if before is None and not row.contacts:
                    continue  # nothing was ever published for it
                await outputs.location(key, row)

    stream.apply_batch = apply_batch
    stream.agent = track_registrations
