"""Test helpers around the stream worker: produce inputs, fold the compacted locations topic.

Reusable by end-to-end tests: ``await read_locations(kafka, topic)`` returns endpoint →
EndpointLocation as a compacting consumer would see it (tombstones delete), reading up to the
fetch high watermark (ListOffsets is wrong on the embedded broker).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from astreg.auth import Keyring
from astreg.partition import partition_for as default_partition
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import location_codec, node_codec, registration_codec
from schemas.models import EndpointLocation, NodeStatus, RegistrationEvent

__all__ = ["read_locations", "read_all", "produce", "wait_for", "start_worker", "free_port", "topic_partitions"]


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (metadata asked again when the client has none for it yet)."""
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


async def read_all(kafka: KafkaSettings, topic: str, timeout: float = 2.0,
                   keyed_placement: bool = False) -> list[tuple[bytes | None, bytes | None, list]]:
    """Every record of a topic, partition by partition, up to the fetch high watermark.

    ``keyed_placement``: assert that every keyed record is in the partition Kafka's default
    partitioner gives its key (what a compacted topic's consumers rely on)."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = await topic_partitions(consumer, topic)
        out: list[tuple[bytes | None, bytes | None, list]] = []
        if not tps:  # the topic does not exist (yet)
            return out
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(done) < len(tps) and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                if keyed_placement:
                    wrong = [r.key for r in records if r.key is not None
                             and default_partition(r.key, len(tps)) != tp.partition]
                    assert not wrong, f"{topic}[{tp.partition}] holds keys of other partitions: {wrong[:5]}"
                out.extend((r.key, r.value, list(r.headers)) for r in records)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    done.add(tp)
        return out
    finally:
        await consumer.stop()


async def read_locations(kafka: KafkaSettings, topic: str) -> dict[str, EndpointLocation]:
    """Fold the compacted locations topic: the last value per endpoint, tombstones delete."""
    codec = location_codec()
    state: dict[str, EndpointLocation] = {}
    for key, value, _ in await read_all(kafka, topic, keyed_placement=True):
        assert key is not None
        if value is None:
            state.pop(key.decode(), None)
        else:
            state[key.decode()] = codec.decode(value, topic=topic)
    return state


def signed(kind: bytes, node: str, key: bytes, value: bytes, synthetic: bool = False) -> list[tuple[str, bytes]] | None:
    """The signature header the node's producer (or, ``synthetic``, the workers) would put on
    this record (the session's key)."""
    keyring = Keyring.from_env()
    return keyring.headers(kind, node, key, value, synthetic) if keyring is not None else None


async def produce(kafka: KafkaSettings, topics: TopicSettings,
                  records: Sequence[RegistrationEvent | NodeStatus | tuple[str, bytes | None, bytes]]) -> None:
    """Send events (keyed by endpoint), node statuses (keyed by node) or raw (topic, key, value)."""
    reg, nod = registration_codec(), node_codec()
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=kafka.idempotent)
    await producer.start()
    try:
        for r in records:
            if isinstance(r, RegistrationEvent):
                key, value = r.endpoint.encode(), reg.encode(r)
                await producer.send(topics.topic_registrations, value, key=key,
                                    headers=signed(b"registrations", r.node, key, value))
            elif isinstance(r, NodeStatus):
                key, value = r.node.encode(), nod.encode(r)
                await producer.send(topics.topic_nodes, value, key=key, partition=0,
                                    headers=signed(b"nodes", r.node, key, value))
            else:
                topic, key, value = r
                await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def wait_for(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.5) -> object:
    """Poll an async check until it returns something truthy (returned), else the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    result: object = None
    while loop.time() < deadline:
        result = await check()  # type: ignore[misc]
        if result:
            return result
        await asyncio.sleep(interval)  # poll interval; the caller asserts on the value returned
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_worker(procs: ProcessGroup, kafka: KafkaSettings, topics: TopicSettings, name: str, data_dir: Path,
                 *extra: str) -> object:
    """Start ``astreg worker`` for these topics (embedded flags follow ``kafka``)."""
    argv = astreg_argv(
        "worker", "--bootstrap", kafka.bootstrap, "--embedded" if kafka.embedded else "--no-embedded",
        "--partitions", str(topics.partitions),
        "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
        "--topic-locations", topics.topic_locations, "--topic-deadletter", topics.topic_deadletter,
        "--web-port", str(free_port()), "--data-dir", str(data_dir), "--worker-id", name, *extra,
    )
    return procs.start(name, argv)
