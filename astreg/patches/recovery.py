"""Cold restore of the ``locations`` table in bulk, inside Faust's recovery.

Faust replays a changelog one record at a time: every record goes through the consumer's
per-message callback, becomes an Event on the changelog queue, and ``Recovery._slurp_changelogs``
logs it, buffers it and re-checks the remaining lag per record; RocksDB gets a write batch every
``recovery_buffer_size`` records. On this machine that is ~2,100 rows/s: a worker that lost its
data dir needed ~8 min to serve 1,000,000 rows again.

:func:`install` (RocksDB store only, no exactly-once) adds one step to Faust's recovery, right
where Faust has built the highwaters and the start offsets of its active changelog partitions
(``Recovery._build_offsets``): for each active partition of the table more than
:data:`MIN_LAG` records behind, a plain aiokafka consumer reads the changelog from that start
offset in big fetches and writes each fetched batch with one RocksDB ``WriteBatch`` (puts and
tombstone deletes, the changelog records' raw bytes, exactly what Faust's
``apply_changelog_batch`` writes) followed by the persisted changelog offset. It then moves
Faust's start offset to where it got, so Faust's own recovery only reads what is left (nothing,
or what the time budget did not cover) and does everything else as usual: seeks, pauses and
resumes partitions, the recovery-completed signal, standbys.

Same result as Faust's replay: the partition's store holds the last value of every key of the
changelog up to the highwater (later records overwrite earlier ones, in offset order, within and
across batches), and the persisted offset is only ever written after the rows up to it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.base import Collection
from faust.tables.recovery import Recovery
from faust.types import AppT

from astreg.settings import KafkaSettings

from .faust_store import partition_db

__all__ = ["INTERNALS", "install", "restore_partitions", "Restore", "MIN_LAG"]

logger = logging.getLogger(__name__)

INTERNALS = [
    # the hook: Recovery builds the start offsets and highwaters of its active partitions here
    "faust.tables.recovery:Recovery._build_offsets(self, consumer, tps, destination, title)",
    "faust.tables.recovery:Recovery.active_highwaters",
    "faust.tables.recovery:Recovery._restart_recovery uses self._build_offsets",
    # what restore_partitions writes: the store's databases and its persisted changelog offset
    "faust.stores.rocksdb:Store._db_for_partition(self, partition)",
    "faust.stores.rocksdb:Store.set_persisted_offset(self, tp, offset)",
]

MIN_LAG = 1_000  # fewer records behind: Faust's own replay takes well under a second
FETCH_BYTES = 16 * 1024 * 1024  # per partition and fetch


@dataclass(frozen=True)
class Restore:
    """What the bulk restore reads (the table's changelog, through ``kafka``) and writes (its store)."""

    table: Collection
    kafka: KafkaSettings


def install(app: AppT, table: Collection, kafka: KafkaSettings) -> bool:
    """Restore ``table`` in bulk during Faust's recovery (RocksDB store, not exactly-once)."""
    if not str(app.conf.store).startswith("rocksdb") or app.conf.processing_guarantee.value == "exactly_once":
        return False
    app._astreg_restore = Restore(table, kafka)  # type: ignore[attr-defined]
    _patch_recovery()
    return True


def _patch_recovery() -> None:
    if getattr(Recovery, "_astreg_bulk_restore", False):
        return
    original = Recovery._build_offsets

    async def _build_offsets(self: Any, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(self, consumer, tps, destination, title)
        restore: Restore | None = getattr(self.app, "_astreg_restore", None)
        if restore is None or title != "active" or not tps:
            return
        topic = restore.table.changelog_topic.get_topic_name()
        mine = {tp: destination[tp] for tp in tps if tp.topic == topic}
        highwaters = {tp: self.active_highwaters.get(tp) for tp in mine}
        # Faust wraps this step in broker_request_timeout: stay well inside it, Faust's own
        # replay reads whatever the budget leaves.
        budget = float(self.app.conf.broker_request_timeout) * 0.6
        # destination is updated batch by batch: if Faust cancels this step (a new rebalance),
        # what was written stays counted (RocksDB holds it and its persisted offset).
        await restore_partitions(restore, mine, highwaters, budget, progress=destination)

    Recovery._build_offsets = _build_offsets  # type: ignore[method-assign]
    Recovery._astreg_bulk_restore = True  # type: ignore[attr-defined]


async def restore_partitions(restore: Restore, offsets: dict[Any, int | None], highwaters: dict[Any, int | None],
                             budget_s: float, progress: Any = None) -> dict[Any, int]:
    """Read changelog partitions ``tp`` from ``offsets[tp] + 1`` up to ``highwaters[tp]`` (the
    last offset, Faust's convention) into the table's RocksDB store; returns the offset reached
    per partition (only partitions it read), also written into ``progress`` after every batch."""
    progress = {} if progress is None else progress
    store: Any = restore.table.data  # faust.stores.rocksdb.Store
    db_for = partition_db(store)
    assert db_for is not None, "the bulk restore writes RocksDB stores only"
    ends = {tp: hw for tp, hw in highwaters.items() if hw is not None}
    todo = {tp: (-1 if off is None else off) for tp, off in offsets.items()
            if tp in ends and ends[tp] - (-1 if off is None else off) > MIN_LAG}
    if not todo:
        return {}
    t0 = time.monotonic()
    consumer = AIOKafkaConsumer(**restore.kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None,
                                max_partition_fetch_bytes=FETCH_BYTES, fetch_max_bytes=4 * FETCH_BYTES,
                                auto_offset_reset="earliest")
    await consumer.start()
    reached: dict[Any, int] = {}
    rows = 0
    try:
        by_tp = {TopicPartition(tp.topic, tp.partition): tp for tp in todo}
        consumer.assign(list(by_tp))
        for ktp, tp in by_tp.items():
            consumer.seek(ktp, todo[tp] + 1)
        pending = set(by_tp)
        while pending:
            if time.monotonic() - t0 > budget_s:
                logger.warning("bulk restore stopped after %.0fs (%d rows): Faust replays the rest",
                               budget_s, rows)
                break
            batches = await consumer.getmany(*pending, timeout_ms=500)
            for ktp, records in batches.items():
                if not records:
                    continue
                tp = by_tp[ktp]
                wb = rocksdict.WriteBatch(raw_mode=True)
                put, delete = wb.put, wb.delete
                for r in records:
                    if r.value is None:
                        delete(r.key)
                    else:
                        put(r.key, r.value)
                db_for(tp.partition).write(wb)
                last = records[-1].offset
                store.set_persisted_offset(tp, last)
                reached[tp] = progress[tp] = last
                rows += len(records)
            for ktp in list(pending):
                tp = by_tp[ktp]
                # Done when the reading position passed the highwater (compaction leaves gaps,
                # so the last record read may sit below it).
                pos = await consumer.position(ktp)  # next offset to read
                if pos > ends[tp] or reached.get(tp, todo[tp]) >= ends[tp]:
                    if reached.get(tp, todo[tp]) < ends[tp]:
                        store.set_persisted_offset(tp, ends[tp])
                        reached[tp] = progress[tp] = ends[tp]  # the tail was compacted away
                    pending.discard(ktp)
    finally:
        await consumer.stop()
    took = time.monotonic() - t0
    logger.info("bulk restore: %d changelog rows in %.1fs (%.0f rows/s) for %s", rows, took,
                rows / max(took, 1e-6), sorted(f"{tp.topic}[{tp.partition}]" for tp in todo))
    return reached
