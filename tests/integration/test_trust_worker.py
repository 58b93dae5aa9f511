"""A worker against an attacker with produce rights, on the real broker: forged records are dead
letters with their reason, change nothing, and a node that never heartbeats is not trusted for ever."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import node_codec, registration_codec
from schemas.models import (
    ContactStatus,
    EventKind,
    LinkState,
    LocationStatus,
    NodeEventKind,
    NodeStatus,
    Source,
)
from tests.integration.test_stream_worker import ev, node
from tests.support.locations import produce, read_all, read_locations, start_worker, wait_for

pytestmark = pytest.mark.integration


async def test_forged_records_are_dead_letters_and_change_nothing(kafka: KafkaSettings, topics: TopicSettings,
                                                                  procs: ProcessGroup, tmp_path: Path) -> None:
    """Unsigned records of both topics: a removal of node A's contact, and a snapshot of A that
    would reconcile (remove) every contact A confirmed before it."""
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--tick", "0.5")
    uri = "sip:1001@10.0.0.1:5060"
    await produce(kafka, topics, [node("A", 1), ev("PJSIP/1001", "A", 2, ContactStatus.REACHABLE, uri)])
    await wait_for(lambda: _has(kafka, topics, "PJSIP/1001"), timeout=60)
    now = int(time.time() * 1000)
    forged_removal = registration_codec().encode(ev("PJSIP/1001", "A", 3, ContactStatus.REMOVED, uri))
    begin = NodeStatus(node="A", producer_epoch=1, seq=10, event_time_ms=now, kind=NodeEventKind.SNAPSHOT_BEGIN,
                       ami_link=LinkState.UP, snapshot_id="forged")
    complete = NodeStatus(node="A", producer_epoch=1, seq=11, event_time_ms=now,
                          kind=NodeEventKind.SNAPSHOT_COMPLETE, ami_link=LinkState.UP, snapshot_id="forged",
                          snapshot_begin_seq=10, snapshot_contacts=0)
    codec = node_codec()
    await produce(kafka, topics, [
        (topics.topic_registrations, b"PJSIP/1001", forged_removal),  # raw: no signature
        (topics.topic_nodes, b"A", codec.encode(begin)),
        (topics.topic_nodes, b"A", codec.encode(complete)),
        node("A", 12),  # signed: what the worker reads after the forged records
        ev("PJSIP/1002", "A", 13, ContactStatus.REACHABLE, "sip:1002@10.0.0.1:5060"),
    ])

    async def after() -> dict:
        locs = await read_locations(kafka, topics.topic_locations)
        return locs if "PJSIP/1002" in locs else {}

    locs = await wait_for(after, timeout=60)
    assert locs["PJSIP/1001"].primary_node == "A" and locs["PJSIP/1001"].contact_uri == uri
    dead = await wait_for(lambda: _dead(kafka, topics, 3), timeout=30)
    assert sorted((topic, reason) for topic, reason in dead) == [
        (topics.topic_nodes, b"unsigned"), (topics.topic_nodes, b"unsigned"),
        (topics.topic_registrations, b"unsigned")]
    synthetic = [registration_codec().decode(v) for _, v, _ in await read_all(kafka, topics.topic_registrations)
                 if v and v[:2] == b"\xc3\x01"]
    assert not [e for e in synthetic if e.source is Source.SYNTHETIC and e.kind is EventKind.RECONCILE]


async def test_a_node_that_never_heartbeats_goes_stale_and_is_removed(
        kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path) -> None:
    """Registrations of node G, which never writes a heartbeat: its contacts go stale after the
    node timeout and are removed after the grace, like any silent node's; B's stay."""
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--node-timeout", "2", "--node-grace", "4",
                 "--tick", "0.5")
    await produce(kafka, topics, [
        node("B", 1),
        ev("PJSIP/1001", "G", 1, ContactStatus.REACHABLE, "sip:g"),
        ev("PJSIP/1002", "B", 2, ContactStatus.REACHABLE, "sip:b"),
    ])
    seen_stale = False
    seq = 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    locs: dict = {}
    while loop.time() < deadline:
        seq += 1
        await produce(kafka, topics, [node("B", seq)])  # B keeps beating, G never did
        locs = await read_locations(kafka, topics.topic_locations)
        g = locs.get("PJSIP/1001")
        if g is not None and g.status is LocationStatus.STALE:
            seen_stale = True
            assert g.primary_node is None
        if seen_stale and "PJSIP/1001" not in locs:
            break
        await asyncio.sleep(0.5)  # B's heartbeat pace (and this bounded loop's poll interval)
    assert seen_stale, f"G's contact was never marked stale: {locs}"
    assert "PJSIP/1001" not in locs, "G's contact was not removed after the node grace"
    assert locs["PJSIP/1002"].primary_node == "B"


async def _has(kafka: KafkaSettings, topics: TopicSettings, endpoint: str) -> dict:
    locs = await read_locations(kafka, topics.topic_locations)
    return locs if endpoint in locs else {}


async def _dead(kafka: KafkaSettings, topics: TopicSettings, n: int) -> list[tuple[str, bytes]]:
    dead = [(dict(h)["astreg.source.topic"].decode(), dict(h)["astreg.reason"])
            for _, _, h in await read_all(kafka, topics.topic_deadletter)]
    return dead if len(dead) >= n else []
