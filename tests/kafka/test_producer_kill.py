"""A producer killed with SIGKILL in the middle of a burst, restarted, with idempotence on (the
default on Apache Kafka): no record appended twice, none missing, counted against what the
simulator emitted.

Every record a producer writes carries its ``(producer_epoch, seq)``, one counter over all its
topics. So "none twice" is: no ``(epoch, seq)`` appears twice. "None missing": the epoch that
stopped cleanly has every seq from 1 on; the killed epoch lost only what it had not yet sent,
partition by partition (each partition's records are acknowledged in order, partitions
independently): for every phone, the burst's events on the topic are a prefix of what the
simulator emitted for it (unregister, register, unregister, ...), never one with a hole. The
next snapshot heals what was never sent, and every registration the simulator made after the
restart is there.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from producers.simulator import SimConfig, Simulator
from schemas.codec import Codec
from schemas.models import ContactStatus, EventKind, Source
from schemas.quality import QualitySample
from tests.support.locations import read_all
from tests.support.topic_reader import TopicReader, completed_snapshots, fold_contacts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PHONES = 300
ROUNDS = 4


async def test_producer_sigkill_mid_burst_no_duplicate_no_gap(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path
) -> None:
    sim = Simulator(SimConfig(nodes=1, phones=PHONES, ami_port=0, seed=7, initial="spread", security_events=False,
                              qualify_every=0))
    await sim.start()
    argv = astreg_argv(
        "producer", "--ami", f"127.0.0.1:{sim.ports['node1']}", "--ami-user", "astreg", "--node", "node1",
        "--heartbeat-interval", "0.5", "--epoch-file", str(tmp_path / "epoch"),
        "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
        "--topic-deadletter", topics.topic_deadletter, "--topic-locations", topics.topic_locations,
        "--topic-quality", topics.topic_quality,
    )
    env = {**kafka.env(), "ASTREG_AMI_SECRET": "astreg"}
    reader = await TopicReader(kafka, topics).start()
    try:
        first = procs.start("producer", argv, env=env)
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")), timeout=60)
        epoch1 = completed_snapshots(reader.data, "node1")[0].producer_epoch

        async def burst(rounds: int) -> None:
            for _ in range(rounds):
                for i in range(1, PHONES + 1):
                    await sim.unregister(i, "node1")
                    await sim.register(i, "node1", qualify=False)
                    if i % 50 == 0:
                        await asyncio.sleep(0)  # yield: the simulator flushes to its AMI client (pacing, not a wait)

        churn = asyncio.create_task(burst(ROUNDS))
        await reader.until(lambda d: sum(e.source is Source.LIVE and e.kind is EventKind.CONTACT
                                          for e in d.events()) >= 20, timeout=60)
        first.kill9()  # mid-burst: records in flight, some acknowledged, some not
        await churn
        second = procs.start("producer2", argv, env=env)
        await reader.until(lambda d: any(s.producer_epoch > epoch1 for s in completed_snapshots(d, "node1")),
                           timeout=60)
        epoch2 = max(s.producer_epoch for s in completed_snapshots(reader.data, "node1"))
        fresh = range(1, 41)  # unregistered and registered again after the restart
        for phone in fresh:
            await sim.unregister(phone, "node1")
            await sim.register(phone, "node1")
        want = {f"PJSIP/{1000 + p}" for p in fresh}

        def seen(d) -> bool:  # type: ignore[no-untyped-def]
            epoch2_events = [e for e in d.events() if e.producer_epoch == epoch2 and e.kind is EventKind.CONTACT
                             and e.source is Source.LIVE]
            removed = {e.endpoint for e in epoch2_events if e.contact_status is ContactStatus.REMOVED}
            added = {e.endpoint for e in epoch2_events if e.contact_status is not ContactStatus.REMOVED}
            return want <= removed and want <= added

        await reader.until(seen, timeout=30)
        truth = {c["endpoint"] for c in sim.truth()["nodes"]["node1"]["contacts"]}
        second.stop()
        await reader.until(lambda d: any(n.producer_epoch == epoch2 and n.kind.value == "STOPPED" for n in d.nodes),
                           timeout=30)
    finally:
        await reader.stop()
        await sim.stop()

    quality = Codec.for_model(QualitySample)  # qualify round trips: the same counter
    samples = [quality.decode(v) for _k, v, _h in await read_all(kafka, topics.topic_quality) if v is not None]
    stamps = [(e.producer_epoch, e.seq) for e in reader.data.events()] + \
             [(n.producer_epoch, n.seq) for n in reader.data.nodes] + \
             [(q.producer_epoch, q.seq) for q in samples]
    twice = [s for s, c in Counter(stamps).items() if c > 1]
    assert twice == [], f"appended twice: {twice[:10]}"
    seqs = sorted(s for e, s in stamps if e == epoch2)
    assert seqs == list(range(1, len(seqs) + 1)), f"epoch {epoch2}: gap after seq {_first_gap(seqs)}"
    # The killed epoch: per phone, the burst's statuses are a prefix of removed, added, removed, ...
    emitted = [ContactStatus.REMOVED, ContactStatus.NON_QUALIFIED] * ROUNDS
    burst_events: dict[str, list[ContactStatus]] = {}
    for e in reader.data.events():
        if e.producer_epoch == epoch1 and e.kind is EventKind.CONTACT and e.source is Source.LIVE:
            burst_events.setdefault(e.endpoint, []).append(e.contact_status)  # type: ignore[arg-type]
    holes = {ep: got for ep, got in burst_events.items() if got != emitted[: len(got)]}
    assert holes == {}, f"events missing in the middle: {list(holes.items())[:3]}"
    assert sum(map(len, burst_events.values())) > 0, "the kill came before the burst reached Kafka"
    assert sum(map(len, burst_events.values())) < len(emitted) * PHONES, "the kill came after the burst"
    # Each partition keeps the killed producer's order: seqs increase with offsets.
    for partition in {p for p, *_ in reader.data.registrations}:
        in_order = [e.seq for p, _o, _k, e in sorted(reader.data.registrations, key=lambda r: (r[0], r[1]))
                    if p == partition and e.producer_epoch == epoch1]
        assert in_order == sorted(in_order), f"partition {partition}: epoch {epoch1} out of order"
    # The restarted producer's snapshot healed what the killed one never sent: topic = truth.
    contacts = {ep for ep, _uri in fold_contacts(reader.data).get("node1", {})}
    assert contacts == truth


def _first_gap(seqs: list[int]) -> int | None:
    for want, have in enumerate(seqs, start=1):
        if want != have:
            return want - 1
    return None
