"""The producer against a byte-exact scripted AMI server and the real (embedded) broker:
ordering, snapshots, split UTF-8, malformed input and dead letters, half-open links."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest

from astreg.broker import EmbeddedBroker
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics
from producers.node import NodeProducer, ProducerSettings
from schemas.models import ContactStatus, DeviceState, EventKind, NodeEventKind, Source
from tests.support.fake_ami import FakeAmi, contact_row
from tests.support.topic_reader import TopicReader, completed_snapshots
from tests.support.wait import until

pytestmark = pytest.mark.integration


@pytest.fixture
async def fake_ami() -> AsyncIterator[FakeAmi]:
    server = await FakeAmi(
        contacts=[contact_row("1001", "sip:1001@10.0.0.1:5060", user_agent="Yealink T46"),
                  contact_row("1002", "sip:1002@10.0.0.2:5060;transport=tcp"),
                  contact_row("1003", "sip:1003@10.0.0.3:5060", node="node2")],  # shared ps_contacts
        devices=[("PJSIP/1001", "NOT_INUSE"), ("PJSIP/1002", "INUSE"), ("Queue:q1", "INUSE")],
    ).start()
    try:
        yield server
    finally:
        await server.stop()


async def start_producer(fake: FakeAmi, kafka: KafkaSettings, topics: TopicSettings, **kw: object) -> NodeProducer:
    settings = ProducerSettings(ami=f"127.0.0.1:{fake.port}", ami_user="u", ami_secret="s",
                                heartbeat_interval=kw.pop("heartbeat_interval", 1.0), ping_timeout=1.0,
                                compression="lz4", linger_ms=1, **kw)
    p = NodeProducer(settings, kafka, topics)
    await p.start()
    return p


async def test_snapshot_then_live_events_in_order(fake_ami: FakeAmi, kafka: KafkaSettings, topics: TopicSettings) -> None:
    p = await start_producer(fake_ami, kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await reader.until(lambda d: completed_snapshots(d))
        await fake_ami.event(Event="ContactStatus", Privilege="system,all", SystemName="node1",
                             URI="sip:1001@10.0.0.1:5060", ContactStatus="Unreachable", AOR="1001",
                             EndpointName="1001", RoundtripUsec="0")
        await fake_ami.event(Event="ContactStatus", Privilege="system,all", SystemName="node1",
                             URI="sip:1004@10.0.0.4:5060", ContactStatus="NonQualified", AOR="1004",
                             EndpointName="1004", RoundtripUsec="0", Timestamp="1795742196.250000")
        await fake_ami.event(Event="DeviceStateChange", Privilege="call,all", Device="PJSIP/1004", State="RINGING")
        await fake_ami.event(Event="VarSet", Privilege="dialplan,all", Variable="X", Value="1")
        data = await reader.until(lambda d: any(e.endpoint == "PJSIP/1004" and e.kind is EventKind.DEVICE
                                                for e in d.events()))
    finally:
        await reader.stop()
        await p.stop()
    snap = completed_snapshots(data)[0]
    assert snap.node == "node1" and snap.snapshot_contacts == 2 and snap.snapshot_devices == 2
    begin = [n for n in data.nodes if n.kind is NodeEventKind.SNAPSHOT_BEGIN][0]
    assert snap.snapshot_begin_seq == begin.seq and begin.snapshot_id == snap.snapshot_id
    rows = [e for e in data.events() if e.source is Source.SNAPSHOT]
    assert {(e.endpoint, e.contact_uri) for e in rows if e.kind is EventKind.CONTACT} == {
        ("PJSIP/1001", "sip:1001@10.0.0.1:5060"), ("PJSIP/1002", "sip:1002@10.0.0.2:5060;transport=tcp")}
    assert all(begin.seq < e.seq < snap.seq and e.snapshot_id == snap.snapshot_id for e in rows)
    tcp = next(e for e in rows if e.endpoint == "PJSIP/1002" and e.kind is EventKind.CONTACT)
    assert (tcp.ip, tcp.port, tcp.transport) == ("10.0.0.2", 5060, "tcp")
    # keys are the endpoint id, per-partition order follows seq
    for _part, _off, key, ev in data.registrations:
        assert key == ev.endpoint.encode()
    by_part: dict[int, list[int]] = {}
    for part, _off, _key, ev in sorted(data.registrations, key=lambda r: (r[0], r[1])):
        by_part.setdefault(part, []).append(ev.seq)
    assert all(seqs == sorted(seqs) for seqs in by_part.values())
    live = sorted((e for e in data.events() if e.source is Source.LIVE), key=lambda e: e.seq)
    assert [(e.endpoint, e.kind) for e in live] == [
        ("PJSIP/1001", EventKind.CONTACT), ("PJSIP/1004", EventKind.CONTACT), ("PJSIP/1004", EventKind.DEVICE)]
    # the live event is enriched from the snapshot's ContactList row
    assert live[0].user_agent == "Yealink T46" and live[0].contact_status is ContactStatus.UNREACHABLE
    assert live[1].event_time_ms == 1795742196250
    assert live[2].device_state is DeviceState.RINGING
    assert all(e.seq > snap.seq for e in live)
    assert {n.kind for n in data.nodes} >= {NodeEventKind.AMI_UP, NodeEventKind.BOOTED}


async def test_utf8_split_across_reads_and_ordering(fake_ami: FakeAmi, kafka: KafkaSettings,
                                                    topics: TopicSettings) -> None:
    p = await start_producer(fake_ami, kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await reader.until(lambda d: completed_snapshots(d))
        # one byte per TCP write: every multi-byte character is split across reads
        frame = ("Event: DeviceStateChange\r\nPrivilege: call,all\r\nDevice: PJSIP/jörg-€😀\r\n"
                 "State: INUSE\r\n\r\n").encode()
        await fake_ami.push(frame, pause=0.001)
        for i in range(50):
            await fake_ami.event(Event="DeviceStateChange", Device=f"PJSIP/{2000 + i}",
                                 State="INUSE" if i % 2 else "NOT_INUSE")
        data = await reader.until(lambda d: sum(e.endpoint.startswith("PJSIP/20") for e in d.events()) == 50)
    finally:
        await reader.stop()
        await p.stop()
    assert any(e.endpoint == "PJSIP/jörg-€😀" for e in data.events())
    live = sorted((e for e in data.events() if e.endpoint.startswith("PJSIP/20")), key=lambda e: e.seq)
    assert [e.endpoint for e in live] == [f"PJSIP/{2000 + i}" for i in range(50)]  # arrival order kept
    assert data.deadletters == []


async def test_malformed_input_is_dead_lettered_and_nothing_valid_lost(
    fake_ami: FakeAmi, kafka: KafkaSettings, topics: TopicSettings
) -> None:
    p = await start_producer(fake_ami, kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await reader.until(lambda d: completed_snapshots(d))
        bad = [
            b"Event: ContactStatus\r\nURI: sip:1@h\r\nContactStatus: Reachable\r\nEndpointName: 10\xc3\r\n\r\n",
            b"Event: ContactStatus\r\nURI: sip:1@h\r\nContactStatus: Reachable\r\n\r\n",
            b"Event: ContactStatus\r\nURI: sip:1@h\r\nContactStatus: Exploded\r\nEndpointName: 1\r\n\r\n",
            b"Event: PeerStatus\r\nPeer: PJSIP/1\r\nPeerStatus: Reachable\r\nCause: " + b"x" * 9000 + b"\r\n\r\n",
            b"Event: DeviceStateChange\r\nDevice: PJSIP/\r\nState: INUSE\r\n\r\n",
            b"this is not AMI at all\r\n\r\n",
        ]
        for i, raw in enumerate(bad):
            await fake_ami.push(raw)
            await fake_ami.event(Event="DeviceStateChange", Device=f"PJSIP/{3000 + i}", State="INUSE")
        data = await reader.until(lambda d: len(d.deadletters) >= len(bad)
                                  and sum(e.endpoint.startswith("PJSIP/30") for e in d.events()) == len(bad))
        assert p.malformed == len(bad)
    finally:
        await reader.stop()
        await p.stop()
    reasons = [h["astreg.reason"].decode() for _k, _v, h in data.deadletters]
    assert any("UTF-8" in r for r in reasons) and any("missing header EndpointName" in r or "missing header AOR" in r
                                                      for r in reasons)
    assert any("unknown ContactStatus" in r for r in reasons) and any("longer than" in r for r in reasons)
    assert any("bad endpoint" in r for r in reasons) and any("without Event" in r for r in reasons)
    assert all(h["astreg.component"] == b"producer" for _k, _v, h in data.deadletters)
    assert all(k for k, _v, _h in data.deadletters)  # never an empty key
    # the original bytes travel as the value, invalid UTF-8 included
    assert any(v.endswith(b"EndpointName: 10\xc3") for _k, v, _h in data.deadletters)
    assert not any(e.endpoint in ("PJSIP/", "") for e in data.events())


async def test_half_open_link_is_detected_by_ping(fake_ami: FakeAmi, kafka: KafkaSettings,
                                                  topics: TopicSettings) -> None:
    p = await start_producer(fake_ami, kafka, topics, heartbeat_interval=0.5)
    reader = await TopicReader(kafka, topics).start()
    try:
        await fake_ami.wait_login(1)
        await reader.until(lambda d: completed_snapshots(d))
        fake_ami.answer_ping = False  # TCP stays open, nothing answers: a half-open link
        await reader.until(lambda d: any(n.kind is NodeEventKind.AMI_DOWN for n in d.nodes), timeout=15)
        fake_ami.answer_ping = True
        await fake_ami.wait_login(2, timeout=15)
        await reader.until(lambda d: len(completed_snapshots(d)) >= 2, timeout=15)
        await p.stop()
        data = await reader.until(lambda d: d.nodes[-1].kind is NodeEventKind.STOPPED)
    finally:
        await reader.stop()
        await p.stop()
    kinds = [n.kind for n in data.nodes]
    down = kinds.index(NodeEventKind.AMI_DOWN)
    assert NodeEventKind.AMI_UP in kinds[down:]
    heartbeats = [n for n in data.nodes if n.kind is NodeEventKind.HEARTBEAT]
    assert heartbeats and heartbeats[-1].asterisk_version == "22.10.1"
    assert kinds.count(NodeEventKind.STOPPED) == 1


async def test_md5_login_and_refused_secret_never_crash(fake_ami: FakeAmi, kafka: KafkaSettings,
                                                        topics: TopicSettings) -> None:
    p = await start_producer(fake_ami, kafka, topics, ami_md5=True)
    try:
        await fake_ami.wait_login(1)
        assert fake_ami.md5_logins == 1
    finally:
        await p.stop()
    fake_ami.secret = "changed"
    p = await start_producer(fake_ami, kafka, topics)
    try:
        await until(lambda: fake_ami.failed_logins >= 2, 10, what="two refused logins (a retry after the first)")
        assert fake_ami.logins == 1  # refused, retried, still alive
        assert not p.connected.is_set()
    finally:
        await p.stop()


async def test_kafka_stall_shorter_than_the_request_timeout_takes_a_fresh_snapshot(
    fake_ami: FakeAmi, own_broker: EmbeddedBroker, unique: str
) -> None:
    # The broker stops answering for 3 s: no send fails (request timeout 10 s), but heartbeats
    # were held back for longer than 2 intervals, so workers may have marked the node's contacts
    # stale; only a snapshot un-stales them (fault suite: a producer cut off from Kafka).
    kafka = KafkaSettings(bootstrap=own_broker.bootstrap, embedded=True)
    topics = TopicSettings(partitions=4).with_suffix(unique)
    await ensure_topics(kafka, topics)
    p = await start_producer(fake_ami, kafka, topics, heartbeat_interval=0.5)
    reader = await TopicReader(kafka, topics).start()
    try:
        await reader.until(lambda d: completed_snapshots(d))
        assert own_broker.proc is not None
        os.kill(own_broker.proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3)  # the stall itself: its length (shorter than the request timeout) is tested
        finally:
            os.kill(own_broker.proc.pid, signal.SIGCONT)
        data = await reader.until(lambda d: len(completed_snapshots(d)) >= 2, timeout=20)
    finally:
        await reader.stop()
        await p.stop()
    assert len(completed_snapshots(data)) >= 2, "no snapshot after Kafka stalled"
    assert p.publisher.dropped == 0
