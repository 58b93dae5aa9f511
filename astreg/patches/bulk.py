"""Bulk ingest (``--ingest bulk``): registrations go from Faust's fetch straight to ``apply_batch``.

Faust stays in charge of the app, the ``locations`` table (RocksDB + changelog + recovery), the
group and its partition assignment, offset commits and the web views; the ``track_registrations``
agent stays declared so the registrations topic is subscribed and co-partitioned with the table
exactly as before. What this module removes is Faust's per-message stream path for that topic:
in ``Consumer._drain_messages`` every message was handed over with ``wait_first(callback(msg),
suspend_flow.wait())`` (two tasks per message), wrapped in an Event, queued to the agent's
channel, iterated by the stream with sensors, and acked one by one (~400 CPU-µs/event here).

:func:`install` replaces the app consumer's ``_drain_messages`` with :func:`drain`: each
``getmany`` round's registrations are applied as one batch (``apply_batch``, which writes the
table and sends its changelog before returning), and only then acked to Faust's consumer, which
commits them on its usual schedule: a commit never gets ahead of the table write. Order within a
partition is kept (getmany yields each partition's records in offset order and the batch is
applied in that order). Messages of any other topic take Faust's normal per-message path.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import types
from collections.abc import Awaitable, Callable
from typing import Any

from faust.types import TP, AppT
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

from astreg.delivery import delivered

from .rewind import rewind_dropped

__all__ = ["INTERNALS", "BulkEvent", "Apply", "OnLost", "Deliveries", "install", "drain"]

logger = logging.getLogger(__name__)

_CONSUMER = "faust.transport.consumer:Consumer"
INTERNALS = [
    # the hook: Faust's fetcher hands every fetch loop to the consumer's _drain_messages
    f"{_CONSUMER}._drain_messages(self, fetcher)",
    "faust.transport.consumer:Fetcher._fetcher uses consumer._drain_messages(self)",
    # what drain() does in its place (Faust's getmany and ack, per record there)
    f"{_CONSUMER}._wait_next_records(self, timeout)",
    f"{_CONSUMER}._to_message(self, tp, record)",
    f"{_CONSUMER}._add_gap(self, tp, offset_from, offset_to)",
    f"{_CONSUMER}._read_offset",
    f"{_CONSUMER}._committed_offset",
    f"{_CONSUMER}._acked",
    f"{_CONSUMER}._acked_index",
    f"{_CONSUMER}._n_acked",
    f"{_CONSUMER}._waiting_for_ack",
    f"{_CONSUMER}._buffered_partitions",
    f"{_CONSUMER}._commit_every",
    f"{_CONSUMER}.ack uses ack_lock",
    "mode.services:Service._stopped",  # the consumer's and the fetcher's
]


class BulkEvent:
    """The part of a Faust Event the table and ``plan_batch`` use: its ``message``."""

    __slots__ = ("message", "__weakref__")  # the table store keeps a weakref as current event

    def __init__(self, message: Any):
        self.message = message


# Applies a batch; returns the delivery futures of everything the batch sent.
Apply = Callable[[list[Any]], Awaitable[list["asyncio.Future[Any]"]]]
# Told when the cluster refused a batch's outputs (exception, number of records); stops the worker.
OnLost = Callable[[BaseException, int], Awaitable[None]]


class Deliveries:
    """Batches applied whose outputs the cluster has not acknowledged yet, acked as they are.

    Waiting here instead of in the fetch loop keeps the loop applying the next batches while
    the broker replicates the previous ones (acks=all); Faust commits the highest offset below
    which every record is acked, so a batch still waiting holds back its partitions' commits
    and nothing else."""

    def __init__(self, on_lost: OnLost, metrics: Any = None):
        self.on_lost = on_lost
        self.metrics = metrics
        self.waiting: dict[asyncio.Task[None], float] = {}  # task -> when its batch was applied

    def ack_when_delivered(self, consumer: Any, batch: list[Any], futures: list[asyncio.Future[Any]]) -> None:
        task = asyncio.ensure_future(self._ack(consumer, batch, futures))
        self.waiting[task] = time.time()
        task.add_done_callback(self._done)
        self._report()

    async def _ack(self, consumer: Any, batch: list[Any], futures: list[asyncio.Future[Any]]) -> None:
        try:
            await delivered(futures)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the producer failed with
            await self.on_lost(exc, len(batch))
            return
        assigned = consumer.assignment()
        _ack_all(consumer, [r for r in batch if TP(r.topic, r.partition) in assigned])

    def _done(self, task: asyncio.Task[None]) -> None:
        self.waiting.pop(task, None)
        self._report()

    def _report(self) -> None:
        if self.metrics is not None:
            self.metrics.outputs_pending.set(len(self.waiting))
            self.metrics.outputs_pending_since.set(min(self.waiting.values(), default=0))


def install(app: AppT, topic: str, apply: Apply, batch_size: int, on_lost: OnLost, metrics: Any = None) -> Deliveries:
    """Make the app's consumer drain ``topic`` in batches of at most ``batch_size`` into ``apply``."""
    consumer: Any = app.consumer
    deliveries = Deliveries(on_lost, metrics)
    consumer._drain_messages = types.MethodType(  # Fetcher calls consumer._drain_messages(fetcher)
        lambda self, fetcher: drain(self, fetcher, topic, apply, batch_size, deliveries), consumer)
    return deliveries


async def _apply_acked(consumer: Any, apply: Apply, batch: list[Any], deliveries: Deliveries) -> None:
    """Apply one batch, then ack it once the cluster acknowledged what it sent: Faust commits
    only offsets whose rows are written and whose outputs (changelog, locations, dead letters)
    are on the brokers.

    The batch is never in Faust's unacked set (``track_message``: a WeakSet insert plus sensor
    calls per message): nothing of it is acked until its outputs are delivered, so a rebalance
    that commits meanwhile commits none of it, and a cancelled or failed batch leaves its
    offsets where they were for the next owner (replayed events publish their rows again).
    """
    futures = await apply([BulkEvent(m) for m in batch])
    if not futures or all(f.done() and not f.cancelled() and f.exception() is None for f in futures):
        _ack_all(consumer, batch)
    else:
        deliveries.ack_when_delivered(consumer, batch, futures)


def _ack_all(consumer: Any, batch: list[Any]) -> None:
    """``Consumer.ack`` for a whole batch of records of one topic, under its lock once."""
    committed_offset = consumer._committed_offset
    acked_index = consumer._acked_index
    acked = consumer._acked
    n = 0
    with ack_lock:
        by_tp: dict[Any, list[int]] = {}
        for record in batch:
            by_tp.setdefault((record.topic, record.partition), []).append(record.offset)
        for (topic, partition), offsets in by_tp.items():
            tp = TP(topic, partition)
            committed = committed_offset[tp]
            index = acked_index[tp]
            fresh = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            index.update(fresh)
            acked[tp].extend(fresh)
            n += len(fresh)
        consumer._n_acked += n
        notify(consumer._waiting_for_ack)


def _unread(consumer: Any, batch: list[Any]) -> None:
    """Let a dropped batch be read again: its partitions' read offsets go back to its first one."""
    first: dict[Any, int] = {}
    for record in batch:
        first.setdefault(TP(record.topic, record.partition), record.offset)
    read_offset = consumer._read_offset
    for tp, offset in first.items():
        if tp in read_offset:  # still assigned (a revoked partition's entry is gone)
            read_offset[tp] = offset or None


async def drain(consumer: Any, fetcher: Any, topic: str, apply: Apply, batch_size: int = 2000,
                deliveries: Deliveries | None = None) -> None:
    """Faust's ``Consumer._drain_messages`` with one batch per fetch round for ``topic``.

    Faust's ``getmany`` turns every record into a ConsumerMessage, asks for the highwater and
    updates the monitor per record; here each fetch round's records of ``topic`` are taken as
    aiokafka gives them (``record.topic/partition/offset/key/value``: all the rules and the
    table need), per partition in offset order, and the monitor is told once per partition.
    Records of any other topic take Faust's per-message path exactly as before.
    """
    app = consumer.app
    callback = consumer.callback
    to_message = consumer._to_message
    consumer_should_stop = consumer._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = consumer._read_offset.__getitem__
    set_read_offset = consumer._read_offset.__setitem__
    acks_enabled_for = app.topics.acks_enabled_for
    if deliveries is None:
        deliveries = Deliveries(_raise)
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            await consumer.sleep(0)
            if consumer.should_stop:
                break
            # Waits while the flow is paused (rebalance, recovery); the records it returns belong
            # to the generation current when it returns (what Faust's getmany compares with).
            records, active = await consumer._wait_next_records(1.0)
            generation = app.consumer_generation_id
            if not records or consumer.should_stop:
                continue
            if not consumer.flow_active:
                # What getmany does (back to the committed offsets), after giving back what the
                # fetch took: the changelogs have no committed offsets to go back to.
                await rewind_dropped(consumer, records)
                await consumer.perform_seek()
                continue
            batch: list[Any] = []
            buffered = consumer._buffered_partitions
            dropped: dict[Any, list[Any]] = {}  # records taken from the consumer, not handed on

            # Faust's getmany checks this before every record it yields: a rebalance while a
            # callback waits seeks the partitions (recovery seeks the changelogs to where the
            # store is) and the rest of this round must not move their read offsets past it.
            current = functools.partial(_current, consumer, app, generation)

            items = list(records.items())
            for i, (tp, recs) in enumerate(items):
                if not current():
                    dropped.update(items[i:])
                    break
                if not recs:
                    continue
                if active is not None and tp not in active and tp not in buffered:
                    dropped[tp] = recs  # paused since the fetch began
                    continue
                app.monitor.track_tp_end_offset(tp, consumer.highwater(tp))
                r_offset = get_read_offset(tp)
                acks = acks_enabled_for(tp.topic)
                if tp.topic == topic:
                    prev = r_offset
                    for record in recs:
                        offset = record.offset
                        if r_offset is not None and offset < r_offset:
                            continue  # already read (Faust drops these the same way)
                        if prev and offset - prev > 1 and acks:
                            await consumer._add_gap(tp, prev + 1, offset)  # compacted away: commit past it
                        batch.append(record)
                        prev = offset
                    if prev is not None:
                        set_read_offset(tp, prev)
                    continue
                for j, record in enumerate(recs):
                    if not current():
                        dropped[tp] = recs[j:]
                        break
                    offset = record.offset
                    if r_offset is not None and offset < r_offset:
                        continue
                    if r_offset and offset - r_offset > 1 and acks:
                        await consumer._add_gap(tp, r_offset + 1, offset)
                    await consumer.wait_first(callback(to_message(tp, record)), consumer.suspend_flow.wait())
                    if not current():
                        # the new generation's seek decides where this partition is read
                        dropped[tp] = recs[j + 1:]
                        break
                    set_read_offset(tp, offset)
                    r_offset = offset
            if batch and (not app.flow_control.is_active() or not current()):
                # A rebalance started while fetching: these partitions may no longer be ours and
                # Faust seeks back to the committed offsets; drop the batch unapplied, unacked.
                logger.info("rebalance during fetch: %d registrations left to the new owner", len(batch))
                _unread(consumer, batch)
                for record in batch:
                    dropped.setdefault(TP(record.topic, record.partition), []).append(record)
                batch = []
            if dropped:
                await rewind_dropped(consumer, dropped)
            if not batch:
                continue
            for start in range(0, len(batch), batch_size):  # at most batch_size per table write
                await _apply_acked(consumer, apply, batch[start:start + batch_size], deliveries)
            commit_every = consumer._commit_every
            if commit_every is not None and consumer._n_acked >= commit_every:
                consumer._n_acked = 0
                await consumer.commit()
    except consumer.consumer_stopped_errors:
        if app.should_stop:
            return
        raise
    except asyncio.CancelledError:
        if app.should_stop:
            return
        raise
    except Exception as exc:
        logger.exception("bulk drain raised: %r", exc)
        raise


def _current(consumer: Any, app: Any, generation: int) -> bool:
    """Whether records fetched in ``generation`` may still be handed on."""
    return bool(consumer.flow_active) and generation == app.consumer_generation_id


async def _raise(exc: BaseException, _count: int) -> None:
    raise exc
