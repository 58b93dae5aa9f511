"""The agent inside Faust's test context: bytes in, table rows and published records out."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import location_codec, registration_codec
from schemas.models import ContactStatus, EventKind, RegistrationEvent, Source
from streams.app import StreamApp, create_app
from streams.settings import WorkerSettings


class Recorder:
    """Stands in for the producer's send: keeps (topic, key, value, headers) in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        self.sent.append((topic, key, value, headers))

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, Any]]:
        return [s for s in self.sent if s[0] == topic]


@pytest.fixture
def stream(tmp_path: Path, unique: str) -> StreamApp:
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", embedded=True)
    topics = TopicSettings(partitions=1).with_suffix(unique)
    s = create_app(kafka, topics, WorkerSettings(store="memory", data_dir=tmp_path, batch_within=0.01,
                                                 app_id=f"test-{unique}"))
    return s


def ev(node: str, seq: int, status: ContactStatus, uri: str = "sip:1001@h:5060", endpoint: str = "PJSIP/1001") -> bytes:
    return registration_codec().encode(RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=1, seq=seq, event_time_ms=seq, kind=EventKind.CONTACT,
        source=Source.LIVE, contact_uri=uri, contact_status=status))


async def feed(stream: StreamApp, records: list[tuple[bytes, bytes]]) -> Recorder:
    rec = Recorder()
    stream.outputs._send = rec
    agent = stream.agent
    async with agent.test_context() as ctx:
        # wait=False: let the agent take them as one batch, like a real fetch would deliver.
        for key, value in records:
            await ctx.put(value, key=key, wait=False)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if ctx.results and sum(ctx.results.values()) >= len(records):
                break
    return rec


async def test_registration_move_and_removal(stream: StreamApp) -> None:
    names = stream.topics.names
    rec = await feed(stream, [
        (b"PJSIP/1001", ev("A", 1, ContactStatus.NON_QUALIFIED, "sip:a")),
        (b"PJSIP/1001", ev("A", 2, ContactStatus.REACHABLE, "sip:a")),
        (b"PJSIP/1001", ev("B", 1, ContactStatus.NON_QUALIFIED, "sip:b")),
        (b"PJSIP/1001", ev("A", 2, ContactStatus.REACHABLE, "sip:a")),  # duplicate
        (b"PJSIP/1002", ev("A", 3, ContactStatus.NON_QUALIFIED, "sip:x", "PJSIP/1002")),
        (b"PJSIP/1002", ev("A", 4, ContactStatus.REMOVED, "sip:x", "PJSIP/1002")),
    ])
    codec = location_codec()
    published = {k: v for _, k, v, _ in rec.to(names.topic_locations)}
    loc = codec.decode(published[b"PJSIP/1001"])
    assert loc.primary_node == "B" and loc.nodes == ("B", "A")
    assert b"PJSIP/1002" not in published  # created and removed inside one batch: nothing to announce
    row = stream.locations["PJSIP/1001"]
    assert row.last_of("A") == (1, 2) and row.last_of("B") == (1, 1)
    assert stream.metrics.events.labels("duplicate")._value.get() == 1


async def test_removal_after_publication_is_a_tombstone(stream: StreamApp) -> None:
    names = stream.topics.names
    first = await feed(stream, [(b"PJSIP/1001", ev("A", 1, ContactStatus.NON_QUALIFIED))])
    assert first.to(names.topic_locations)[-1][2] is not None
    second = await feed(stream, [(b"PJSIP/1001", ev("A", 2, ContactStatus.REMOVED))])
    assert [(k, v) for _, k, v, _ in second.to(names.topic_locations)] == [(b"PJSIP/1001", None)]
    third = await feed(stream, [(b"PJSIP/1001", ev("A", 1, ContactStatus.NON_QUALIFIED))])  # replay
    assert third.to(names.topic_locations) == []


async def test_one_published_record_per_endpoint_and_batch(stream: StreamApp) -> None:
    names = stream.topics.names
    records = [(b"PJSIP/1001", ev("A", i, ContactStatus.REACHABLE if i % 2 else ContactStatus.NON_QUALIFIED))
               for i in range(1, 40)]
    rec = await feed(stream, records)
    assert 1 <= len(rec.to(names.topic_locations)) < 39


async def test_garbage_goes_to_dead_letters_and_valid_records_survive(stream: StreamApp) -> None:
    names = stream.topics.names
    rec = await feed(stream, [
        (b"PJSIP/1001", b"not avro at all"),
        (b"PJSIP/1001", b"\xc3\x01" + b"\x00" * 8 + b"junk"),
        (b"PJSIP/9", ev("A", 1, ContactStatus.NON_QUALIFIED, endpoint="")),  # missing endpoint
        (b"PJSIP/1001", ev("A", 5, ContactStatus.NON_QUALIFIED)),
        (b"PJSIP/1001", ev("A", 3, ContactStatus.REMOVED)),  # seq backwards in one epoch
        (b"PJSIP/other", ev("A", 6, ContactStatus.NON_QUALIFIED)),  # key is not the endpoint
    ])
    dead = rec.to(names.topic_deadletter)
    reasons = [dict(h)["astreg.reason"] for *_, h in dead]
    assert reasons == [b"undecodable", b"undecodable", b"missing_endpoint", b"seq_backwards", b"key_mismatch"]
    assert dead[0][2] == b"not avro at all"
    assert location_codec().decode(rec.to(names.topic_locations)[-1][2]).primary_node == "A"
