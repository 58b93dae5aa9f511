"""astreg.patches.rewind on a real broker: a seek "to the committed offsets" after a fetch that was
dropped takes a partition the group never committed back to its beginning (aiokafka alone leaves
it at the end, and the records are lost)."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from astreg.patches.rewind import seek_to_committed_or_beginning
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics

pytestmark = pytest.mark.integration


async def _consumer(kafka: KafkaSettings, group: str, tps: list[TopicPartition]) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), group_id=group, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    consumer.assign(tps)
    return consumer


async def _drain(consumer: AIOKafkaConsumer, tp: TopicPartition, until: int) -> list[int]:
    """Offsets read from ``tp`` until its position reaches ``until`` (bounded by the fetches)."""
    seen: list[int] = []
    for _ in range(50):
        batches = await consumer.getmany(tp, timeout_ms=200)
        seen += [r.offset for r in batches.get(tp, [])]
        if await consumer.position(tp) >= until:
            break
    return seen


async def test_uncommitted_partitions_go_back_to_the_beginning(kafka: KafkaSettings, unique: str) -> None:
    topics = TopicSettings(partitions=2).with_suffix(unique)
    await ensure_topics(kafka, topics)
    topic = topics.topic_registrations
    tp0, tp1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs())
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=1)
    finally:
        await producer.stop()
    consumer = await _consumer(kafka, f"rewind-{unique}", [tp0, tp1])
    try:
        assert await _drain(consumer, tp0, 10) == list(range(10))
        assert await _drain(consumer, tp1, 10) == list(range(10))
        # The hazard: nothing committed, and aiokafka's seek leaves both partitions at the end.
        assert set((await consumer.seek_to_committed()).values()) == {None}
        assert (await consumer.position(tp0), await consumer.position(tp1)) == (10, 10)
        # The fix: back to the beginning, except what the caller keeps (Faust's changelogs).
        await seek_to_committed_or_beginning(consumer, skip=lambda tp: tp.partition == 1)
        assert (await consumer.position(tp0), await consumer.position(tp1)) == (0, 10)
        assert await _drain(consumer, tp0, 10) == list(range(10))
        # A committed offset is kept as it is.
        await consumer.commit({tp0: 4, tp1: 7})
        await seek_to_committed_or_beginning(consumer)
        assert (await consumer.position(tp0), await consumer.position(tp1)) == (4, 7)
    finally:
        await consumer.stop()
