"""The worker's state: the ``locations`` table (endpoint → :class:`Row`) and the node book.

* ``locations``: a Faust table keyed by endpoint (co-partitioned with the registrations topic),
  value a typed :class:`streams.rules.Row` serialized by the ``astreg-row`` codec (msgpack), stored in
  RocksDB (or memory for tests). Rows whose contacts are all gone stay in the table (they
  keep the per-node order needed to ignore replays) but publish a tombstone.
* :class:`NodeBook`: every worker reads the whole single-partition nodes topic itself (no
  consumer group), so every worker knows every node's heartbeat (timed with its own clock) and
  every completed snapshot, which it needs to reconcile the partitions it owns.

For the web views: :func:`location_of` (row → EndpointLocation or None) and :func:`node_view`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, cast

import faust
from faust.serializers import codecs
from faust.stores.base import SerializedStore
from faust.types import TP
from rocksdict import WriteBatch

from astreg.patches.aiokafka import app_producer
from astreg.patches.faust_store import RawStore, set_current_event
from schemas.models import EndpointLocation, LinkState, NodeEventKind, NodeStatus

from .produce import send_batches
from .rules import Row
from .rules import location_of as _location_of
from .silence import BLIND_AFTER_MS, FLOW_GRACE_MS

__all__ = [
    "RowCodec", "LocationsTable", "NodeState", "NodeBook", "location_of", "node_view", "declare_locations",
    "BLIND_AFTER_MS", "FLOW_GRACE_MS", "RowCache",
]

logger = logging.getLogger(__name__)

# The broker answers a fetch of the nodes topic at least every fetch_max_wait_ms (500 ms by
# default) even when no record came; a longer silence means the worker could not hear anybody
# (broker stopped or unreachable, worker's loop stalled), which says nothing about the nodes.



class RowCodec(codecs.Codec):
    """Faust codec of table values: :class:`Row` as msgpack (reads the older JSON rows too)."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.to_bytes()  # type: ignore[no-any-return]

    def _loads(self, s: bytes) -> Any:
        return Row.from_bytes(s)


codecs.register("astreg-row", RowCodec())


class RowCache(OrderedDict[str, "Row | None"]):
    """Decoded rows by key, at most ``limit``; the least recently remembered goes first.

    An OrderedDict, not a dict: evicting from the front of a plain dict with
    ``del d[next(iter(d))]`` makes every later ``next(iter(d))`` skip the deleted slots until
    the dict is resized (~10 times the cost of an OrderedDict eviction at 100,000 rows, paid on
    every event once a worker holds more endpoints than ``row_cache``). Lookups are the dict's
    own ``cache[key]``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: str, row: Row | None) -> None:
        if self.limit <= 0:
            return
        if key in self:  # the order is the order of last write (or read from the store)
            self.move_to_end(key)
        elif len(self) >= self.limit:
            self.popitem(last=False)
        self[key] = row


class LocationsTable(faust.Table):
    """A Faust table with a batched read/write path for the bulk agent.

    Same store (RocksDB), same changelog topic, same recovery as ``table[key] = value``; the
    difference is that a batch of rows is encoded once (store and changelog share the bytes),
    written to each partition's RocksDB as one WriteBatch, sent as one record batch per
    changelog partition, and the persisted changelog offset is written once per batch and
    partition instead of once per record.

    Decoded rows are kept in a bounded cache (``row_cache`` rows, ~650 B each with one contact): decoding a row
    from RocksDB (msgpack + dataclasses) was the largest cost per event after the rules. Rows
    are immutable, this table is their only writer, and the cache is emptied whenever the
    assignment changes (another worker may have written the partition meanwhile) or the
    store recovers from the changelog, so it never holds a row the store does not.
    """

    row_cache: int = 100_000

    def __init__(self, *args: Any, row_cache: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if row_cache is not None:
            self.row_cache = row_cache
        self._rows = RowCache(self.row_cache)
        self._raw: RawStore | None = None

    def raw_store(self) -> RawStore:
        """Byte-level access to this table's store (made again when the store is another one)."""
        raw, store = self._raw, self.data
        if raw is None or raw.store is not store:
            raw = self._raw = RawStore(store)
        return raw

    def forget_rows(self) -> None:
        """Empty the decoded-row cache (assignment changed, store recovered)."""
        self._rows.clear()

    async def on_rebalance(self, assigned: Any, revoked: Any, newly_assigned: Any,
                           generation_id: int = 0) -> None:
        self.forget_rows()
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)

    async def on_recovery_completed(self, active_tps: Any, standby_tps: Any) -> None:
        self.forget_rows()
        await super().on_recovery_completed(active_tps, standby_tps)

    def read(self, key: str, event: Any) -> Row | None:
        """The row of ``key`` (None when absent), looked up in the partition of ``event``."""
        store = self.data
        if not isinstance(store, SerializedStore):
            set_current_event(event)  # the store looks in this event's partition
            return self.get(key)  # type: ignore[no-any-return]
        try:
            return self._rows[key]
        except KeyError:
            pass
        # table.get() goes through Mapping.get -> __getitem__ -> sensors -> __contains__ + _get:
        # two store lookups, a sensor call and a key-index update per key; this is the one
        # lookup underneath, in the partition the event came from (co-partitioned).
        access = self.raw_store()
        db_for = access.db_for
        if db_for is not None:
            raw = db_for(event.message.partition).get(access.encode_key(key))
        else:
            set_current_event(event)
            raw = access.get(access.encode_key(key))
        row = None if raw is None else access.decode_value(raw)
        if self.row_cache:
            self._rows.remember(key, row)
        return row  # type: ignore[no-any-return]

    async def write_batch(self, writes: list[tuple[str, Row, Any]]) -> list[asyncio.Future[Any]]:
        """Write ``(key, row, event)``: the row lands in the partition of ``event`` (its source).
        Returns the changelog's delivery futures (none on Faust's own path, which tracks its own)."""
        if not writes:
            return []
        store = self.data
        if self.app.in_transaction or not isinstance(store, SerializedStore):
            for key, row, event in writes:  # exactly-once or memory store: Faust's own path
                set_current_event(event)
                self[key] = row
            return []
        access = self.raw_store()
        encode_key, encode_value = access.encode_key, access.encode_value
        if self.value_serializer == "astreg-row" and self.key_serializer == "raw":
            # What those two do through Faust's serializer registry (codecs.dumps -> RowCodec,
            # raw -> want_bytes), without the registry lookups per record.
            encode_key, encode_value = str.encode, Row.to_bytes  # type: ignore[assignment]
        db_for = access.db_for
        batches: dict[int, Any] = {}
        records = []
        cache = self.row_cache
        for key, row, event in writes:
            partition = event.message.partition
            k, v = encode_key(key), encode_value(row)
            if db_for is not None:
                wb = batches.get(partition)
                if wb is None:
                    wb = batches[partition] = WriteBatch(raw_mode=True)
                wb.put(k, v)
            else:
                set_current_event(event)  # the store writes into this event's partition
                access.set(k, v)
            if cache:
                self._rows.remember(key, row)
            records.append((partition, k, v))
        for partition, wb in batches.items():
            db_for(partition).write(wb)  # type: ignore[misc]
        producer = app_producer(self.app)
        topic = self.changelog_topic.get_topic_name()
        futures = []
        for partition, fut, count in await send_batches(producer, topic, records):
            fut.add_done_callback(functools.partial(self._on_batch_sent, TP(topic, partition), count))
            futures.append(fut)
        return futures

    def _on_batch_sent(self, tp: TP, count: int, fut: asyncio.Future[Any]) -> None:
        # What Faust's _on_changelog_sent does per record: remember in RocksDB which changelog
        # offset the store already holds, so a restart replays only what came after it.
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            logger.error("changelog batch to %s failed: %r", tp, exc)
            return
        self.data.set_persisted_offset(tp, fut.result().offset + count - 1)


def declare_locations(app: faust.App, partitions: int, row_cache: int | None = None) -> LocationsTable:
    # Faust derives serializers from Record types only, and builds the changelog topic (which
    # recovery decodes with) as soon as the table is registered: declare both explicitly.
    # The RocksDB store recovers from the changelog records' raw bytes, so the topic is read as
    # raw bytes there: decoding every record into a Row during recovery (what a typed topic
    # does) would be most of a cold restart's time. The memory store (tests) keeps decoded rows.
    # Writes name the table's serializer explicitly (write_batch / send_changelog).
    rocksdb = str(app.conf.store).startswith("rocksdb")
    changelog = app.topic(
        f"{app.conf.id}-locations-changelog", key_type=str, key_serializer="raw",
        value_type=bytes if rocksdb else None, value_serializer="raw" if rocksdb else "astreg-row",
        partitions=partitions, compacting=True, deleting=False, acks=False, internal=True,
    )
    table = cast(LocationsTable, app.tables.add(LocationsTable(
        app, name="locations", default=None, beacon=app.tables.beacon, partitions=partitions, key_type=str,
        changelog_topic=changelog, row_cache=row_cache,
        # Changelog partition = partition of the current event; the agent writes each row under
        # the last event of that endpoint in the batch (same partition: co-partitioned).
        use_partitioner=False,
    )))
    table.key_serializer = "raw"
    table.value_serializer = "astreg-row"
    return table


def location_of(value: Row | None) -> EndpointLocation | None:
    """The published form of a table value (None: no registration left)."""
    return _location_of(value)


@dataclass(frozen=True)
class NodeState:
    """What a worker knows about one node."""

    node: str
    producer_epoch: int = 0
    seq: int = 0
    kind: NodeEventKind = NodeEventKind.UNKNOWN
    ami_link: LinkState = LinkState.UNKNOWN
    seen_at_ms: int = 0  # worker clock at the last record from the node
    event_time_ms: int = 0
    asterisk_version: str | None = None
    boot_time_ms: int | None = None
    down: bool = False  # AMI down, shutdown or stopped: stale at once
    down_since_ms: int | None = None
    snapshot_begins: tuple[tuple[str, int, int], ...] = ()  # (snapshot_id, epoch, begin_seq)
    last_snapshot_id: str | None = None
    last_snapshot_at_ms: int | None = None

    def stale(self, now_ms: int, timeout_s: float) -> bool:
        return self.down or now_ms - self.seen_at_ms > timeout_s * 1000

    def stale_since_ms(self, timeout_s: float) -> int:
        timed_out = self.seen_at_ms + int(timeout_s * 1000)
        return min(timed_out, self.down_since_ms) if self.down_since_ms is not None else timed_out


def node_view(value: NodeState, *, now_ms: int | None = None, node_timeout: float = 15.0) -> dict[str, Any]:
    """A node as JSON-ready dict for the API."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return {
        "node": value.node,
        "stale": value.stale(now, node_timeout),
        "ami_link": value.ami_link.value,
        "last_kind": value.kind.value,
        "seen_ms_ago": now - value.seen_at_ms,
        "producer_epoch": value.producer_epoch,
        "seq": value.seq,
        "asterisk_version": value.asterisk_version,
        "boot_time_ms": value.boot_time_ms,
        "last_snapshot_id": value.last_snapshot_id,
        "last_snapshot_at_ms": value.last_snapshot_at_ms,
    }


@dataclass
class NodeBook:
    """Node id → NodeState, fed by :meth:`observe`; completed snapshots queue for reconciliation."""

    nodes: dict[str, NodeState] = field(default_factory=dict)
    completed: list[tuple[str, str, int, int]] = field(default_factory=list)  # node, snap id, epoch, begin
    heard_at_ms: int | None = None  # worker clock at the broker's last answer on the nodes topic
    blind_ms: int = 0  # total time the worker could not hear the broker (for metrics and logs)
    # Worker clock when its last write probe was sent, of those the cluster acknowledged (None:
    # no probe yet, or probing off). While the cluster takes no writes (below min.insync.replicas,
    # no controller quorum) heartbeats cannot arrive either, so the worker does not count that
    # time as node silence, even when the broker still answers its fetches.
    writable_at_ms: int | None = None
    probing: bool = False
    fetched_at_ms: int | None = None  # worker clock at the broker's last answer to a fetch of the nodes topic
    # Set when a blind period ended: until a record of any node arrives (or FLOW_GRACE_MS),
    # the worker is still deaf (the heartbeats have not resumed yet).
    awaiting_flow_since_ms: int | None = None

    def heard(self, now_ms: int, blind_after_ms: int = BLIND_AFTER_MS) -> int:
        """The broker answered a fetch of the nodes topic at ``now_ms``; returns the blind time credited.

        While the worker hears nothing from the broker, heartbeats cannot reach it whether the
        nodes are alive or not: that time must not count towards ``node_timeout``, else a broker
        outage longer than it marks every contact of every node stale (and nothing un-stales a
        contact but a later event of its node). So a silence longer than ``blind_after_ms`` is
        added to every node's last-seen time.
        """
        blind = 0
        waiting = self.awaiting_flow_since_ms
        if waiting is not None:
            if now_ms - waiting < FLOW_GRACE_MS:
                return 0  # deaf until the heartbeats flow again: the gap is credited when they do
            self.awaiting_flow_since_ms = None
        if self.heard_at_ms is not None and now_ms - self.heard_at_ms > blind_after_ms:
            blind = now_ms - self.heard_at_ms
            if waiting is None:
                self.awaiting_flow_since_ms = now_ms
            for name, st in self.nodes.items():
                self.nodes[name] = replace(st, seen_at_ms=min(now_ms, st.seen_at_ms + blind))
            self.blind_ms += blind
        if self.heard_at_ms is None or now_ms > self.heard_at_ms:
            self.heard_at_ms = now_ms
        return blind

    def listening(self, now_ms: int, blind_after_ms: int = BLIND_AFTER_MS) -> bool:
        """True while the worker hears the broker, i.e. node silence is evidence about nodes."""
        return self.heard_at_ms is not None and now_ms - self.heard_at_ms <= blind_after_ms

    def answered(self, fetched_ms: int) -> int:
        """Up to when the cluster was heard, given the last fetch answer: also no later than the
        last acknowledged write probe when probing (a cluster that serves reads but takes no
        writes delivers no heartbeat either)."""
        if not self.probing:
            return fetched_ms
        return min(fetched_ms, self.writable_at_ms if self.writable_at_ms is not None else 0)

    def judged_now(self, wall_ms: int) -> int:
        """The time up to which node silence is evidence: the wall clock while the worker hears
        the cluster, else the last moment it did (what the API's ``stale`` is judged at)."""
        if self.heard_at_ms is None or self.listening(wall_ms):
            return wall_ms
        return min(wall_ms, self.heard_at_ms)

    def items(self) -> list[tuple[str, NodeState]]:
        return sorted(self.nodes.items())

    def get(self, node: str) -> NodeState | None:
        return self.nodes.get(node)

    def epoch_of(self, node: str) -> int | None:
        """The node's current producer epoch (the newest announced), None when never heard."""
        st = self.nodes.get(node)
        return st.producer_epoch if st is not None and st.producer_epoch else None

    def observe(self, st: NodeStatus, now_ms: int) -> None:
        self.awaiting_flow_since_ms = None  # the heartbeats flow (again)
        old = self.nodes.get(st.node) or NodeState(node=st.node)
        if (st.producer_epoch, st.seq) <= (old.producer_epoch, old.seq):
            return  # duplicate or replay
        down = st.kind in (NodeEventKind.AMI_DOWN, NodeEventKind.SHUTDOWN, NodeEventKind.STOPPED) or (
            st.ami_link is LinkState.DOWN
        )
        new = replace(
            old, producer_epoch=st.producer_epoch, seq=st.seq, kind=st.kind, ami_link=st.ami_link,
            seen_at_ms=now_ms, event_time_ms=st.event_time_ms, down=down,
            down_since_ms=(old.down_since_ms or now_ms) if down else None,
            asterisk_version=st.asterisk_version or old.asterisk_version,
            boot_time_ms=st.boot_time_ms or old.boot_time_ms,
        )
        if st.kind is NodeEventKind.SNAPSHOT_BEGIN and st.snapshot_id:
            begins = [b for b in old.snapshot_begins if b[1] == st.producer_epoch][-7:]
            new = replace(new, snapshot_begins=(*begins, (st.snapshot_id, st.producer_epoch, st.seq)))
        elif st.kind is NodeEventKind.SNAPSHOT_COMPLETE and st.snapshot_id:
            begin = st.snapshot_begin_seq
            if begin is None:
                begin = next((b[2] for b in old.snapshot_begins if b[0] == st.snapshot_id), None)
            if begin is None:
                logger.warning("snapshot %s of node %s completed without a known begin: not reconciled",
                               st.snapshot_id, st.node)
            else:
                self.completed.append((st.node, st.snapshot_id, st.producer_epoch, begin))
                new = replace(new, last_snapshot_id=st.snapshot_id, last_snapshot_at_ms=now_ms,
                              snapshot_begins=tuple(b for b in old.snapshot_begins if b[0] != st.snapshot_id))
        self.nodes[st.node] = new
