"""Two producers started with the same node id: the older one is fenced, as Kafka fences an older
producer of a transactional id. It stops with a clear error and exit status 3 (the systemd unit
does not restart it), and the newer one goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from producers.cli import FENCED_EXIT
from producers.simulator import SimConfig, Simulator
from tests.support.topic_reader import TopicReader, completed_snapshots
from tests.support.wait import until

pytestmark = pytest.mark.integration


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(SimConfig(nodes=1, phones=4, ami_port=0, seed=7, initial="spread"))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


async def test_a_second_producer_for_a_node_id_fences_the_first(
        sim: Simulator, kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path) -> None:
    argv = astreg_argv(
        "producer", "--ami", f"127.0.0.1:{sim.ports['node1']}", "--ami-user", "astreg", "--node", "node1",
        "--bootstrap", kafka.bootstrap, "--embedded" if kafka.embedded else "--no-embedded",
        "--heartbeat-interval", "0.5", "--metrics-port", "0",
        "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
        "--topic-deadletter", topics.topic_deadletter, "--topic-locations", topics.topic_locations,
    )
    env = {"ASTREG_AMI_SECRET": "astreg"}
    reader = await TopicReader(kafka, topics).start()
    try:
        first = procs.start("producer-first", argv, env=env)
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")), timeout=60)
        first_epoch = completed_snapshots(reader.data, "node1")[0].producer_epoch
        second = procs.start("producer-second", argv, env=env)
        await until(lambda: not first.alive(), 60, what="the first producer to stop itself")
        assert first.proc.returncode == FENCED_EXIT
        assert "producer fenced" in first.log() and f"(epoch {first_epoch})" in first.log()
        data = await reader.until(
            lambda d: any(s.producer_epoch > first_epoch for s in completed_snapshots(d, "node1")), timeout=60)
        assert second.alive()
        newer = max(s.producer_epoch for s in completed_snapshots(data, "node1"))
        # the fenced producer said nothing after it stopped: no STOPPED record in its name
        assert not [n for n in data.nodes if n.producer_epoch == first_epoch and n.kind.value == "STOPPED"]
        assert newer > first_epoch
    finally:
        await reader.stop()
