"""Seek back to committed offsets, or to the beginning where the group committed none.

Faust seeks its consumer "to the committed offsets" after every rebalance and whenever a fetch
returned records while its flow was stopped (a rebalance began meanwhile): the records fetched
are dropped and read again from there. aiokafka's ``seek_to_committed`` moves only partitions
with a committed offset above 0; a partition the group never committed keeps its position,
which the dropped fetch has already moved to the end. Its records are then lost for good: seen
when a worker takes partitions back from a member that left right after joining, before the
first commit (the other member committed nothing either), so nothing is applied until the next
record arrives and everything before it is skipped.

:func:`install` makes Faust's aiokafka consumer thread seek those partitions to the beginning,
which is what ``auto_offset_reset="earliest"`` (the worker's setting) means for a partition
without a committed offset. Table changelog partitions are left alone: Faust's recovery seeks
them itself from the offsets its store keeps. Replays are harmless: the rules ignore what a row
already holds (``streams/rules.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

logger = logging.getLogger(__name__)

__all__ = ["INTERNALS", "install", "seek_to_committed_or_beginning", "rewind_dropped", "unread_positions"]

INTERNALS = [
    # the hook: what Faust's Consumer.perform_seek calls, in the consumer's thread
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed(self)",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed uses seek_to_committed",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._ensure_consumer(self)",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.consumer",
    "faust.transport.consumer:Consumer._is_changelog_tp(self, tp)",
    "faust.transport.consumer:Consumer.perform_seek uses seek_to_committed",
    # what it corrects: no seek for a partition without a committed offset above 0
    "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed uses if offset and offset > 0",
    # rewind_dropped: the app consumer's aiokafka thread, where its aiokafka consumer lives
    "faust.transport.consumer:ThreadDelegateConsumer._thread",
    "mode.threads:QueueServiceThread.call_thread(self, fun, *args, **kwargs)",
]


async def seek_to_committed_or_beginning(
    consumer: AIOKafkaConsumer, skip: Callable[[TopicPartition], bool] = lambda tp: False
) -> dict[TopicPartition, int | None]:
    """``consumer.seek_to_committed()``, then the beginning for every assigned partition without a
    committed offset above 0 (except those ``skip`` names). Returns the committed offsets."""
    committed: dict[TopicPartition, int | None] = await consumer.seek_to_committed()
    unset: Iterable[TopicPartition] = [tp for tp, offset in committed.items() if not offset and not skip(tp)]
    if unset:
        await consumer.seek_to_beginning(*unset)
    return committed


async def unread_positions(consumer: AIOKafkaConsumer, dropped: dict[TopicPartition, tuple[int, int]]) -> list[TopicPartition]:
    """Seek each partition of ``dropped`` (first, last offset of records taken from the consumer
    and then dropped unread) back to ``first``, if it is still assigned and still positioned
    right after ``last``: a partition sought meanwhile (by recovery, by a rebalance) keeps the
    newer position. Returns the partitions moved back."""
    assigned = consumer.assignment()
    moved = []
    for tp, (first, last) in dropped.items():
        if tp in assigned and await consumer.position(tp) == last + 1:
            consumer.seek(tp, first)
            moved.append(tp)
    return moved


async def rewind_dropped(app_consumer: Any, records: dict[Any, list[Any]]) -> list[TopicPartition]:
    """Give back records a fetch round took from Faust's consumer but did not hand on.

    aiokafka moves a partition's position past the records it returns. Faust drops a round's
    records when its flow stopped meanwhile and seeks "to the committed offsets", which puts the
    group's partitions back but not the table changelog's, which have none: recovery, which had
    just sought a changelog partition to where its store is, then waits for ever for records
    its consumer already took (seen: "No event received for active tp ... since recovery
    start", a worker never ready again after a rebalance). This seeks them back in the
    consumer's own thread (see :func:`unread_positions`)."""
    dropped = {TopicPartition(tp.topic, tp.partition): (recs[0].offset, recs[-1].offset)
               for tp, recs in records.items() if recs}
    if not dropped:
        return []
    thread = app_consumer._thread
    consumer = thread._ensure_consumer()
    moved: list[TopicPartition] = await thread.call_thread(unread_positions, consumer, dropped)
    if moved:
        logger.info("fetched during a rebalance and not handed on, read again: %s",
                    ", ".join(f"{tp.topic}[{tp.partition}] from {dropped[tp][0]}" for tp in sorted(moved)))
    return moved


def install() -> None:
    """Make Faust's aiokafka consumers seek uncommitted partitions to the beginning. Idempotent."""
    cls: Any = AIOKafkaConsumerThread
    if getattr(cls, "_astreg_rewinds", False):
        return

    async def seek_to_committed(self: Any) -> dict[TopicPartition, int | None]:
        consumer = self._ensure_consumer()
        changelog = self.consumer._is_changelog_tp
        return await self.call_thread(seek_to_committed_or_beginning, consumer, changelog)  # type: ignore[no-any-return]

    cls.seek_to_committed = seek_to_committed
    cls._astreg_rewinds = True
