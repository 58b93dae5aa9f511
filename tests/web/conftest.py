"""Fixtures of the web tests: real ``astreg worker`` processes on the embedded broker, fed with
RegistrationEvents and NodeStatus records produced with aiokafka.

``web_cluster`` (session scope: started once, shared by the API and browser tests): two workers sharing 4 partitions
and 10,000 endpoints over three nodes (plus a few deliberately awkward rows). Everything started
here is stopped, even when a test fails (ProcessGroup context manager).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from astreg.proc import Child, ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics
from schemas.codec import node_codec, registration_codec
from schemas.models import (
    ContactStatus,
    DeviceState,
    EventKind,
    LinkState,
    NodeEventKind,
    NodeStatus,
    RegistrationEvent,
    Source,
)
from tests.conftest import ARTIFACTS, unique_name
from tests.support.locations import signed

NODES = ("node0", "node1", "node2")
SCRIPT_UA = "<script>document.title='pwned'</script><img src=x onerror=alert(1)>"
N_ENDPOINTS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Feeder:
    """Sends events like producers of the three nodes would: one (epoch, seq) counter per node."""

    kafka: KafkaSettings
    topics: TopicSettings
    seqs: dict[str, int] = field(default_factory=dict)
    epoch: int = field(default_factory=lambda: int(time.time() * 1000))

    def next_seq(self, node: str) -> int:
        self.seqs[node] = self.seqs.get(node, 0) + 1
        return self.seqs[node]

    def contact(self, endpoint: str, node: str, *, ip: str, ua: str | None = "Yealink SIP-T46S",
                status: ContactStatus = ContactStatus.REACHABLE, rtt_us: int = 800) -> RegistrationEvent:
        resource = endpoint.split("/", 1)[1]
        now = int(time.time() * 1000)
        return RegistrationEvent(
            endpoint=endpoint, node=node, producer_epoch=self.epoch, seq=self.next_seq(node), event_time_ms=now,
            kind=EventKind.CONTACT, source=Source.LIVE, contact_uri=f"sip:{resource}@{ip}:5060", aor=resource,
            contact_status=status, ip=ip, port=5060, transport="udp", user_agent=ua, rtt_us=rtt_us,
            expires_at_ms=now + 3_600_000,
        )

    def device(self, endpoint: str, node: str, state: DeviceState) -> RegistrationEvent:
        return RegistrationEvent(
            endpoint=endpoint, node=node, producer_epoch=self.epoch, seq=self.next_seq(node),
            event_time_ms=int(time.time() * 1000), kind=EventKind.DEVICE, source=Source.LIVE, device_state=state,
        )

    def heartbeat(self, node: str) -> NodeStatus:
        return NodeStatus(
            node=node, producer_epoch=self.epoch, seq=self.next_seq(node), event_time_ms=int(time.time() * 1000),
            kind=NodeEventKind.HEARTBEAT, ami_link=LinkState.UP, heartbeat_interval_ms=5000,
            asterisk_version="22.10.1",
        )

    async def send(self, records: Sequence[RegistrationEvent | NodeStatus]) -> None:
        from aiokafka import AIOKafkaProducer

        reg, nod = registration_codec(), node_codec()
        producer = AIOKafkaProducer(**self.kafka.aiokafka_kwargs(), enable_idempotence=self.kafka.idempotent,
                                    linger_ms=5)
        await producer.start()
        try:
            for r in records:
                if isinstance(r, RegistrationEvent):
                    key, value = r.endpoint.encode(), reg.encode(r)
                    await producer.send(self.topics.topic_registrations, value, key=key,
                                        headers=signed(b"registrations", r.node, key, value))
                else:
                    key, value = r.node.encode(), nod.encode(r)
                    await producer.send(self.topics.topic_nodes, value, key=key, partition=0,
                                        headers=signed(b"nodes", r.node, key, value))
            await producer.flush()
        finally:
            await producer.stop()


@dataclass
class Worker:
    child: Child
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    kafka: KafkaSettings
    topics: TopicSettings
    procs: ProcessGroup
    feeder: Feeder
    workers: list[Worker]
    token: str | None = None
    expected: dict[str, dict[str, object]] = field(default_factory=dict)

    def start_worker(self, name: str, data_dir: Path, token: str | None = None, store: str = "memory") -> Worker:
        port = free_port()
        argv = astreg_argv(
            "worker", "--bootstrap", self.kafka.bootstrap, "--embedded" if self.kafka.embedded else "--no-embedded",
            "--partitions", str(self.topics.partitions),
            "--topic-registrations", self.topics.topic_registrations, "--topic-nodes", self.topics.topic_nodes,
            "--topic-locations", self.topics.topic_locations, "--topic-deadletter", self.topics.topic_deadletter,
            "--web-port", str(port), "--data-dir", str(data_dir), "--worker-id", name, "--store", store,
            "--node-timeout", "600", "--app-id", f"astreg-web-{self.topics.topic_registrations}",
        )
        worker = Worker(self.procs.start(name, argv, env={"ASTREG_API_TOKEN": token or ""}), port)
        self.workers.append(worker)
        return worker

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


async def wait_ready(session: aiohttp.ClientSession, workers: list[Worker], partitions: int,
                     timeout: float = 60) -> None:
    """Until every worker says /readyz 200 and together they own each of the ``partitions``
    exactly once (a dead member's partitions count only once they are reassigned)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: list[object] = []
    while loop.time() < deadline:
        last = []
        for w in workers:
            if not w.child.alive():
                raise AssertionError(f"worker {w.child.name} died:\n{w.child.log()[-3000:]}")
            try:
                async with session.get(f"{w.url}/readyz") as r:
                    last.append((r.status, await r.json()))
            except aiohttp.ClientError as exc:
                last.append(repr(exc))
        if all(isinstance(x, tuple) and x[0] == 200 for x in last):
            parts = [p for x in last for p in x[1]["partitions"]]  # type: ignore[index]
            if sorted(parts) == list(range(partitions)):
                return
        await asyncio.sleep(0.5)  # poll interval of this bounded wait
    stories = []
    for w, answer in zip(workers, last, strict=False):
        if not (isinstance(answer, tuple) and answer[0] == 200):
            lines = [ln[:200] for ln in w.child.log().splitlines()
                     if any(k in ln for k in ("Recovery", "rebalanc", "assigned", "Revoking", "ERROR", "Error"))]
            stories.append(f"--- {w.child.name}:\n" + "\n".join(lines[-30:]))
    raise AssertionError(f"workers not ready in {timeout}s: {last}\n" + "\n".join(stories))


async def wait_total(session: aiohttp.ClientSession, cluster: Cluster, total: int, timeout: float = 90,
                     **params: str) -> dict[str, object]:
    """Until the list API counts ``total`` endpoints (the workers have applied the feed)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while loop.time() < deadline:
        try:
            async with session.get(f"{cluster.workers[0].url}/api/v1/endpoints",
                                   params={"limit": "1", **params}, headers=cluster.headers()) as r:
                last = (r.status, await r.json())
                if r.status == 200 and last[1]["total"] == total:  # type: ignore[index]
                    return last[1]  # type: ignore[no-any-return,index]
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.5)  # poll interval of this bounded wait
    raise AssertionError(f"list never reached {total} rows: {last}")


def build_feed(feeder: Feeder, n: int) -> tuple[list[RegistrationEvent | NodeStatus], dict[str, dict[str, object]]]:
    """10,000 phones over three nodes; every 7th INUSE; a SIP/ twin for 10005; a script user agent."""
    records: list[RegistrationEvent | NodeStatus] = [feeder.heartbeat(n_) for n_ in NODES]
    expected: dict[str, dict[str, object]] = {}
    for i in range(n):
        endpoint = f"PJSIP/{10000 + i}"
        node = NODES[i % 3]
        ua = SCRIPT_UA if i == 42 else f"Yealink SIP-T46S {i % 5}"
        ip = f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}"
        records.append(feeder.contact(endpoint, node, ip=ip, ua=ua, rtt_us=100 + i))
        device = DeviceState.UNKNOWN  # no DeviceStateChange seen yet
        if i % 7 == 0:
            device = DeviceState.INUSE
            records.append(feeder.device(endpoint, node, device))
        expected[endpoint] = {"node": node, "ip": ip, "ua": ua, "device": device.value}
    records.append(feeder.contact("SIP/10005", "node1", ip="192.168.7.5", ua="chan_sip phone"))
    expected["SIP/10005"] = {"node": "node1", "ip": "192.168.7.5", "ua": "chan_sip phone", "device": "UNKNOWN"}
    return records, expected


@pytest.fixture(scope="session")
def web_cluster(kafka: KafkaSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two workers, 4 partitions, 10,001 endpoints applied (started once per session)."""
    tmp = tmp_path_factory.mktemp("webcluster")
    topics = TopicSettings(partitions=4).with_suffix(unique_name("w"))
    asyncio.run(ensure_topics(kafka, topics))
    procs = ProcessGroup(log_dir=tmp / "logs")
    cluster = Cluster(kafka, topics, procs, Feeder(kafka, topics), [])
    try:
        cluster.start_worker("w1", tmp / "w1")
        cluster.start_worker("w2", tmp / "w2")
        records, cluster.expected = build_feed(cluster.feeder, N_ENDPOINTS)

        async def prepare() -> None:
            await cluster.feeder.send(records)
            async with aiohttp.ClientSession() as session:
                await wait_ready(session, cluster.workers, topics.partitions)
                await wait_total(session, cluster, len(cluster.expected))

        try:
            asyncio.run(prepare())
        except BaseException:
            shutil.copytree(tmp / "logs", ARTIFACTS / "web_cluster", dirs_exist_ok=True)
            raise
        yield cluster
    finally:
        procs.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
