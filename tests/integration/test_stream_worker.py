"""The stream worker on a real broker: registrations in, locations topic out."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from astreg.broker import EmbeddedBroker
from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics
from schemas.codec import registration_codec
from schemas.models import (
    ContactStatus,
    EventKind,
    LinkState,
    LocationStatus,
    NodeEventKind,
    NodeStatus,
    RegistrationEvent,
    Source,
)
from tests.support.locations import produce, read_all, read_locations, start_worker, wait_for

pytestmark = pytest.mark.integration


def ev(endpoint: str, node: str, seq: int, status: ContactStatus, uri: str | None = None, epoch: int = 1) -> RegistrationEvent:
    return RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=epoch, seq=seq, event_time_ms=int(time.time() * 1000),
        kind=EventKind.CONTACT, source=Source.LIVE, contact_status=status,
        contact_uri=uri or f"sip:{endpoint.split('/')[1]}@10.0.0.{seq % 250}:5060",
    )


@pytest.mark.parametrize("ingest", ["bulk", "agent"])
async def test_register_move_unregister(kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup,
                                        tmp_path: Path, ingest: str) -> None:
    """Both ingest paths (astreg/patches/bulk.py and the Faust agent) give the same rows."""
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--ingest", ingest)
    uri_a, uri_b = "sip:1001@10.0.0.1:5060", "sip:1001@10.0.0.2:5060"
    await produce(kafka, topics, [
        ev("PJSIP/1001", "A", 1, ContactStatus.NON_QUALIFIED, uri_a),
        ev("PJSIP/1001", "A", 2, ContactStatus.REACHABLE, uri_a),
        ev("PJSIP/1002", "A", 3, ContactStatus.NON_QUALIFIED, "sip:1002@10.0.0.9:5060"),
        ev("PJSIP/1001", "B", 1, ContactStatus.NON_QUALIFIED, uri_b),  # moved to B
        ev("PJSIP/1001", "A", 4, ContactStatus.REACHABLE, uri_a),  # A qualifies its leftover
        ev("PJSIP/1002", "A", 5, ContactStatus.REMOVED, "sip:1002@10.0.0.9:5060"),
    ])

    async def check() -> dict:
        locs = await read_locations(kafka, topics.topic_locations)
        return locs if "PJSIP/1001" in locs and "PJSIP/1002" not in locs and len(locs["PJSIP/1001"].nodes) == 2 else {}

    locs = await wait_for(check, timeout=60)
    assert locs, "worker never published the expected rows"
    row = locs["PJSIP/1001"]
    assert row.primary_node == "B" and row.contact_uri == uri_b and row.status is LocationStatus.REGISTERED
    assert row.nodes == ("B", "A")


def node(name: str, seq: int, kind: NodeEventKind = NodeEventKind.HEARTBEAT, **kw: object) -> NodeStatus:
    return NodeStatus(node=name, producer_epoch=1, seq=seq, event_time_ms=int(time.time() * 1000), kind=kind,
                      ami_link=LinkState.UP, **kw)  # type: ignore[arg-type]


async def test_snapshot_reconciliation_and_dead_letters(kafka: KafkaSettings, topics: TopicSettings,
                                                       procs: ProcessGroup, tmp_path: Path) -> None:
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1")
    lost, kept = "sip:1001@10.0.0.1:5060", "sip:1001@10.0.0.7:5060"
    await produce(kafka, topics, [
        node("A", 1),
        ev("PJSIP/1001", "A", 2, ContactStatus.REACHABLE, lost),  # its Removed event gets lost
        ev("PJSIP/1001", "A", 3, ContactStatus.REACHABLE, kept),
        ev("PJSIP/1003", "A", 4, ContactStatus.REACHABLE, "sip:1003@h"),
        node("A", 10, NodeEventKind.SNAPSHOT_BEGIN, snapshot_id="s1"),
        RegistrationEvent(endpoint="PJSIP/1001", node="A", producer_epoch=1, seq=11, event_time_ms=int(time.time() * 1000),
                          kind=EventKind.CONTACT, source=Source.SNAPSHOT, contact_uri=kept,
                          contact_status=ContactStatus.REACHABLE, snapshot_id="s1"),
        (topics.topic_registrations, b"PJSIP/1001", b"\x00\x01garbage"),
        (topics.topic_nodes, b"A", b"not a node status"),
        ev("", "A", 12, ContactStatus.REACHABLE, "sip:x"),
        node("A", 13, NodeEventKind.SNAPSHOT_COMPLETE, snapshot_id="s1", snapshot_begin_seq=10, snapshot_contacts=1),
    ])

    async def check() -> dict:
        locs = await read_locations(kafka, topics.topic_locations)
        one = locs.get("PJSIP/1001")
        return locs if one is not None and len(one.contacts) == 1 and "PJSIP/1003" not in locs else {}

    locs = await wait_for(check, timeout=60)
    assert locs, f"snapshot did not reconcile: {await read_locations(kafka, topics.topic_locations)}"
    assert locs["PJSIP/1001"].contact_uri == kept
    dead = await read_all(kafka, topics.topic_deadletter)
    reasons = sorted(dict(h)["astreg.reason"] for _, _, h in dead)
    assert reasons == [b"missing_endpoint", b"undecodable", b"undecodable"]
    synthetic = [registration_codec().decode(v) for _, v, _ in await read_all(kafka, topics.topic_registrations)
                 if v and v[:2] == b"\xc3\x01"]
    assert {(e.endpoint, e.kind) for e in synthetic if e.source is Source.SYNTHETIC} == {
        ("PJSIP/1001", EventKind.RECONCILE), ("PJSIP/1003", EventKind.RECONCILE)}


async def test_silent_node_goes_stale_then_is_removed(kafka: KafkaSettings, topics: TopicSettings,
                                                     procs: ProcessGroup, tmp_path: Path) -> None:
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--node-timeout", "2", "--node-grace", "4",
                 "--tick", "0.5")
    await produce(kafka, topics, [
        node("A", 1), node("B", 1),
        ev("PJSIP/1001", "A", 2, ContactStatus.REACHABLE, "sip:a"),
        ev("PJSIP/1001", "B", 2, ContactStatus.REACHABLE, "sip:b"),  # moved to B: B primary
        ev("PJSIP/1002", "A", 3, ContactStatus.REACHABLE, "sip:a2"),
    ])
    seen_stale = False
    seq = 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    locs: dict = {}
    while loop.time() < deadline:
        seq += 1
        await produce(kafka, topics, [node("B", seq)])  # B keeps beating, A is silent
        locs = await read_locations(kafka, topics.topic_locations)
        two = locs.get("PJSIP/1002")
        if two is not None and two.status is LocationStatus.STALE:
            seen_stale = True
            assert two.primary_node is None and two.contacts[0].stale
        if seen_stale and "PJSIP/1002" not in locs and locs.get("PJSIP/1001") and locs["PJSIP/1001"].nodes == ("B",):
            break
        await asyncio.sleep(0.5)  # B's heartbeat pace (and this bounded loop's poll interval)
    assert seen_stale, f"A's contact was never marked stale: {locs}"
    assert "PJSIP/1002" not in locs, "A's contact was not removed after node_grace"
    assert locs["PJSIP/1001"].nodes == ("B",) and locs["PJSIP/1001"].primary_node == "B"


def many(prefix: str, n: int, node_name: str, seq0: int, status: ContactStatus) -> list[RegistrationEvent]:
    return [ev(f"PJSIP/{prefix}{i}", node_name, seq0 + i, status, f"sip:{prefix}{i}@{node_name}") for i in range(n)]


LAST_DIFF: list[object] = []  # (count, first ten) of (got, expected) primaries at the last check


def worker_story(child: object) -> str:
    """The lines of a worker's log that tell what its group and recovery did."""
    log = child.log()  # type: ignore[attr-defined]
    keep = ("Recovery", "rebalanc", "assigned", "Revoking", "ERROR", "Traceback", "Error", "ready")
    return "\n".join([line[:200] for line in log.splitlines() if any(k in line for k in keep)][-40:])


async def converged(kafka: KafkaSettings, topics: TopicSettings, expect: dict[str, str | None],
                    timeout: float = 60) -> dict:
    """Wait until the locations topic shows exactly ``expect`` (endpoint → primary node)."""

    async def check() -> dict:
        locs = await read_locations(kafka, topics.topic_locations)
        got = {k: v.primary_node for k, v in locs.items()}
        diff = {k: (got.get(k), expect.get(k)) for k in set(got) | set(expect) if got.get(k) != expect.get(k)}
        LAST_DIFF[:] = [len(diff), sorted(diff.items())[:10]]
        return locs if got == expect else {}

    return await wait_for(check, timeout=timeout)  # type: ignore[return-value]


async def test_worker_killed_and_restarted_converges(kafka: KafkaSettings, topics: TopicSettings,
                                                    procs: ProcessGroup, tmp_path: Path) -> None:
    w1 = start_worker(procs, kafka, topics, "w1", tmp_path / "w1")
    n = 200
    await produce(kafka, topics, many("k", n, "A", 1, ContactStatus.NON_QUALIFIED))
    assert await converged(kafka, topics, {f"PJSIP/k{i}": "A" for i in range(n)}), "first run did not converge"
    w1.kill9()  # type: ignore[attr-defined]
    # While it is down: half unregister, a quarter move to B, and old registrations are replayed.
    await produce(kafka, topics, [
        *many("k", n // 2, "A", 1000, ContactStatus.REMOVED),
        *many("k", n // 4, "B", 1, ContactStatus.NON_QUALIFIED)[: n // 4],
        *many("k", n // 2, "A", 1, ContactStatus.NON_QUALIFIED),  # replay: must not resurrect
    ])
    start_worker(procs, kafka, topics, "w1b", tmp_path / "w1")
    expect = {f"PJSIP/k{i}": ("B" if i < n // 4 else None if i < n // 2 else "A") for i in range(n)}
    expect = {k: v for k, v in expect.items() if v is not None}
    assert await converged(kafka, topics, expect), "restarted worker did not converge"


async def test_two_workers_share_partitions_and_one_leaving_hands_over(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path
) -> None:
    w1 = start_worker(procs, kafka, topics, "w1", tmp_path / "w1")
    w2 = start_worker(procs, kafka, topics, "w2", tmp_path / "w2")
    n = 200
    await produce(kafka, topics, many("k", n, "A", 1, ContactStatus.NON_QUALIFIED))
    assert await converged(kafka, topics, {f"PJSIP/k{i}": "A" for i in range(n)}), "two workers did not converge"
    w2.stop()  # type: ignore[attr-defined]
    # w1 now owns w2's partitions: it must have recovered their rows (else no tombstone, or a resurrection)
    await produce(kafka, topics, [
        *[e for i, e in enumerate(many("k", n, "A", 1000, ContactStatus.REMOVED)) if i % 2],
        *many("k", n, "A", 1, ContactStatus.NON_QUALIFIED),  # replays
        *[e for i, e in enumerate(many("k", n, "B", 1, ContactStatus.NON_QUALIFIED)) if i % 4 == 0],
    ])
    expect = {f"PJSIP/k{i}": ("B" if i % 4 == 0 else "A") for i in range(n) if i % 2 == 0}
    assert await converged(kafka, topics, expect, timeout=90), (
        f"partitions handed over lost rows: {LAST_DIFF}\n{worker_story(w1)}")


async def test_partitions_back_from_a_member_that_left_while_joining_lose_nothing(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path
) -> None:
    """w2 joins right after w1 applied the first registrations (nothing committed yet) and stops
    while joining: w1 gets its partitions back two rebalances later. A fetch dropped during those
    rebalances had moved their position to the end, and a seek "to the committed offsets" left
    them there (nothing committed): the second round was never applied on those partitions."""
    w1 = start_worker(procs, kafka, topics, "w1", tmp_path / "w1")
    n = 200
    await produce(kafka, topics, many("k", n, "A", 1, ContactStatus.NON_QUALIFIED))
    assert await converged(kafka, topics, {f"PJSIP/k{i}": "A" for i in range(n)}), "w1 did not converge"
    w2 = start_worker(procs, kafka, topics, "w2", tmp_path / "w2")
    deadline = time.monotonic() + 60
    while "Setting newly assigned partitions" not in w2.log():  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, w2.log()[-2000:]  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)  # poll interval of this bounded wait
    w2.stop()  # type: ignore[attr-defined]
    await produce(kafka, topics, [
        *[e for i, e in enumerate(many("k", n, "A", 1000, ContactStatus.REMOVED)) if i % 2],
        *[e for i, e in enumerate(many("k", n, "B", 1, ContactStatus.NON_QUALIFIED)) if i % 4 == 0],
    ])
    expect = {f"PJSIP/k{i}": ("B" if i % 4 == 0 else "A") for i in range(n) if i % 2 == 0}
    assert await converged(kafka, topics, expect, timeout=60), (
        f"partitions taken back lost registrations: {LAST_DIFF}\n{worker_story(w1)}")


async def test_broker_outage_longer_than_node_timeout_marks_nothing_stale(
    own_broker: EmbeddedBroker, unique: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    # Regression (fault suite, broker outage): while the broker was stopped no heartbeat could
    # reach the worker, its timer counted that as node silence and marked every contact of every
    # node STALE; nothing un-stales a contact but a later event of its node, so rows stayed
    # unroutable for ever.
    kafka = KafkaSettings(bootstrap=own_broker.bootstrap, embedded=True)
    topics = TopicSettings(partitions=4).with_suffix(unique)
    await ensure_topics(kafka, topics)
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--node-timeout", "2", "--tick", "0.5")
    await produce(kafka, topics, [node("A", 1), *many("k", 20, "A", 2, ContactStatus.REACHABLE)])
    seq = 100

    async def beat() -> None:
        nonlocal seq
        seq += 1
        await produce(kafka, topics, [node("A", seq)])

    async def registered() -> dict:
        await beat()
        locs = await read_locations(kafka, topics.topic_locations)
        ok = len(locs) == 20 and all(v.status is LocationStatus.REGISTERED for v in locs.values())
        return locs if ok else {}

    assert await wait_for(registered, timeout=60), "worker never published the rows"
    assert own_broker.proc is not None
    os.kill(own_broker.proc.pid, signal.SIGSTOP)  # 2.5 x node_timeout without any answer
    try:
        await asyncio.sleep(5)  # the outage itself, 2.5 x node_timeout: its length is what is tested
    finally:
        os.kill(own_broker.proc.pid, signal.SIGCONT)
    for _ in range(8):  # node A goes on beating: 2 x node_timeout after the outage
        await beat()
        await asyncio.sleep(0.5)  # heartbeat pace; the test checks nothing turns stale meanwhile
    synthetic = [e for e in (registration_codec().decode(v) for _, v, _ in
                             await read_all(kafka, topics.topic_registrations) if v)
                 if e.source is Source.SYNTHETIC]
    assert synthetic == [], f"the outage was taken for node silence: {synthetic[:3]}"
    locs = await read_locations(kafka, topics.topic_locations)
    assert {k: v.status for k, v in locs.items()} == {f"PJSIP/k{i}": LocationStatus.REGISTERED for i in range(20)}
