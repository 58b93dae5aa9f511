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

from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

__all__ = ["INTERNALS", "install", "seek_to_committed_or_beginning"]

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
