"""Timers of a worker: node staleness, expiry and snapshot reconciliation, for owned partitions.

:func:`synthetic_for` is the pure decision (row + node book + clock → synthetic events);
:func:`attach` adds to the app (1) a task reading the whole nodes topic into the
:class:`~streams.tables.NodeBook` (every worker, no consumer group, heartbeats timed with the
worker clock at arrival) and (2) a timer that scans the rows of the partitions this worker owns
when a node is stale or a snapshot completed, and sends the synthetic events into the
registrations topic (the agent applies them: single writer, every change in the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from astreg.errors import UndecodableRecord
from schemas.codec import node_codec
from schemas.models import EventKind, RegistrationEvent, Source

from .rules import Row
from .tables import NodeState

if TYPE_CHECKING:
    from .app import StreamApp

__all__ = ["synthetic_for", "partition_of", "attach"]

logger = logging.getLogger(__name__)


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partition of a key (murmur2, like the Java client and aiokafka)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def _event(row: Row, node: str, kind: EventKind, basis: tuple[int, int], now_ms: int, cause: str,
           uri: str | None = None) -> RegistrationEvent:
    return RegistrationEvent(
        endpoint=row.endpoint, node=node, producer_epoch=basis[0], seq=basis[1], event_time_ms=now_ms,
        kind=kind, source=Source.SYNTHETIC, contact_uri=uri, cause=cause,
    )


def synthetic_for(
    row: Row,
    nodes: dict[str, NodeState],
    now_ms: int,
    *,
    node_timeout: float,
    node_grace: float,
    expiry_grace: float,
    reconciles: list[tuple[str, str, int, int]] = (),  # type: ignore[assignment]
) -> list[RegistrationEvent]:
    """Synthetic events this row needs now (SPEC items 4, 5, 6)."""
    out: list[RegistrationEvent] = []
    for node in sorted(row.nodes_with()):
        mine = [c for c in row.contacts if c.node == node]
        for rnode, snap_id, epoch, begin in reconciles:
            if rnode == node and any(c.confirmed < (epoch, begin) for c in mine):
                out.append(_event(row, node, EventKind.RECONCILE, (epoch, begin), now_ms, f"snapshot {snap_id}"))
        st = nodes.get(node)
        if st is None or not st.stale(now_ms, node_timeout):
            continue  # a live node removes its own contacts (SPEC 4)
        basis = max(c.confirmed for c in mine)
        known = row.last_of(node)
        if known is not None:
            basis = max(basis, known)
        since = st.stale_since_ms(node_timeout)
        if not st.down and now_ms - since > node_grace * 1000:
            out.append(_event(row, node, EventKind.EXPIRE, basis, now_ms, "node_grace"))
            continue
        expired = [c for c in mine if c.expires_at_ms is not None and now_ms > c.expires_at_ms + expiry_grace * 1000]
        for c in expired:
            out.append(_event(row, node, EventKind.EXPIRE, c.confirmed, now_ms, "expired", c.uri))
        if any(not c.stale for c in mine if c not in expired):
            out.append(_event(row, node, EventKind.STALE, basis, now_ms, "node_timeout" if not st.down else "node_down"))
    return out


def attach(stream: StreamApp) -> None:
    app, settings = stream.app, stream.settings
    names = stream.topics.names
    sent: dict[tuple[Any, ...], float] = {}

    @app.task
    async def follow_nodes() -> None:
        """Read the whole nodes topic, for ever, into the node book."""
        codec = node_codec()
        consumer = AIOKafkaConsumer(**stream.kafka.aiokafka_kwargs(), enable_auto_commit=False,
                                    auto_offset_reset="earliest", group_id=None)
        await consumer.start()
        try:
            tp = TopicPartition(names.topic_nodes, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=5000)
                now = int(time.time() * 1000)
                answered = consumer.last_poll_timestamp(tp)  # last fetch answer, records or not
                if answered is not None:
                    blind = stream.nodes.heard(min(answered, now))
                    if blind:
                        logger.warning("nodes topic silent for %.1fs (broker unreachable?): not counted as "
                                       "node silence", blind / 1000)
                for records in batches.values():
                    for r in records:
                        try:
                            st = codec.decode(r.value, topic=r.topic, partition=r.partition, offset=r.offset)
                        except UndecodableRecord as exc:
                            if _owns_partition_zero():
                                await stream.outputs.deadletter(
                                    names.topic_nodes, r.key, r.value, "undecodable", r.partition, r.offset,
                                    exc.reason)
                            continue
                        if not st.node:
                            continue
                        stream.nodes.observe(st, now)
        finally:
            await consumer.stop()

    def _owns_partition_zero() -> bool:
        return 0 in _owned()

    def _owned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == names.topic_registrations}

    @app.timer(interval=settings.tick)
    async def decide_synthetic() -> None:
        """Scan owned rows when a node is stale or a snapshot completed; send synthetic events."""
        wall = int(time.time() * 1000)
        book = stream.nodes
        if not book.listening(wall) or book.heard_at_ms is None:
            return  # deaf: silence is not evidence, and completed snapshots wait for the broker too
        # A node can only have been heard up to the broker's last answer: judge silence up to then.
        now = min(wall, book.heard_at_ms)
        stale = [n for n, st in book.nodes.items() if st.stale(now, settings.node_timeout)]
        stream.metrics.stale_nodes.set(len(stale))
        stream.metrics.nodes.set(len(book.nodes))
        reconciles, book.completed = book.completed, []
        if not stale and not reconciles:
            return
        owned = _owned()
        count = 0
        for i, (key, row) in enumerate(list(stream.locations.items())):
            if i % 5000 == 0:
                await asyncio.sleep(0)  # let the agent run during long scans
            if row is None or not row.contacts or partition_of(key, names.partitions) not in owned:
                continue
            for ev in synthetic_for(row, book.nodes, now, node_timeout=settings.node_timeout,
                                    node_grace=settings.node_grace, expiry_grace=settings.expiry_grace,
                                    reconciles=reconciles):
                ident = (ev.endpoint, ev.node, ev.kind, ev.contact_uri, ev.producer_epoch, ev.seq)
                if now - sent.get(ident, 0) < 10_000:
                    continue  # already on its way
                sent[ident] = now
                count += 1
                await stream.outputs.synthetic(ev)
        for ident, at in list(sent.items()):
            if now - at > 60_000:
                del sent[ident]
        if count:
            logger.info("sent %d synthetic events (stale nodes %s, reconciles %d)", count, stale, len(reconciles))
