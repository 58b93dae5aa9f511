"""The producer against the AMI simulator and the embedded broker: whatever happens (moves,
expiries, AMI link cuts, half-open links, a Kafka outage, kill -9), the topic plus the next
snapshot describe the simulator's truth exactly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from astreg.broker import EmbeddedBroker
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import topic_specs
from producers.node import NodeProducer, ProducerSettings
from producers.simulator import SimConfig, Simulator
from schemas.models import ContactStatus, DeviceState, EventKind, NodeEventKind, Source
from tests.support.topic_reader import Consumed, TopicReader, completed_snapshots, fold_contacts
from tests.support.wait import until

pytestmark = pytest.mark.integration

STATUS = {"NonQualified": ContactStatus.NON_QUALIFIED, "Reachable": ContactStatus.REACHABLE,
          "Unreachable": ContactStatus.UNREACHABLE}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(SimConfig(nodes=2, phones=12, ami_port=0, seed=3, initial="spread", security_events=True))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def producer_settings(sim: Simulator, node: str, **kw: Any) -> ProducerSettings:
    return ProducerSettings(ami=f"127.0.0.1:{sim.ports[node]}", ami_user="astreg", ami_secret="astreg",
                            heartbeat_interval=0.5, ping_timeout=1.0, linger_ms=1, **kw)


def truth_contacts(sim: Simulator, node: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    t = sim.truth()["nodes"][node]
    return {(c["endpoint"], c["uri"]): (STATUS[c["status"]], c["ip"], c["port"]) for c in t["contacts"]}


def folded(data: Consumed, node: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    return {k: (c["status"], c["ip"], c["port"]) for k, c in fold_contacts(data).get(node, {}).items()}


async def fresh_snapshot(p: NodeProducer, reader: TopicReader, node: str, timeout: float = 20) -> Consumed:
    """Ask for a snapshot and wait until its COMPLETE marker is on the topic."""
    before = len(completed_snapshots(reader.data, node))
    await asyncio.wait_for(p.connected.wait(), timeout)
    p.request_snapshot("test")
    return await reader.until(lambda d: len(completed_snapshots(d, node)) > before, timeout=timeout)


async def assert_matches_truth(sim: Simulator, reader: TopicReader, producers: dict[str, NodeProducer]) -> None:
    for node, p in producers.items():
        data = await fresh_snapshot(p, reader, node)
        assert folded(data, node) == truth_contacts(sim, node), node


async def test_registrations_moves_expiries_and_device_states(
    sim: Simulator, kafka: KafkaSettings, topics: TopicSettings
) -> None:
    producers = {n: NodeProducer(producer_settings(sim, n), kafka, topics) for n in ("node1", "node2")}
    reader = await TopicReader(kafka, topics).start()
    try:
        for p in producers.values():
            await p.start()
        await reader.until(lambda d: all(completed_snapshots(d, n) for n in producers))
        initial = fold_contacts(reader.data)
        assert {k: (c["status"], c["ip"], c["port"]) for k, c in initial["node1"].items()} == truth_contacts(sim, "node1")
        await sim.register("1001", "node2", user_agent="Polycom VVX")  # phone 1 lives on node1: now on both
        await sim.refresh("1003", "node1")
        await sim.move("1002", "node1")
        await sim.unregister("1005", "node1")
        await sim.expire("1004", "node2")
        await sim.qualify("1003", "node1", reachable=False)
        await sim.device_state("1007", "node1", "INUSE")
        await sim.call("1001", "1003")
        await sim.hangup("1001", "1003")
        data = await reader.until(lambda d: any(e.endpoint == "PJSIP/1005" and e.contact_status is ContactStatus.REMOVED
                                                for e in d.events())
                                  and any(e.endpoint == "PJSIP/1004" and e.node == "node2"
                                          and e.contact_status is ContactStatus.REMOVED for e in d.events()))
        # live events alone already give the truth (no snapshot needed for announced changes)
        await reader.until(
            lambda d: all(folded(d, n) == truth_contacts(sim, n) for n in producers), timeout=10,
            explain=lambda d: {n: (folded(d, n), truth_contacts(sim, n)) for n in producers
                               if folded(d, n) != truth_contacts(sim, n)})
        for node in producers:
            assert truth_contacts(sim, node)
            assert folded(reader.data, node) == truth_contacts(sim, node), node
        await assert_matches_truth(sim, reader, producers)
        data = reader.data
    finally:
        await reader.stop()
        for p in producers.values():
            await p.stop()
    live = [e for e in data.events() if e.source is Source.LIVE]
    ua = [e for e in live if e.endpoint == "PJSIP/1001" and e.node == "node2" and e.kind is EventKind.CONTACT]
    assert ua and ua[0].contact_status is ContactStatus.NON_QUALIFIED
    dev = [e.device_state for e in live if e.endpoint == "PJSIP/1007" and e.kind is EventKind.DEVICE]
    assert DeviceState.INUSE in dev
    # the snapshot rows carry what ContactStatus cannot: the user agent, the expiry
    snap_rows = [e for e in data.events() if e.source is Source.SNAPSHOT and e.kind is EventKind.CONTACT]
    assert any(e.user_agent == "Polycom VVX" for e in snap_rows)
    assert all(e.expires_at_ms for e in snap_rows)
    # per node: seq strictly increasing in each partition, keyed by endpoint, no duplicates of (epoch, seq)
    for node in producers:
        seqs = [(e.producer_epoch, e.seq) for e in data.events() if e.node == node]
        assert len(seqs) == len(set(seqs))
    for part in {p for p, *_ in data.registrations}:
        rows = sorted((r for r in data.registrations if r[0] == part), key=lambda r: r[1])
        for node in producers:
            s = [ev.seq for _p, _o, _k, ev in rows if ev.node == node]
            assert s == sorted(s)
        assert all(k == ev.endpoint.encode() for _p, _o, k, ev in rows)


@pytest.mark.parametrize("mode", ["close", "halfopen"])
async def test_ami_link_cut_heals_with_snapshot(
    mode: str, sim: Simulator, kafka: KafkaSettings, topics: TopicSettings
) -> None:
    p = NodeProducer(producer_settings(sim, "node1"), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        await sim.crash("node1", mode)
        await reader.until(lambda d: any(n.kind is NodeEventKind.AMI_DOWN for n in d.nodes), timeout=15)
        # changes while the link is down are never announced to the producer
        await sim.unregister("1001", "node1")
        await sim.register("1011", "node1")
        await sim.recover("node1")
        await reader.until(lambda d: any(n.kind is NodeEventKind.AMI_UP for n in d.nodes[1:]), timeout=20)
        await reader.until(lambda d: len(completed_snapshots(d, "node1")) >= 2, timeout=20)
        got = folded(reader.data, "node1")
        assert got == truth_contacts(sim, "node1")
        endpoints = {ep for ep, _uri in got}
        assert "PJSIP/1011" in endpoints and "PJSIP/1001" not in endpoints
    finally:
        await reader.stop()
        await p.stop()


async def recreate_topics(kafka: KafkaSettings, topics: TopicSettings) -> None:
    # The embedded broker is memory-only: a restarted one has no topics. Create them again, and
    # tolerate an auto-created one (the producer's metadata request may win the race).
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(s.name, s.partitions, 1, topic_configs=s.configs())
               for s in topic_specs(topics) if s.name not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def test_kafka_outage_buffers_and_resnapshots(
    sim: Simulator, own_broker: EmbeddedBroker, topics: TopicSettings, tmp_path: Any
) -> None:
    kafka = KafkaSettings(bootstrap=own_broker.bootstrap, embedded=True)
    await recreate_topics(kafka, topics)
    p = NodeProducer(producer_settings(sim, "node1"), kafka, topics)
    p.publisher._producer_kwargs["request_timeout_ms"] = 3000
    await p.start()
    try:
        reader = await TopicReader(kafka, topics).start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        await reader.stop()
        own_broker.stop()
        await sim.register("1011", "node1")
        await sim.unregister("1003", "node1")
        await sim.device_state("1005", "node1", "RINGING")
        await until(lambda: not p.publisher.kafka_up, 10, what="the producer to notice Kafka is down")
        assert p.publisher.depth > 0
        own_broker.start()
        await recreate_topics(kafka, topics)
        reader = await TopicReader(kafka, topics).start()
        try:
            data = await reader.until(lambda d: bool(completed_snapshots(d, "node1")), timeout=30)
            got = folded(data, "node1")
            assert got == truth_contacts(sim, "node1")
            assert "PJSIP/1011" in {ep for ep, _uri in got} and "PJSIP/1003" not in {ep for ep, _uri in got}
            # the buffered live events made it too, in order
            assert any(e.endpoint == "PJSIP/1005" and e.device_state is DeviceState.RINGING for e in data.events())
            assert p.metrics.send_errors._value.get() > 0
        finally:
            await reader.stop()
    finally:
        await p.stop()


async def test_kill9_and_restart_converges(
    sim: Simulator, kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Any
) -> None:
    argv = astreg_argv(
        "producer", "--ami", f"127.0.0.1:{sim.ports['node1']}", "--ami-user", "astreg",
        "--bootstrap", kafka.bootstrap, "--embedded", "--heartbeat-interval", "0.5",
        "--epoch-file", str(tmp_path / "epoch"),
        "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
        "--topic-deadletter", topics.topic_deadletter, "--topic-locations", topics.topic_locations,
    )
    reader = await TopicReader(kafka, topics).start()
    try:
        child = procs.start("producer", argv, env={"ASTREG_AMI_SECRET": "astreg"})
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")), timeout=30)
        first_epoch = completed_snapshots(reader.data, "node1")[0].producer_epoch
        child.kill9()
        await sim.unregister("1001", "node1")
        await sim.register("1009", "node1")
        await sim.move("1002", "node1")
        procs.start("producer2", argv, env={"ASTREG_AMI_SECRET": "astreg"})
        data = await reader.until(
            lambda d: any(s.producer_epoch > first_epoch for s in completed_snapshots(d, "node1")), timeout=30)
        got = folded(data, "node1")
        assert got == truth_contacts(sim, "node1")
        endpoints = {ep for ep, _uri in got}
        assert {"PJSIP/1009", "PJSIP/1002"} <= endpoints and "PJSIP/1001" not in endpoints
        # the killed process never said STOPPED; the new one got a strictly larger epoch
        assert not any(n.kind is NodeEventKind.STOPPED and n.producer_epoch == first_epoch for n in data.nodes)
    finally:
        await reader.stop()


async def test_split_writes_utf8_and_injected_faults(kafka: KafkaSettings, topics: TopicSettings) -> None:
    sim = Simulator(SimConfig(nodes=1, phones=6, ami_port=0, seed=5, initial="spread", split_writes=True,
                              endpoint_format="jörg€{n}"))
    await sim.start()
    p = NodeProducer(producer_settings(sim, "node1"), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        for fault in ("oversized", "missing_headers", "broken_utf8", "unknown_enum"):
            await sim.inject_fault("node1", fault)
        await sim.register(3, "node1", user_agent="Téléphone ☎ 电话")
        await sim.device_state(3, "node1", "RINGING")
        await reader.until(lambda d: len(d.deadletters) >= 4
                           and any(e.endpoint == "PJSIP/jörg€1003" and e.kind is EventKind.DEVICE for e in d.events()))
        data = await fresh_snapshot(p, reader, "node1")
        assert folded(data, "node1") == truth_contacts(sim, "node1")
        assert p.malformed == 4 and len(data.deadletters) == 4
    finally:
        await reader.stop()
        await p.stop()
        await sim.stop()
    reasons = sorted(h["astreg.reason"].decode().split(" ")[0] for _k, _v, h in data.deadletters)
    assert reasons == ["header", "header", "missing", "unknown"]  # oversize, bad UTF-8, missing, enum
    rows = [e for e in data.events() if e.endpoint == "PJSIP/jörg€1003" and e.source is Source.SNAPSHOT
            and e.kind is EventKind.CONTACT]
    assert rows and rows[-1].user_agent == "Téléphone ☎ 电话"


async def test_asterisk_restart_shutdown_booted_and_resnapshot(
    sim: Simulator, kafka: KafkaSettings, topics: TopicSettings
) -> None:
    p = NodeProducer(producer_settings(sim, "node1"), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        # Asterisk's boot time has a resolution of one second: the clock itself must move on for
        # the second boot time to be later (time passing, not a condition of the system).
        await asyncio.sleep(1.1)
        await sim.restart("node1")
        data = await reader.until(lambda d: any(n.kind is NodeEventKind.SHUTDOWN for n in d.nodes)
                                  and len(completed_snapshots(d, "node1")) >= 2, timeout=20)
        assert folded(data, "node1") == truth_contacts(sim, "node1")
    finally:
        await reader.stop()
        await p.stop()
    kinds = [n.kind for n in data.nodes]
    shutdown = kinds.index(NodeEventKind.SHUTDOWN)
    assert NodeEventKind.AMI_DOWN in kinds[shutdown:] and NodeEventKind.BOOTED in kinds[shutdown:]
    boots = [n.boot_time_ms for n in data.nodes if n.kind is NodeEventKind.BOOTED]
    assert boots[-1] is not None and boots[0] is not None and boots[-1] > boots[0]
