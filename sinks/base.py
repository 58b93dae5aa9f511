"""The sink contract and the one runner every store shares.

A sink is a small object with ``setup() / write_batch(upserts, deletes) / flush() / close()`` and
``reconcile(alive, owned)``; :class:`SinkRunner` does everything else: it consumes the compacted
``asterisk.locations.v1`` topic with its own consumer group, decodes each record (null value =
tombstone), coalesces a batch by key (last value wins), writes it, and commits the offsets only
after the write succeeded (at-least-once; upserts and deletes are idempotent, so a replay gives
the same store). A store that is down or slow raises :class:`SinkUnavailable`: the runner pauses
the partitions, backs off, retries the same batch and never commits past it. A record that can
never be written (undecodable bytes, a constraint the store refuses: :class:`PermanentWriteError`)
goes to ``asterisk.deadletter.v1`` with the reason in headers and the sink goes on. Each batch also writes, in the same transaction or atomic batch as its rows, the next offset of
every partition it covers (``write_batch(..., offsets=)``; ``read_offsets(topic)`` reads them
back). One rule then finds a store that lost data, whatever the store: at every assignment the
store's offsets are compared with the group's committed offsets, and while running (every second,
after every outage, on :class:`StoreLost`) with what this runner wrote; a partition the store holds
less of (restored from an older backup, recreated empty, another cluster's data) is rebuilt: read
from the start up to the fetch high watermark (the embedded broker's ``end_offsets()`` is wrong),
then the sink removes the keys of those partitions the topic no longer holds. A store ahead is
fine (replays are idempotent). A fresh group or ``--rebuild`` rebuilds every partition the same
way. Errors come in three classes: :class:`SinkUnavailable` (transient: retried with backoff,
offsets held), :class:`PermanentWriteError` (that row: dead-lettered) and :class:`ConfigError`
(fatal: one line, exit non-zero). A stop (SIGTERM) is obeyed at any moment, store up or down: the
write in progress is abandoned (the store's transaction rolls back) and nothing is committed past
what the store holds. A store that keeps its offsets is the truth of where the sink is: the
group's offsets are committed to Kafka at most every ``COMMIT_EVERY`` s (and when partitions are
revoked or the sink stops), for lag monitoring and for a store that lost them; at assignment the
sink resumes from the later of the two. Committing after every batch cost a broker round trip
per batch before the next fetch (docs/benchmarks.md). Run through ``astreg sink ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from astreg import patches
from astreg.deadletter import deadletter_headers
from astreg.errors import PermanentWriteError, SinkUnavailable, StoreLost, UndecodableRecord
from astreg.partition import partition_for
from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import Codec, location_codec
from schemas.models import EndpointLocation

from .metrics import SinkMetrics
from .settings import RunnerSettings

__all__ = ["Sink", "SinkRunner", "RunnerSettings", "Batch", "Offsets", "coalesce", "stale_keys", "delete_stale_keys"]

logger = logging.getLogger(__name__)

# A running sink compares the store's offsets with what it wrote this often (seconds).
CHECK_EVERY = 1.0
COMMIT_EVERY = 1.0  # s between Kafka commits of a sink whose store keeps its own offsets


class _Stopping(Exception):
    """The runner was asked to stop while waiting for its store: leave without committing."""


class _Rebuilt(Exception):
    """A check before a write found partitions behind: they are rebuilding, the batch is dropped."""

    def __init__(self, partitions: set[TopicPartition]):
        super().__init__(sorted(tp.partition for tp in partitions))
        self.partitions = partitions


#: The next offset to apply of each partition a batch covers.
Offsets = dict[TopicPartition, int]


class Sink(Protocol):
    """What a store must offer the runner. Every method may raise SinkUnavailable."""

    kind: str
    #: True when the sink must see the whole topic at every start (it mirrors the state in
    #: memory to repair a store that lost data, e.g. AstDB of a restarted node).
    full_replay: bool

    async def setup(self) -> None: ...

    async def write_batch(
        self, upserts: dict[str, EndpointLocation], deletes: set[str], offsets: Offsets | None = None
    ) -> None:
        """Upsert and delete idempotently and store ``offsets`` (the next offset of each partition
        the batch covers) atomically with them; PermanentWriteError if some record can never be written."""

    async def read_offsets(self, topic: str) -> dict[int, int]:
        """The next offset of each partition of ``topic`` the store holds (StoreLost if its tables are gone)."""

    async def reconcile(self, alive: set[str], owned: Callable[[str], bool]) -> int:
        """Remove stored endpoints that ``owned`` claims and ``alive`` lacks; return how many."""

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Batch:
    """A coalesced batch: the last value of each key wins."""

    upserts: dict[str, EndpointLocation] = field(default_factory=dict)
    deletes: set[str] = field(default_factory=set)

    def put(self, key: str, value: EndpointLocation | None) -> None:
        if value is None:
            self.upserts.pop(key, None)
            self.deletes.add(key)
        else:
            self.deletes.discard(key)
            self.upserts[key] = value

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


def coalesce(items: Iterable[tuple[str, EndpointLocation | None]]) -> Batch:
    """Fold (key, value-or-tombstone) pairs in log order into one batch."""
    batch = Batch()
    for key, value in items:
        batch.put(key, value)
    return batch





def stale_keys(stored: Iterable[str], alive: set[str], owned: Callable[[str], bool]) -> list[str]:
    """Stored keys a rebuild must remove: owned by the rebuilt partitions, gone from the topic."""
    return [k for k in stored if k not in alive and owned(k)]


async def delete_stale_keys(sink: Any, alive: set[str], owned: Callable[[str], bool]) -> int:
    """``reconcile`` for a store that can list its keys: delete the stale ones in one batch."""
    stale = stale_keys(await sink.stored_keys(), alive, owned)
    if stale:
        await sink.write_batch({}, set(stale))
    return len(stale)


@dataclass
class _Origin:
    """Where the last record of a key in a batch came from (for dead letters)."""

    tp: TopicPartition
    offset: int
    raw: bytes | None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: SinkRunner):
        self.runner = runner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.runner._commit_pending()  # still ours: what the store holds of them is committed
        for tp in revoked:
            self.runner._rebuilding.pop(tp, None)
            self.runner._expect.pop(tp, None)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Seeking here is undone when aiokafka then applies the committed offsets: the runner
        # decides and seeks after the fetch that followed the assignment.
        self.runner._newly_assigned.update(assigned)


class SinkRunner:
    """Consume the locations topic into one sink; see the module docstring."""

    def __init__(
        self,
        sink: Sink,
        kafka: KafkaSettings,
        topics: TopicSettings,
        settings: RunnerSettings | None = None,
        *,
        codec: Codec[EndpointLocation] | None = None,
        metrics: SinkMetrics | None = None,
    ):
        self.sink = sink
        self.kafka = kafka
        self.topics = topics
        self.settings = settings or RunnerSettings()
        self.group = self.settings.group or f"astreg-sink-{sink.kind}"
        self.codec = codec or location_codec()
        self.metrics = metrics or SinkMetrics()
        self.caught_up = asyncio.Event()
        self.rebuilds_done = 0
        # For benchmarks and operators: records written and when the first/last write ended.
        self.written = 0
        self.first_write_at: float | None = None
        self.last_write_at: float | None = None
        self._rebuild_next = self.settings.rebuild
        self._rebuilding: dict[TopicPartition, dict[str, bool]] = {}
        self._newly_assigned: set[TopicPartition] = set()
        self._rebuilt: dict[str, bool] = {}
        self._rebuilt_partitions: set[int] = set()
        # What the store must hold at least, per assigned partition: the committed offset at
        # assignment, then the end of every batch written (0 while a rebuild starts over).
        self._expect: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stop = asyncio.Event()
        self._checked_at = 0.0
        self._uncommitted: dict[TopicPartition, int] = {}  # written to the store, not committed to Kafka yet
        self._committed_at = 0.0
        self._check_now = False  # the store was away: compare offsets before the next write

    def stop(self) -> None:
        self._stop.set()

    @property
    def _keeps_offsets(self) -> bool:
        return hasattr(self.sink, "read_offsets")

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until :meth:`stop`; closes everything it opened. ConfigError (fatal) propagates."""
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        self._producer = AIOKafkaProducer(
            **self.kafka.aiokafka_kwargs(), enable_idempotence=self.kafka.idempotent, acks="all"
        )
        patches.install(self.kafka)  # a group consumer: it must leave its group on the embedded broker too
        try:
            await self._retrying(self.sink.setup, "setup")
            if not self.settings.group:
                # A sink may name its own group once set up (the AstDB sink: after the node ids it
                # writes to, so one sink per node needs no flag; docs/sinks.md).
                self.group = getattr(self.sink, "default_group", None) or self.group
            self._consumer = AIOKafkaConsumer(
                **self.kafka.aiokafka_kwargs(),
                **self.kafka.group_kwargs(),
                group_id=self.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.settings.batch_size,
            )
            self._consumer.subscribe([self.topics.topic_locations], listener=_Listener(self))
            await self._producer.start()
            await self._consumer.start()
            logger.info("sink %s consuming %s as group %s", self.sink.kind, self.topics.topic_locations, self.group)
            while not self._stop.is_set():
                await self._step()
        except _Stopping as exc:
            logger.warning("sink %s stopping %s; nothing committed past what the store holds", self.sink.kind, exc)
        finally:
            await self._close()

    async def _close(self) -> None:
        """Close the consumer, producer and store; a store that is down cannot delay or fail the exit."""
        try:
            await asyncio.wait_for(self._commit_pending(), 5)  # only offsets the store already holds
        except Exception as exc:  # noqa: BLE001 - closing: the store has them, the next start reads them there
            logger.warning("sink %s: last commit: %s: %s", self.sink.kind, type(exc).__name__, exc)
        for what, close in (("consumer", self._consumer and self._consumer.stop),
                            ("producer", self._producer.stop if self._producer else None),
                            ("store", self.sink.close)):
            if close is None:
                continue
            try:
                await asyncio.wait_for(close(), 10)
            except Exception as exc:  # noqa: BLE001 - closing: report and go on closing the rest
                logger.warning("sink %s: closing the %s: %s: %s", self.sink.kind, what, type(exc).__name__, exc)
        logger.info("sink %s stopped", self.sink.kind)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        assert self._consumer is not None
        stored = await self._read_stored() if self._keeps_offsets and not self.sink.full_replay else {}
        fresh, behind = [], []
        for tp in sorted(assigned):
            committed = await self._consumer.committed(tp)
            if self._rebuild_next or self.sink.full_replay or committed is None:
                fresh.append(tp)
            elif self._keeps_offsets and stored.get(tp.partition, 0) < committed:
                behind.append(tp)
                logger.warning("sink %s: the store holds partition %d up to offset %d, the group committed %d",
                               self.sink.kind, tp.partition, stored.get(tp.partition, 0), committed)
            else:
                # The caller drops what the first fetch returned: go back to read it again, from
                # the store's offset when it is ahead (commits lag it by up to COMMIT_EVERY).
                start = max(committed, stored.get(tp.partition, 0)) if self._keeps_offsets else committed
                self._consumer.seek(tp, start)
                self._expect[tp] = start
        self._rebuild_next = False
        if behind:
            self.metrics.store_lost.labels(self.sink.kind).inc()
        if fresh or behind:
            await self._start_rebuild(fresh + behind)

    async def _start_rebuild(self, tps: list[TopicPartition]) -> None:
        """Read these partitions again from the start; their stale keys go at the end."""
        assert self._consumer is not None
        await self._consumer.seek_to_beginning(*tps)
        for tp in tps:
            self._rebuilding[tp] = {}
            self._expect[tp] = 0
            self._rebuilt_partitions.discard(tp.partition)
        logger.info("sink %s rebuilding partitions %s from the start", self.sink.kind, sorted(tp.partition for tp in tps))

    # ------------------------------------------------------------------ one step

    async def _step(self) -> None:
        assert self._consumer is not None
        fetched = await self._consumer.getmany(
            timeout_ms=self.settings.batch_linger_ms, max_records=self.settings.batch_size
        )
        if self._newly_assigned:
            assigned, self._newly_assigned = self._newly_assigned & self._consumer.assignment(), set()
            await self._on_assigned(assigned)
            # Records fetched before the decision are read again from the right position.
            fetched = {tp: recs for tp, recs in fetched.items() if tp not in assigned}
        if self._keeps_offsets and (self._check_now or time.monotonic() - self._checked_at >= CHECK_EVERY):
            rebuilt = await self._check_store()
            fetched = {tp: recs for tp, recs in fetched.items() if tp not in rebuilt}
        batch = Batch()
        origins: dict[str, _Origin] = {}
        starts: dict[TopicPartition, int] = {}
        ends: dict[TopicPartition, int] = {}
        for tp, records in fetched.items():
            alive = self._rebuilding.get(tp)
            if alive is None and tp.partition in self._rebuilt_partitions:
                # Rebuilt to its end but not reconciled yet (other partitions still reading):
                # what arrives now is alive too, or the reconcile would delete it.
                alive = self._rebuilt
            for rec in records:
                starts.setdefault(tp, rec.offset)
                ends[tp] = rec.offset + 1
                key, value = await self._decode(rec)
                if key is None:
                    continue
                batch.put(key, value)
                origins[key] = _Origin(tp, rec.offset, rec.value)
                if alive is not None:
                    alive[key] = value is not None
        if ends:
            try:
                await self._write(batch, origins, ends)
            except StoreLost as exc:
                await self._store_lost(exc, starts)
                return
            except _Rebuilt as exc:
                # The store lost data while it was away: the rebuilt partitions start over, the
                # others read this batch again (nothing of it was committed).
                for tp, start in starts.items():
                    if tp not in exc.partitions:
                        self._consumer.seek(tp, start)
                return
            self._uncommitted.update(ends)
        # Also when nothing came: the last batch before a quiet spell is committed within a second.
        if self._uncommitted and (not self._keeps_offsets or time.monotonic() - self._committed_at >= COMMIT_EVERY):
            await self._commit_pending()
        await self._after_write()

    async def _read_stored(self) -> dict[int, int]:
        """The store's offsets of the locations topic (a store whose tables are gone is set up again: empty)."""
        out: dict[int, int] = {}

        async def read() -> None:
            try:
                out.update(await self.sink.read_offsets(self.topics.topic_locations))  # type: ignore[attr-defined]
            except StoreLost as exc:
                logger.warning("sink %s: %s; setting the store up again", self.sink.kind, exc.reason)
                await self.sink.setup()
                out.clear()

        await self._retrying(read, "read offsets")
        return out

    async def _check_store(self) -> set[TopicPartition]:
        """Compare the store's offsets with what this runner wrote; rebuild the partitions behind."""
        assert self._consumer is not None
        self._check_now = False
        stored = await self._read_stored()
        self._checked_at = time.monotonic()
        behind = {tp for tp in self._consumer.assignment() if stored.get(tp.partition, 0) < self._expect.get(tp, 0)}
        if behind:
            self.metrics.store_lost.labels(self.sink.kind).inc()
            logger.warning(
                "sink %s: the store lost data: it holds %s where this sink wrote %s; rebuilding those partitions",
                self.sink.kind, {tp.partition: stored.get(tp.partition, 0) for tp in sorted(behind)},
                {tp.partition: self._expect.get(tp, 0) for tp in sorted(behind)},
            )
            await self._start_rebuild(sorted(behind))
        return behind

    async def _store_lost(self, exc: StoreLost, starts: dict[TopicPartition, int]) -> None:
        """A write found the store's tables or keys gone: set it up again, then rebuild what is behind."""
        assert self._consumer is not None
        logger.warning("sink %s: %s; setting the store up again", self.sink.kind, exc.reason)
        for tp, start in starts.items():
            self._consumer.seek(tp, start)  # nothing of the batch is in the store
        await self._retrying(self.sink.setup, "setup")
        await self._check_store()

    async def _decode(self, rec: Any) -> tuple[str | None, EndpointLocation | None]:
        """(key, value-or-None) of a record, or (None, None) after dead-lettering it."""
        tp = TopicPartition(rec.topic, rec.partition)
        if rec.key is None:
            await self._deadletter(rec.key, rec.value, tp, rec.offset, "record without a key")
            return None, None
        try:
            key = rec.key.decode("utf-8")
        except UnicodeDecodeError as exc:
            await self._deadletter(rec.key, rec.value, tp, rec.offset, "key is not UTF-8", exc)
            return None, None
        if rec.value is None:
            return key, None
        try:
            return key, self.codec.decode(rec.value, topic=rec.topic, partition=rec.partition, offset=rec.offset)
        except UndecodableRecord as exc:
            await self._deadletter(rec.key, rec.value, tp, rec.offset, exc.reason, exc)
            return None, None

    async def _write(self, batch: Batch, origins: dict[str, _Origin], ends: Offsets) -> None:
        """Write the batch and its offsets; after an outage, check the store before writing again."""
        started = time.perf_counter()
        delay = 0.2
        failures = 0
        while True:
            try:
                await self._unless_stopped(self._write_isolating(batch, origins, ends))
                break
            except StoreLost:
                raise
            except SinkUnavailable as exc:
                failures += 1
                delay = await self._outage(exc, "write", failures, delay)
            if self._keeps_offsets:
                # The store was away: it may have come back with less (a restore, a restart
                # without persistence). Compare before writing, or this batch's offsets would
                # hide the loss.
                rebuilt = await self._check_store()
                if rebuilt:
                    self._back(failures, "write")
                    raise _Rebuilt(rebuilt)
        self._back(failures, "write")
        now = time.perf_counter()
        self.metrics.write_seconds.labels(self.sink.kind).observe(now - started)
        self.written += len(batch)
        self.first_write_at = self.first_write_at or started
        self.last_write_at = now
        self._expect.update(ends)
        self.metrics.batches.labels(self.sink.kind).inc()
        self.metrics.records.labels(self.sink.kind, "upsert").inc(len(batch.upserts))
        self.metrics.records.labels(self.sink.kind, "delete").inc(len(batch.deletes))

    async def _write_isolating(self, batch: Batch, origins: dict[str, _Origin], ends: Offsets) -> None:
        try:
            await self.sink.write_batch(batch.upserts, batch.deletes, ends)
            return
        except PermanentWriteError as exc:
            logger.warning("sink %s: batch refused (%s); writing its records one by one", self.sink.kind, exc)
        # One record at a time finds the culprits; the rest is written and nothing valid is lost.
        for key, value in list(batch.upserts.items()):
            try:
                await self.sink.write_batch({key: value}, set())
            except PermanentWriteError as exc:
                o = origins[key]
                await self._deadletter(key.encode(), o.raw, o.tp, o.offset, f"store refused the row: {exc}", exc)
                batch.upserts.pop(key)
        await self.sink.write_batch({}, batch.deletes, ends)

    async def _unless_stopped(self, work: Awaitable[Any]) -> Any:
        """Await ``work`` unless a stop comes first: then cancel it (a transaction in progress
        rolls back) and raise _Stopping."""
        if self._stop.is_set():
            raise _Stopping("before a store call")
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise _Stopping("during a store call (abandoned: its transaction rolls back)")
        return task.result()

    async def _outage(self, exc: SinkUnavailable, what: str, failures: int, delay: float) -> float:
        """Count and log a failed attempt, pause the partitions, wait the backoff; return the next one."""
        self.metrics.unavailable.labels(self.sink.kind).inc()
        self.metrics.store_up.labels(self.sink.kind).set(0)
        if failures == 1:
            self.metrics.waiting_since.labels(self.sink.kind).set(time.time())
        self._check_now = True
        # Log the outage once, then quietly; the metric counts every attempt.
        log = logger.warning if failures == 1 else logger.debug
        log("sink %s: %s failed, retrying: %s", self.sink.kind, what, exc.reason)
        if self._consumer is not None:
            self._consumer.pause(*self._consumer.assignment())
        cap = min(self.settings.backoff_max, getattr(self.sink, "retry_cap", self.settings.backoff_max))
        wait = min(max(exc.retry_after, delay), cap)
        try:
            await asyncio.wait_for(self._stop.wait(), wait)
        except TimeoutError:
            return min(delay * 2, cap)
        raise _Stopping(f"while the store is down ({exc.reason})")

    def _back(self, failures: int, what: str) -> None:
        self.metrics.store_up.labels(self.sink.kind).set(1)
        if failures:
            self.metrics.waiting_since.labels(self.sink.kind).set(0)
            logger.info("sink %s: store is back after %d failed %s attempts", self.sink.kind, failures, what)
            if self._consumer is not None:
                self._consumer.resume(*self._consumer.assignment())

    async def _retrying(self, action: Callable[[], Any], what: str) -> None:
        """Run ``action`` until it does not raise SinkUnavailable, pausing the partitions meanwhile."""
        delay = 0.2
        failures = 0
        while True:
            try:
                await self._unless_stopped(action())
                self._back(failures, what)
                return
            except SinkUnavailable as exc:
                failures += 1
                delay = await self._outage(exc, what, failures, delay)

    async def _commit_pending(self) -> None:
        """Commit what was written since the last commit, for the partitions still assigned."""
        if self._consumer is None or not self._uncommitted:
            return
        assigned = self._consumer.assignment()
        ends = {tp: end for tp, end in self._uncommitted.items() if tp in assigned}
        self._uncommitted.clear()
        self._committed_at = time.monotonic()
        if ends:
            await self._commit(ends)

    async def _commit(self, ends: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit(ends)
        except (CommitFailedError, KafkaError) as exc:
            # The group rebalanced: the records are written (idempotently) and will be seen again.
            logger.warning("sink %s: commit failed (%s); records will be replayed", self.sink.kind, exc)

    async def _after_write(self) -> None:
        """Finish rebuilds that reached the end, update lag, tell waiters we are caught up."""
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        lag = 0
        at_end = bool(assignment)
        for tp in assignment:
            high = self._consumer.highwater(tp)
            if high is None:
                at_end = False
                continue
            behind = max(0, high - await self._consumer.position(tp))
            lag += behind
            if behind:
                at_end = False
            elif tp in self._rebuilding:
                self._rebuilt.update(self._rebuilding.pop(tp))
                self._rebuilt_partitions.add(tp.partition)
        self.metrics.lag.labels(self.sink.kind).set(lag)
        if self._rebuilt_partitions and not self._rebuilding:
            await self._finish_rebuild()
        if at_end and not self._rebuilding:
            await self._retrying(self.sink.flush, "flush")
            if not self.caught_up.is_set():
                logger.info("sink %s: caught up with %s", self.sink.kind, self.topics.topic_locations)
            self.caught_up.set()
        else:
            self.caught_up.clear()

    async def _finish_rebuild(self) -> None:
        assert self._consumer is not None
        count = len(self._consumer.partitions_for_topic(self.topics.topic_locations) or ())
        parts = set(self._rebuilt_partitions)
        alive = {k for k, present in self._rebuilt.items() if present}
        removed: list[int] = []

        async def reconcile() -> None:
            removed.append(await self.sink.reconcile(alive, lambda k: partition_for(k, count) in parts))

        await self._retrying(reconcile, "reconcile")
        self.metrics.reconciled.labels(self.sink.kind).inc(removed[-1])
        logger.info(
            "sink %s: rebuilt partitions %s: %d endpoints alive, %d stale removed",
            self.sink.kind, sorted(parts), len(alive), removed[-1],
        )
        self._rebuilt.clear()
        self._rebuilt_partitions.clear()
        self.rebuilds_done += 1

    async def _deadletter(
        self,
        key: bytes | None,
        value: bytes | None,
        tp: TopicPartition,
        offset: int,
        reason: str,
        exc: BaseException | None = None,
    ) -> None:
        assert self._producer is not None
        logger.warning("sink %s: dead-lettering %s[%d]@%d: %s", self.sink.kind, tp.topic, tp.partition, offset, reason)
        self.metrics.records.labels(self.sink.kind, "deadletter").inc()
        headers = deadletter_headers(
            reason,
            component=f"sink-{self.sink.kind}",
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
            error=type(exc).__name__ if exc is not None else None,
        )
        delay = 0.5
        while True:
            try:
                await self._producer.send_and_wait(self.topics.topic_deadletter, value=value, key=key, headers=headers)
                return
            except KafkaError as exc:
                # The offset is not committed before the dead letter is out: keep trying.
                logger.warning("sink %s: dead letter not sent yet (%s); retrying", self.sink.kind, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.backoff_max)
