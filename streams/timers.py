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
import functools
import logging
import time
from typing import Any

import msgpack
from aiokafka import AIOKafkaConsumer, TopicPartition

from astreg.errors import UndecodableRecord
from astreg.partition import partition_for
from astreg.patches.aiokafka import app_producer
from astreg.patches.faust_store import partition_db
from schemas.codec import node_codec
from schemas.models import EventKind, NodeStatus, RegistrationEvent, Source
from schemas.validate import node_status_problem

from .rules import Row
from .stream_app import StreamApp
from .tables import NodeState
from .topics import probe_name

__all__ = ["synthetic_for", "next_deadline", "attach"]

logger = logging.getLogger(__name__)


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


def next_deadline(row: Row, nodes: dict[str, NodeState], now_ms: int, *, node_timeout: float,
                  node_grace: float, expiry_grace: float) -> int | None:
    """The earliest time after ``now_ms`` at which :func:`synthetic_for` may ask for something
    new for this row by the clock alone (a stale node's grace ends, a stale node's contact
    expires); None when nothing is due by time. New stale nodes and completed snapshots are
    noticed from the node book, not from rows."""
    best: int | None = None
    for c in row.contacts:
        st = nodes.get(c.node)
        if st is None or not st.stale(now_ms, node_timeout):
            continue
        due = []
        if not st.down:
            due.append(st.stale_since_ms(node_timeout) + int(node_grace * 1000) + 1)
        if c.expires_at_ms is not None:
            due.append(c.expires_at_ms + int(expiry_grace * 1000) + 1)
        for t in due:
            if t > now_ms and (best is None or t < best):
                best = t
    return best


RESCAN_MS = 30_000  # safety net: scan at least this often while a node is stale
RESEND_MS = 10_000  # a synthetic event not applied yet is not resent; an applied one after this
GIVE_UP_MS = 300_000  # an event whose delivery or application was never seen is resent after this


def attach(stream: StreamApp) -> None:
    app, settings = stream.app, stream.settings
    names = stream.topics.names
    sent: dict[tuple[Any, ...], tuple[int, Any]] = {}  # ident -> (sent at, delivery future)

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
                heard = 0
                if answered is not None:
                    stream.nodes.fetched_at_ms = min(answered, now)
                    heard = stream.nodes.answered(min(answered, now))
                if heard:
                    blind = stream.nodes.heard(heard)
                    if blind:
                        logger.warning("nodes topic silent for %.1fs (broker unreachable?): not counted as "
                                       "node silence", blind / 1000)
                for records in batches.values():
                    for r in records:
                        try:
                            st = codec.decode(r.value, topic=r.topic, partition=r.partition, offset=r.offset)
                        except UndecodableRecord as exc:
                            await refuse(r, "undecodable", exc.reason)
                            continue
                        problem = believable(st, r, now)
                        if problem is not None:
                            await refuse(r, problem, None)
                            continue
                        stream.nodes.observe(st, now)
        finally:
            await consumer.stop()

    probe_topic = probe_name(app.conf.id)
    probe: dict[str, Any] = {"fut": None, "since": None, "warned": False, "checked": False}
    stream.nodes.probing = True

    @app.timer(interval=min(settings.tick, 1.0))
    async def probe_writes() -> None:
        """Write a small record and note when the cluster acknowledged it (see NodeBook.answered)."""
        if not probe["checked"]:
            probe["checked"] = True
            # Every topic's metadata: the producer's client only tracks the topics it has sent
            # to, so its own view misses a probe topic it has not written yet.
            cluster = await app_producer(app).client.fetch_all_metadata()
            if probe_topic not in cluster.topics():
                # A worker started without `astreg worker`'s topic set-up: judge silence without
                # the probe rather than never (a send to a missing topic would wait for ever).
                stream.nodes.probing = False
                logger.error("topic %s is missing (astreg worker creates it): node silence is judged "
                             "without knowing whether the cluster takes writes", probe_topic)
        if not stream.nodes.probing:
            return
        now = int(time.time() * 1000)
        fut: Any = probe["fut"]
        if fut is not None and not fut.done():
            # Still on its way: the cluster takes no writes now. Say so once it lasts.
            waiting = (now - probe["since"]) / 1000
            stream.metrics.cluster_write_wait.set(waiting)
            if waiting > 10 and not probe["warned"]:
                probe["warned"] = True
                logger.warning("the cluster has not acknowledged a write for %.0f s (below min.insync.replicas or "
                               "no controller quorum?): node silence is not counted meanwhile", waiting)
            return
        stream.metrics.cluster_write_wait.set(0)
        if probe["warned"]:
            probe["warned"] = False
            logger.info("the cluster takes writes again")
        probe["since"] = now
        fut = await app.producer.send(probe_topic, settings.worker_id.encode(), str(now).encode(), None, None, None)
        probe["fut"] = fut
        fut.add_done_callback(functools.partial(_probe_done, now))

    def _probe_done(sent_at: int, fut: Any) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        book = stream.nodes
        if book.writable_at_ms is None or sent_at > book.writable_at_ms:
            book.writable_at_ms = sent_at
            stream.metrics.cluster_writable_at.set(sent_at / 1000)

    def believable(st: NodeStatus, r: Any, now: int) -> str | None:
        """Why a nodes-topic record must not move the node book, or None: a forged heartbeat
        would keep a dead node's contacts alive, a forged snapshot marker would remove a live
        node's contacts."""
        if not st.node:
            return "missing_node"
        if r.key != st.node.encode():
            return "key_mismatch"
        return (stream.verifier.check(b"nodes", st.node, False, r.key, r.value, r.headers)
                or node_status_problem(st, now, r.timestamp))

    async def refuse(r: Any, reason: str, error: str | None) -> None:
        stream.metrics.node_records_refused.labels(reason).inc()
        if _owns_partition_zero():  # one worker writes the dead letter, every worker counts it
            await stream.outputs.deadletter(names.topic_nodes, r.key, r.value, reason, r.partition, r.offset, error)

    def _owns_partition_zero() -> bool:
        return 0 in _owned()

    def _owned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == names.topic_registrations}

    scan_state: dict[str, Any] = {"stale": frozenset(), "next": None, "last": 0}

    def may_send(ident: tuple[Any, ...], now: int) -> bool:
        """Whether a synthetic event may be sent (again): not while one is on its way.

        "On its way" lasts until the worker has applied the record (its partition's applied
        offset reached the record's offset), not a fixed time: a worker that is behind (a
        registration storm) would otherwise resend every row's removal every few seconds and
        never catch up (seen with 33,334 rows of a dead node)."""
        entry = sent.get(ident)
        if entry is None:
            return True
        at, fut = entry
        age = now - at
        if age < RESEND_MS:
            return False
        if age > GIVE_UP_MS or fut is None or not hasattr(fut, "done"):
            return True
        if not fut.done():
            return False  # still being delivered
        if fut.cancelled() or fut.exception() is not None:
            return True
        meta = fut.result()
        applied = stream.applied.get(meta.partition)
        return applied is not None and applied >= meta.offset

    def rows_to_check(interesting: set[str], owned: set[int]) -> Any:
        """Owned rows that mention one of ``interesting`` nodes (only they can need a synthetic
        event): raw RocksDB bytes are searched for the node names before decoding, so a scan of
        a large table costs a byte search per row, not a decode."""
        store = stream.locations.data
        db_for = partition_db(store)
        if db_for is None:  # memory store (tests)
            for key, row in list(stream.locations.items()):
                if partition_for(key, names.partitions) in owned:
                    yield key, row
            return
        needles = [n.encode() for n in interesting]
        skip = getattr(store, "offset_key", b"__faust\0offset__")
        for partition in sorted(owned):
            for raw_key, raw in db_for(partition).items():
                if raw_key == skip or not any(n in raw for n in needles):
                    continue
                yield raw_key.decode(), Row.from_bytes(raw)

    async def nodes_in(partitions: set[int]) -> set[str]:
        """Node names in the rows of ``partitions`` (contacts of the binary row form, read with
        msgpack alone: about a microsecond per row, yielding to the agent every 2,000 rows)."""
        found: set[str] = set()
        db_for = partition_db(stream.locations.data)
        if db_for is None:  # memory store (tests)
            for key, row in list(stream.locations.items()):
                if row is not None and partition_for(key, names.partitions) in partitions:
                    found.update(c.node for c in row.contacts)
            return found
        skip = getattr(stream.locations.data, "offset_key", b"__faust\0offset__")
        n = 0
        for partition in sorted(partitions):
            for raw_key, raw in db_for(partition).items():
                n += 1
                if n % 2000 == 0:
                    await asyncio.sleep(0)
                if raw_key == skip or raw[:1] == b"{":
                    continue
                try:
                    found.update(c[0] for c in msgpack.unpackb(raw, use_list=False)[2])
                except (ValueError, IndexError, TypeError, msgpack.UnpackException):
                    continue
        return found

    @app.timer(interval=settings.tick)
    async def decide_synthetic() -> None:
        """Scan owned rows when a node went stale, a snapshot completed or a deadline passed."""
        wall = int(time.time() * 1000)
        book = stream.nodes
        if not book.listening(wall) or book.heard_at_ms is None:
            return  # deaf: silence is not evidence, and completed snapshots wait for the broker too
        # A node can only have been heard up to the broker's last answer: judge silence up to then.
        now = min(wall, book.heard_at_ms)
        owned_now = _owned()
        taken = owned_now - scan_state.get("nodes_of", set())
        if taken:  # partitions taken over (or restored): which nodes do their rows name?
            scan_state["nodes_of"] = owned_now
            stream.table_nodes.update(await nodes_in(taken))
        unheard = stream.table_nodes - book.nodes.keys()
        for node in unheard:
            # Contacts of a node that never sent a heartbeat: silent since it was first seen.
            book.nodes[node] = NodeState(node=node, seen_at_ms=now)
            logger.warning("node %s has contacts but never sent a heartbeat: stale in %.0f s unless it does",
                           node, settings.node_timeout)
        stream.table_nodes.clear()
        stream.metrics.unheard_nodes.set(sum(1 for st in book.nodes.values() if not st.producer_epoch))
        stale = frozenset(n for n, st in book.nodes.items() if st.stale(now, settings.node_timeout))
        stream.metrics.stale_nodes.set(len(stale))
        stream.metrics.nodes.set(len(book.nodes))
        reconciles, book.completed = book.completed, []
        newly_stale = stale - scan_state["stale"]
        scan_state["stale"] = stale
        if not reconciles and not stale:
            return
        owned = _owned()
        gained = owned - scan_state.get("owned", set())  # partitions taken over since the last scan
        due = scan_state["next"] is not None and now >= scan_state["next"]
        if not (reconciles or newly_stale or gained or due or now - scan_state["last"] >= RESCAN_MS):
            return  # nothing changed since the last scan and nothing is due
        scan_state["last"] = now
        scan_state["owned"] = owned
        interesting = set(stale) | {r[0] for r in reconciles}
        count = scanned = 0
        next_due: int | None = None
        for _key, row in rows_to_check(interesting, owned):
            scanned += 1
            if scanned % 2000 == 0:
                await asyncio.sleep(0)  # let the agent run during long scans
            if row is None or not row.contacts:
                continue
            kw = {"node_timeout": settings.node_timeout, "node_grace": settings.node_grace,
                  "expiry_grace": settings.expiry_grace}
            t = next_deadline(row, book.nodes, now, **kw)
            if t is not None and (next_due is None or t < next_due):
                next_due = t
            for ev in synthetic_for(row, book.nodes, now, reconciles=reconciles, **kw):
                ident = (ev.endpoint, ev.node, ev.kind, ev.contact_uri, ev.producer_epoch, ev.seq)
                if not may_send(ident, now):
                    continue  # already on its way
                sent[ident] = (now, await stream.outputs.synthetic(ev))
                count += 1
        scan_state["next"] = next_due
        for ident, (at, _) in list(sent.items()):
            if now - at > 2 * GIVE_UP_MS:
                del sent[ident]
        if count:
            logger.info("sent %d synthetic events (stale nodes %s, reconciles %d, %d rows checked)",
                        count, sorted(stale), len(reconciles), scanned)
