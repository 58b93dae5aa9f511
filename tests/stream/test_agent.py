"""The agent inside Faust's test context: bytes in, table rows and published records out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from astreg.errors import UndecodableRecord
from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import location_codec, registration_codec
from schemas.models import ContactStatus, EventKind, RegistrationEvent, Source
from streams.app import create_app
from streams.settings import WorkerSettings
from streams.stream_app import StreamApp
from tests.support.locations import signed as signed_as
from tests.support.wait import until


class Recorder:
    """Stands in for the producer's send: keeps (topic, key, value, headers) in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []

    async def __call__(self, topic: str, key: bytes | None, value: bytes | None, headers: Any) -> None:
        self.sent.append((topic, key, value, headers))

    def to(self, topic: str) -> list[tuple[str, bytes | None, bytes | None, Any]]:
        return [s for s in self.sent if s[0] == topic]


def make_stream(tmp_path: Path, unique: str, **batching: Any) -> StreamApp:
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", embedded=True)
    topics = TopicSettings(partitions=1).with_suffix(unique)
    return create_app(kafka, topics, WorkerSettings(store="memory", data_dir=tmp_path, app_id=f"test-{unique}",
                                                    **({"batch_within": 0.01} | batching)))


@pytest.fixture
def stream(tmp_path: Path, unique: str) -> StreamApp:
    return make_stream(tmp_path, unique)


T0 = int(time.time() * 1000)


def signed(key: bytes, value: bytes) -> list[tuple[str, bytes]] | None:
    """The header the record's node would sign it with (None for bytes that are no event)."""
    try:
        node = registration_codec().decode(value).node
    except UndecodableRecord:
        return None
    return signed_as(b"registrations", node, key, value)


def ev(node: str, seq: int, status: ContactStatus, uri: str = "sip:1001@h:5060", endpoint: str = "PJSIP/1001") -> bytes:
    return registration_codec().encode(RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=1, seq=seq, event_time_ms=T0 + seq, kind=EventKind.CONTACT,
        source=Source.LIVE, contact_uri=uri, contact_status=status))


_NEXT_OFFSET = [0]


async def feed(stream: StreamApp, records: list[tuple[bytes, bytes]]) -> tuple[Recorder, list[int]]:
    """Put ``records`` into the agent and wait until it has taken all of them; returns what was
    sent and the size of each batch the agent took (in order)."""
    rec = Recorder()
    stream.outputs._send = rec
    agent = stream.agent
    async with agent.test_context() as ctx:
        # One partition across feeds: offsets keep growing like a real log (a repeated offset is
        # a replay after a crash and is ignored by the rules).
        ctx.sent_offset = _NEXT_OFFSET[0]
        _NEXT_OFFSET[0] += len(records)
        # wait=False: let the agent take them as one batch, like a real fetch would deliver.
        for key, value in records:
            await ctx.put(value, key=key, headers=signed(key, value), wait=False)
        # The agent yields the size of every batch it applied.
        await until(lambda: sum(ctx.results.values()) >= len(records), 10,
                    what=f"the agent to apply {len(records)} records")
        batches = [ctx.results[i] for i in sorted(ctx.results)]
    return rec, batches


async def test_registration_move_and_removal(stream: StreamApp) -> None:
    names = stream.topics.names
    rec, _ = await feed(stream, [
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
    first, _ = await feed(stream, [(b"PJSIP/1001", ev("A", 1, ContactStatus.NON_QUALIFIED))])
    assert first.to(names.topic_locations)[-1][2] is not None
    second, _ = await feed(stream, [(b"PJSIP/1001", ev("A", 2, ContactStatus.REMOVED))])
    assert [(k, v) for _, k, v, _ in second.to(names.topic_locations)] == [(b"PJSIP/1001", None)]
    third, _ = await feed(stream, [(b"PJSIP/1001", ev("A", 1, ContactStatus.NON_QUALIFIED))])  # replay
    assert third.to(names.topic_locations) == []


BATCH = 13


def flapping(seq: int) -> ContactStatus:
    return ContactStatus.REACHABLE if seq % 2 else ContactStatus.NON_QUALIFIED


async def test_one_published_record_per_endpoint_and_batch(tmp_path: Path, unique: str) -> None:
    # Batches of exactly BATCH events: the agent hands a batch on as soon as it is full, and
    # ``batch_within`` is far longer than the test, so no timer cuts one short.
    stream = make_stream(tmp_path, unique, batch_size=BATCH, batch_within=30.0)
    names = stream.topics.names
    # Three endpoints taking turns, each flapping on every event of its own: every event changes
    # what consumers see, so each batch publishes each endpoint it touched exactly once, with the
    # state after its last event in that batch, in the order the batch first touched them.
    endpoints = [b"PJSIP/1001", b"PJSIP/1002", b"PJSIP/1003"]
    events = [(e, seq) for seq in range(1, 40) for e in endpoints]
    records = [(e, ev("A", seq, flapping(seq), uri=f"sip:{e.decode()[6:]}@h:5060", endpoint=e.decode()))
               for e, seq in events]
    rec, batches = await feed(stream, records)
    assert batches == [BATCH] * (len(records) // BATCH)  # 117 events: 9 full batches
    want: list[tuple[bytes, ContactStatus]] = []
    for start in range(0, len(events), BATCH):
        last: dict[bytes, ContactStatus] = {}
        for e, seq in events[start:start + BATCH]:
            last[e] = flapping(seq)
        want += last.items()
    codec = location_codec()
    got = [(k, codec.decode(v).contacts[0].status) for _, k, v, _ in rec.to(names.topic_locations)]
    assert len(got) == 9 * len(endpoints)
    assert got == want


async def test_garbage_goes_to_dead_letters_and_valid_records_survive(stream: StreamApp) -> None:
    names = stream.topics.names
    rec, _ = await feed(stream, [
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
