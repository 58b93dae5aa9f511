"""Fault-injection suite: during a steady load, break one thing at a time, then check that every
store converges to the simulator's truth with nothing lost, and record how long it took.

Run alone with ``make test-faults`` (``pytest -m faults``). One pipeline per broker serves the
module (3 simulated nodes, a producer per node, two workers with RocksDB state, the SQL sink on
PostgreSQL and the Redis sink): first on the embedded broker, then on a three-broker Apache Kafka
cluster (KRaft, every topic at replication factor 3 and min.insync.replicas 2), where the
cluster's own faults run too (the leader of the busiest partition killed, a rolling restart,
two brokers down). Faults run in order and each starts from a converged state. Convergence times
and counts go to ``test-artifacts/faults.json`` (keyed "<broker>: <fault>") and are printed.

Decisions: on the embedded broker the broker outage is SIGSTOP/SIGCONT (it is memory-only: a real
restart would test a total data loss no Kafka deployment has); PostgreSQL and Redis are really
stopped and started (this suite runs serially, never beside other tests), and a stop or start
command that fails, or a service still answering after its stop, fails the test: an outage that
did not happen must not pass. The load runs in a thread; whatever it raises is re-raised in the
test when the load stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from astreg.broker import EmbeddedBroker, free_port
from astreg.kafka import ApacheKafka
from astreg.proc import Child, ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.tools.e2e import primaries
from astreg.topics import ensure_topics
from tests.conftest import ARTIFACTS, PG_ADMIN, REDIS_URL, TEST_BROKER_CONFIG, unique_name
from tests.support.netns import Host, service_address
from tests.support.netns import available as netns_available
from tests.support.truth import diff
from tests.support.wait import until_sync

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

PHONES = 240
CONVERGE_TIMEOUT = 120.0
RESULTS: dict[str, Any] = {}
CLOCK_SKEW = 0.5  # seconds, the workers' --max-clock-skew (see where the workers start)
SERVICES = Path(__file__).resolve().parents[2] / "deploy" / "dev" / "services.sh"
MOVE_AGAIN = 10.0  # seconds before the load moves the same phone again (see Load._run)
SLOW: dict[str, Any] = {}  # fault -> the endpoints still wrong after 5 s, truth and worker view


def _pg(sql: str, db: str = "test") -> list[tuple[Any, ...]]:
    import asyncpg

    async def go() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + f"/{db}", timeout=3)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(go())


@dataclass
class Stack:
    kind: str  # "embedded" or "apache3"
    broker: EmbeddedBroker | None
    cluster: ApacheKafka | None
    kafka: KafkaSettings
    topics: TopicSettings
    procs: ProcessGroup
    control: str
    sim: Child
    db: str
    redis_prefix: str
    children: dict[str, Child] = field(default_factory=dict)
    web: dict[str, str] = field(default_factory=dict)  # worker name -> base URL of its web API
    hosts: dict[str, Host] = field(default_factory=dict)  # simulated hosts (apache3): "p1", "w2"
    load: Load = field(init=False)

    def __post_init__(self) -> None:
        self.load = Load(self)

    def truth(self) -> dict[str, Any]:
        return httpx.get(f"{self.control}/truth", timeout=10).json()  # type: ignore[no-any-return]

    def action(self, op: str, **params: Any) -> None:
        r = httpx.post(f"{self.control}/action", json={"op": op, "params": params}, timeout=30)
        assert r.status_code == 200, r.text

    def explain(self, want: dict[str, str], got: dict[str, str | None]) -> list[dict[str, Any]]:
        """For up to 5 endpoints the pipeline has wrong: the simulator's contacts and the worker's row."""
        truth = self.truth()
        out = []
        for ep in sorted(e for e in want if want[e] != got.get(e))[:5]:
            contacts = {n: [c for c in info["contacts"] if c["endpoint"] == ep] for n, info in truth["nodes"].items()}
            row: Any = None
            for base in self.web.values():
                try:
                    r = httpx.get(f"{base}/api/v1/endpoints/{quote(ep, safe='')}", timeout=2)
                    row = r.json() if r.status_code == 200 else r.status_code
                    break
                except httpx.HTTPError as exc:
                    row = str(exc)
            out.append({"endpoint": ep, "want": want[ep], "got": got.get(ep), "truth": contacts, "worker": row})
        return out

    def node_views(self) -> dict[str, dict[str, Any]]:
        """What the workers say about each node (``/api/v1/nodes``); empty while none answers."""
        for base in self.web.values():
            try:
                r = httpx.get(f"{base}/api/v1/nodes", timeout=5)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                return {n["node"]: n for n in r.json()["nodes"]}
        return {}

    def sql_nodes(self) -> dict[str, str | None]:
        try:
            return dict(_pg("SELECT endpoint, node FROM astreg_locations", self.db))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - PostgreSQL may be the thing that is down
            return {}

    def redis_nodes(self) -> dict[str, str | None]:
        try:
            client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
            out = {}
            for key in client.scan_iter(match=f"{self.redis_prefix}loc:*", count=1000):
                ep = key.decode()[len(self.redis_prefix) + 4:]
                node = client.hget(key, "node")
                out[ep] = node.decode() if isinstance(node, bytes) and node else None
            client.close()
            return out
        except redis.RedisError:
            return {}

    def converge(self, name: str, live_only: bool = False, timeout: float = CONVERGE_TIMEOUT) -> float:
        """Seconds until PostgreSQL and Redis both equal the truth; fails with the differences."""
        start = time.monotonic()
        problems: list[str] = []
        while time.monotonic() - start < timeout:
            want = primaries(self.truth(), live_only=live_only)
            sql, red = self.sql_nodes(), self.redis_nodes()
            problems = [f"sql: {p}" for p in diff(want, sql)] + [f"redis: {p}" for p in diff(want, red)]
            if problems and time.monotonic() - start > 5 and f"{self.kind}: {name}" not in SLOW:
                SLOW[f"{self.kind}: {name}"] = self.explain(want, sql)  # what a slow convergence was waiting for
            if not problems:
                took = time.monotonic() - start
                RESULTS[f"{self.kind}: {name}"] = round(took, 2)
                return took
            time.sleep(0.25)  # poll interval of this convergence loop
        logs = {n: c.log()[-1500:] for n, c in self.children.items()}
        pytest.fail(f"{name}: no convergence in {timeout}s; {len(problems)} differences, e.g. {problems[:8]}\n"
                    f"logs: {json.dumps(logs, indent=1)[:6000]}")


class Load:
    """Steady load: a phone moves to another node every 100 ms, in a thread, from :meth:`start`
    to :meth:`stop`.

    The simulator's control API is never part of a fault, so any error there (an HTTP failure, a
    refused action) is a real one: it ends the load and :meth:`stop` re-raises it in the test.
    """

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.rng = random.Random(5)  # one sequence over the whole module, as one long-running load
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fault-load", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nodes = ["node1", "node2", "node3"]
        moved: dict[int, float] = {}
        try:
            while not self._stop.is_set():
                # A phone moves again only after MOVE_AGAIN seconds: two registrations of one
                # phone closer than the clock skew cannot be ordered once learned late (SPEC item
                # 3: within the skew, partition order decides), and real phones do not fail over
                # twice within seconds.
                now = time.monotonic()
                phone = self.rng.randint(1, PHONES)
                if now - moved.get(phone, -MOVE_AGAIN) >= MOVE_AGAIN:
                    moved[phone] = now
                    self.stack.action("move", phone=phone, to_node=self.rng.choice(nodes))
                self._stop.wait(0.1)  # the pace of the load, not a wait for a condition
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread by stop()
            self._error = exc

    def stop(self) -> None:
        """End the load, wait for its last action to finish, and re-raise what the thread raised."""
        error = self.halt()
        if error is not None:
            raise error

    def halt(self) -> BaseException | None:
        """End the load and wait for it; returns what the thread raised (None: nothing)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return None
        self._stop.set()
        thread.join(timeout=60)
        if thread.is_alive():
            return AssertionError("the load thread did not stop within 60 s (a control request hangs)")
        error, self._error = self._error, None
        return error


BROKERS = ["embedded", "apache3"]


@pytest.fixture(scope="module", params=BROKERS)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    kind = request.param
    work = tmp_path_factory.mktemp(f"faults-{kind}")
    db = unique_name("faults")
    _pg(f'CREATE DATABASE "{db}"')
    broker: EmbeddedBroker | None = None
    cluster: ApacheKafka | None = None
    network = contextlib.ExitStack()
    hosts: dict[str, Host] = {}
    addr = "127.0.0.1"
    if kind == "embedded":
        broker = EmbeddedBroker(log_file=work / "broker.log").start()
        kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    else:
        # node1's producer and worker2 run on hosts of their own (network namespaces), whose
        # link the network faults cut or degrade; the brokers and the simulator listen on the
        # service address every host reaches.
        reason = netns_available()
        if reason is not None:
            pytest.fail(f"the network faults need network namespaces: {reason}")
        addr = network.enter_context(service_address())
        hosts = {"p1": network.enter_context(Host("p1", 41)), "w2": network.enter_context(Host("w2", 42))}
        cluster = ApacheKafka(brokers=3, host=addr, data_dir=work / "kafka", config=TEST_BROKER_CONFIG,
                              heap="384m").start()
        kafka = cluster.client_settings(embedded=False)
    topics = TopicSettings(partitions=4)
    asyncio.run(ensure_topics(kafka, topics))  # RF 3 and min.insync.replicas 2 on three brokers
    procs = ProcessGroup(log_dir=work / "logs", env={
        "ASTREG_BOOTSTRAP": kafka.bootstrap, "ASTREG_EMBEDDED": "1" if kafka.embedded else "0",
        "ASTREG_PARTITIONS": "4", "ASTREG_HEARTBEAT_INTERVAL": "1", "ASTREG_NODE_TIMEOUT": "6",
        "ASTREG_LOG_LEVEL": "INFO"})
    prefix = f"{db}:"
    s: Stack | None = None
    try:
        # Timestamps as deploy/asterisk/manager.conf sets them (timestampevents = yes); the journal
        # of what each AMI session was sent is what test_every_ami_event_accounted_for checks.
        sim = procs.start("simulator", astreg_argv("simulate", "--nodes", "3", "--phones", str(PHONES),
                                                   "--ami-port", "0", "--control-port", "0", "--host", addr,
                                                   "--timestamps", "--journal"))
        until_sync(lambda: re.search(r"^control=", sim.log(), re.M), 60, interval=0.1,
                   what="the simulator to print its control address")
        ami = dict(re.findall(r"^ami=(\S+)@(\S+)$", sim.log(), re.M))
        control = re.search(r"^control=(\S+)$", sim.log(), re.M).group(1)  # type: ignore[union-attr]
        s = Stack(kind, broker, cluster, kafka, topics, procs, control, sim, db, prefix, hosts=hosts)
        for node, ami_addr in sorted(ami.items()):
            argv = astreg_argv("producer", "--ami", ami_addr, "--ami-user", "astreg", "--node", node)
            if node == "node1" and "p1" in hosts:
                argv = hosts["p1"].argv(argv)
            s.children[f"producer-{node}"] = procs.start(f"producer-{node}", argv, env={"ASTREG_AMI_SECRET": "astreg"})
        for i in (1, 2):
            port = free_port()
            web_host = hosts["w2"].address if i == 2 and "w2" in hosts else addr
            s.web[f"worker{i}"] = f"http://{web_host}:{port}"
            argv = astreg_argv(
                "worker", "--web-port", str(port), "--web-host", web_host, "--store", "rocksdb",
                "--data-dir", str(work / f"w{i}"),
                # The simulated nodes share this host's clock: the skew bound is the resolution of
                # Asterisk's expirations (whole seconds), not the 2 s default meant for NTP'd hosts.
                "--max-clock-skew", str(CLOCK_SKEW))
            if i == 2 and "w2" in hosts:
                argv = hosts["w2"].argv(argv)
            s.children[f"worker{i}"] = procs.start(f"worker{i}", argv)
        s.children["sink-sql"] = procs.start("sink-sql", astreg_argv(
            "sink", "sql", "--url", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"))
        s.children["sink-redis"] = procs.start("sink-redis", astreg_argv(
            "sink", "redis", "--url", REDIS_URL, "--key-prefix", prefix))
        # NODE_STALE after 10 s (30 by default): well inside the 20 s cluster outage and the 30 s
        # CPU hog, so an alerter that took their silence for the nodes' would raise it.
        s.children["alerter"] = procs.start("alerter", astreg_argv("alerts", "run"),
                                            env={"ASTREG_ALERT_NODE_STALE_S": "10"})
        s.converge("initial", timeout=180)
        yield s
    finally:
        # Stopped before the processes it talks to; what it raised is re-raised after the cleanup.
        load_error = s.load.halt() if s is not None else None
        procs.stop_all()
        if broker is not None:
            broker.stop()
        if cluster is not None:
            cluster.stop()
        network.close()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "faults.json").write_text(json.dumps(RESULTS, indent=2))
        (ARTIFACTS / "faults-slow.json").write_text(json.dumps(SLOW, indent=1, default=str))
        print("\nconvergence times (s) and counts:", json.dumps(RESULTS, indent=1))
        try:
            _pg(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        except Exception:  # noqa: BLE001
            pass
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        if load_error is not None:
            raise load_error


def _under_load(stack: Stack, seconds: float = 3.0) -> None:
    """Start the load (if it is not running) and let it run ``seconds``; it goes on until :func:`_settle`."""
    stack.load.start()
    time.sleep(seconds)  # the length of the load period is the thing under test, not a wait


def _settle(stack: Stack) -> None:
    """Stop the load, re-raising whatever went wrong in its thread."""
    stack.load.stop()


def _restart(stack: Stack, name: str) -> None:
    child = stack.children[name]
    child.kill9()
    stack.children[name] = stack.procs.restart(child)


def _broken(stack: Stack, name: str, seconds: float, begin: Any, end: Any) -> float:
    """Under load: ``begin()`` the fault, keep the load on for ``seconds``, ``end()`` it (always),
    then 3 s more load and the convergence check named ``name``; returns its time."""
    _under_load(stack)
    begin()
    try:
        _under_load(stack, seconds)
    finally:
        end()
    _under_load(stack)
    _settle(stack)
    return stack.converge(name)


@pytest.mark.parametrize("name", ["producer-node2", "worker1", "sink-sql", "sink-redis"])
def test_kill9_and_restart(stack: Stack, name: str) -> None:
    _under_load(stack)
    _restart(stack, name)
    _under_load(stack)
    _settle(stack)
    stack.converge(f"kill -9 {name}")


@pytest.mark.parametrize("mode", ["close", "halfopen"])
def test_ami_link_cut(stack: Stack, mode: str) -> None:
    _under_load(stack)
    stack.action("crash", node="node3", mode=mode)
    try:
        # The link stays cut until the workers see it: node3 goes ami=down / stale (ping timeout,
        # node_timeout).
        until_sync(lambda: stack.node_views().get("node3", {}).get("stale"), 60, interval=0.25,
                   what="the workers to report node3 stale after its AMI link was cut")
    finally:
        stack.action("recover", node="node3")
    _under_load(stack)
    _settle(stack)
    stack.converge(f"AMI link cut ({mode})")


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_broker_outage(stack: Stack) -> None:
    broker = stack.broker
    assert broker is not None and broker.proc is not None
    _broken(stack, "broker outage (6 s)", 6,
            lambda: os.kill(broker.proc.pid, signal.SIGSTOP),  # type: ignore[union-attr]
            lambda: os.kill(broker.proc.pid, signal.SIGCONT))  # type: ignore[union-attr]


def _service(cmd: str) -> None:
    """Run a command that stops or starts a service; its failure fails the test with its output."""
    done = subprocess.run(cmd, shell=True, check=False, timeout=60, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{cmd!r} exited with {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}")


def _pg_up() -> bool:
    try:
        _pg("SELECT 1", "postgres")
    except Exception:  # noqa: BLE001 - any failure to answer means down here
        return False
    return True


def _redis_up() -> bool:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def test_postgresql_down(stack: Stack) -> None:
    _under_load(stack)
    _service(f"bash {SERVICES} --stop-postgresql")  # whichever serves the tests: private or Debian's
    try:
        assert not _pg_up(), "PostgreSQL still answers after its stop command"
        _under_load(stack, 6)
    finally:
        _service(f"bash {SERVICES} --start-postgresql")
        until_sync(_pg_up, 60, interval=0.2, what="PostgreSQL to answer after its start command")
    _under_load(stack)
    _settle(stack)
    stack.converge("PostgreSQL down (6 s)")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server to restart Redis")
def test_redis_down(stack: Stack) -> None:
    _under_load(stack)
    _service("redis-cli -h 127.0.0.1 shutdown nosave")
    try:
        assert not _redis_up(), "Redis still answers after its shutdown command"
        _under_load(stack, 6)
    finally:
        _service("redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no "
                 "--dir /var/lib/redis --logfile /var/log/redis/ci.log")
        until_sync(_redis_up, 60, interval=0.2, what="Redis to answer after its start command")
    _under_load(stack)
    _settle(stack)
    # Redis keeps nothing on disk here, so the restart lost every key: the sink must notice (the
    # offsets it keeps in Redis are gone) and rebuild the store from the compacted locations topic.
    stack.converge("Redis down (6 s)")


def test_asterisk_node_restart(stack: Stack) -> None:
    _under_load(stack)
    stack.action("restart", node="node2")
    _under_load(stack)
    _settle(stack)
    stack.converge("Asterisk node restart")


# ------------------------------------------------------------------ the cluster's own faults


async def _partitions(kafka: KafkaSettings, topics: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """(topic, partition) -> leader, isr and end offset, from the cluster itself."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for t in described:
        for p in t["partitions"]:
            out[(t["topic"], p["partition"])] = {"leader": p["leader"], "isr": sorted(p["isr"])}
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(t, p) for t, p in out])
    finally:
        await consumer.stop()
    for tp, end in ends.items():
        out[(tp.topic, tp.partition)]["end"] = end
    return out


def _cluster_topics(stack: Stack) -> list[str]:
    t = stack.topics
    return [t.topic_registrations, t.topic_nodes, t.topic_locations]


def _in_sync(stack: Stack) -> bool:
    """Every partition of the contract's topics has its three replicas in sync."""
    try:
        parts = asyncio.run(_partitions(stack.kafka, _cluster_topics(stack)))
    except Exception:  # noqa: BLE001 - the cluster may not answer while it elects
        return False
    return bool(parts) and all(len(p["isr"]) == 3 for p in parts.values())


def _alerts(stack: Stack) -> list[Any]:
    from streams.alerts.runner import read_alerts

    return asyncio.run(read_alerts(stack.kafka, stack.topics.topic_alerts))


def _false_alerts(stack: Stack, since_ms: int) -> list[str]:
    """NODE_STALE / NODE_DOWN raised since ``since_ms``, and any alert raised twice in a row
    (without a resolve between): what a worker or alerter that mistakes its own lateness or the
    cluster's absence for node silence produces."""
    from schemas.quality import AlertKind, AlertState

    problems = []
    last: dict[str, Any] = {}
    for a in _alerts(stack):
        if a.state is AlertState.RAISED and last.get(a.alert_id) is AlertState.RAISED:
            problems.append(f"raised twice: {a.alert_id}")
        last[a.alert_id] = a.state
        if (a.state is AlertState.RAISED and a.raised_at_ms >= since_ms
                and a.kind in (AlertKind.NODE_STALE, AlertKind.NODE_DOWN)):
            problems.append(f"{a.kind.value} {a.node} at {a.raised_at_ms}: {a.summary}")
    return problems


def _no_false_silence(stack: Stack, fault: str, stale: dict[str, float], since: int) -> None:
    """After a fault no node was really silent in: watch 3 s more, converge, then record and
    check that no worker reported a node stale and the alerter raised nothing for it."""
    _watch_nodes(stack, 3, stale)
    _settle(stack)
    stack.converge(fault)
    alerts = _false_alerts(stack, since)
    RESULTS[f"{stack.kind}: {fault}: false stale nodes"] = len(stale)
    RESULTS[f"{stack.kind}: {fault}: false or doubled alerts"] = len(alerts)
    assert stale == {}, f"healthy nodes reported stale: {stale}"
    assert alerts == [], alerts


def _watch_nodes(stack: Stack, seconds: float, stale: dict[str, float]) -> None:
    """For ``seconds``, record every node a worker reports stale (node -> first time seen)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        for name, view in stack.node_views().items():
            if view.get("stale"):
                stale.setdefault(name, round(time.monotonic() - start, 2))
        time.sleep(0.5)  # the sampling period of what is observed, not a wait for a condition


@pytest.mark.parametrize("stack", ["apache3"], indirect=True)
def test_leader_of_the_busiest_partition_killed(stack: Stack) -> None:
    assert stack.cluster is not None
    parts = asyncio.run(_partitions(stack.kafka, [stack.topics.topic_registrations]))
    (topic, partition), busiest = max(parts.items(), key=lambda kv: kv[1]["end"])
    leader = busiest["leader"]
    cluster = stack.cluster

    def back() -> None:
        cluster.start_broker(leader)
        until_sync(lambda: _in_sync(stack), 120, interval=1.0, what="every partition back in sync")

    # The broker stays down 10 s, under load.
    _broken(stack, f"SIGKILL of the leader of {topic.split('.')[1]}[{partition}], back after 10 s", 10,
            lambda: cluster.kill(leader), back)


@pytest.mark.parametrize("stack", ["apache3"], indirect=True)
def test_rolling_restart(stack: Stack) -> None:
    assert stack.cluster is not None
    _under_load(stack)
    for node_id in (1, 2, 3):
        stack.cluster.stop_broker(node_id)  # controlled shutdown: leadership moves first
        stack.cluster.start_broker(node_id)
        until_sync(lambda: _in_sync(stack), 120, interval=1.0,
                   what=f"every partition back in sync after broker {node_id}'s restart")
    _under_load(stack)
    _settle(stack)
    stack.converge("rolling restart of the three brokers")


@pytest.mark.parametrize("stack", ["apache3"], indirect=True)
def test_two_brokers_down(stack: Stack) -> None:
    """Below min.insync.replicas, then without a controller quorum: producers buffer, workers and
    sinks wait, no node is marked stale because the cluster was away, then everything heals."""
    assert stack.cluster is not None
    _under_load(stack)
    stale: dict[str, float] = {}
    since = int(time.time() * 1000)
    stack.cluster.kill(2)
    stack.cluster.kill(3)
    try:
        _watch_nodes(stack, 20, stale)
    finally:
        stack.cluster.start_broker(2)
        stack.cluster.start_broker(3)
    until_sync(lambda: _in_sync(stack), 180, interval=1.0, what="every partition back in sync")
    _no_false_silence(stack, "two brokers down (20 s)", stale, since)


def test_starved_cpu(stack: Stack) -> None:
    """A CPU hog beside the workers for 30 s (one busy process per core): healthy nodes are
    never reported stale because the worker itself is late."""
    _under_load(stack)
    stale: dict[str, float] = {}
    since = int(time.time() * 1000)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        _watch_nodes(stack, 30, stale)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)
    _no_false_silence(stack, "CPU hog beside the workers (30 s)", stale, since)


# ------------------------------------------------------------------ network faults (simulated hosts)


def _ready_from(host: Host, base: str) -> tuple[int, Any]:
    """(HTTP status, body) of ``base``/readyz asked from inside ``host`` (0: no answer)."""
    code = (
        "import json, sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen({base + '/readyz'!r}, timeout=3)\n"
        "    print(r.status, r.read().decode())\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode())\n"
        "except Exception as e:\n"
        "    print(0, json.dumps(str(e)))\n"
    )
    done = subprocess.run(host.argv([sys.executable, "-c", code]), capture_output=True, text=True, timeout=15)
    status, _, body = done.stdout.strip().partition(" ")
    return int(status or 0), body


def _not_ready_from(host: Host, base: str) -> str | None:
    """The reason ``base`` gives for not being ready, asked from inside ``host`` (None: ready)."""
    status, body = _ready_from(host, base)
    return body if status == 503 else None


def _ready_partitions(base: str) -> set[int]:
    try:
        r = httpx.get(f"{base}/readyz", timeout=3)
    except httpx.HTTPError:
        return set()
    return set(r.json().get("partitions", [])) if r.status_code == 200 else set()


@pytest.mark.parametrize("stack", ["apache3"], indirect=True)
def test_producer_host_cut(stack: Stack) -> None:
    host = stack.hosts["p1"]
    # node1's producer cannot reach the brokers (nor its AMI) for 20 s.
    _broken(stack, "producer host (node1) cut from the brokers for 20 s", 20, host.cut, host.heal)


@pytest.mark.parametrize("stack", ["apache3"], indirect=True)
def test_worker_host_cut(stack: Stack) -> None:
    """worker2's host is cut off: worker1 takes every partition, and worker2, asked on its own
    host, stops claiming readiness for the partitions it lost."""
    host = stack.hosts["w2"]
    _under_load(stack)
    started = time.monotonic()
    host.cut()
    try:
        until_sync(lambda: _ready_partitions(stack.web["worker1"]) == set(range(stack.topics.partitions)), 60,
                   interval=0.5, what="worker1 to serve every partition")
        body = until_sync(lambda: _not_ready_from(host, stack.web["worker2"]), 60, interval=1.0,
                          what="worker2 to stop claiming readiness")
        assert "no answer from the Kafka cluster" in body, body
        RESULTS[f"{stack.kind}: worker host cut: not ready after (s)"] = round(time.monotonic() - started, 1)
        _under_load(stack, max(0.0, 20 - (time.monotonic() - started)))
    finally:
        host.heal()
    until_sync(lambda: _ready_partitions(stack.web["worker2"]), 90, interval=0.5,
               what="worker2 to serve partitions again")
    _under_load(stack)
    _settle(stack)
    stack.converge("worker host (worker2) cut for 20 s")


@pytest.mark.parametrize("stack", ["apache3"], indirect=True)
def test_lossy_slow_links(stack: Stack) -> None:
    hosts = list(stack.hosts.values())

    def degrade() -> None:
        for host in hosts:
            host.degrade(loss_percent=5, delay_ms=200)

    def heal() -> None:
        for host in hosts:
            host.heal()

    _broken(stack, "5 % loss and 200 ms delay each way on the producer's and the worker's hosts (20 s)", 20,
            degrade, heal)


# The storm kills node1 for good: it runs last on each broker.
def test_storm(stack: Stack) -> None:
    _settle(stack)
    r = httpx.post(f"{stack.control}/scenario", json={"name": "storm", "params": {"node": "node1"}}, timeout=120)
    assert r.status_code == 200, r.text
    stack.converge("storm (node1 dies, its phones re-register elsewhere)", live_only=True)


# ------------------------------------------------------------------ the end check: every AMI event

READ_GRACE = 2.0  # s: events sent this long before the client was last heard from had been read
_CONTACT_TEXT = {"created": "NON_QUALIFIED", "nonqualified": "NON_QUALIFIED", "unknown": "NON_QUALIFIED",
                 "reachable": "REACHABLE", "unreachable": "UNREACHABLE", "removed": "REMOVED"}
_KIND_EVENT = {"CONTACT": "ContactStatus", "PEER": "PeerStatus", "DEVICE": "DeviceStateChange"}


def _ami_key(node: str, event: str, endpoint: str, status: str, uri: str, ts: int | None) -> tuple[Any, ...]:
    """An AMI event as the producer must have recorded it (the status in the schema's terms)."""
    status = _CONTACT_TEXT.get(status.lower(), status.upper()) if event == "ContactStatus" else status.upper()
    return (node, event, endpoint, status, uri, ts)


async def _read_all(kafka: KafkaSettings, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` up to its end offsets now, partition by partition in order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[Any] = []
        pending = {tp for tp in parts if ends[tp] > 0}
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for tp, records in (await consumer.getmany(*pending, timeout_ms=1000)).items():
                out.extend(r for r in records if r.offset < ends[tp])
                if records and records[-1].offset >= ends[tp] - 1:
                    pending.discard(tp)
        assert not pending, f"{topic}: could not read {sorted(pending)} to their end offsets in 120 s"
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def _accountable(journal: dict[str, Any], until: float) -> tuple[Counter[tuple[Any, ...]], int]:
    """The journal's events the producers must have recorded, and how many a fault left unknowable.

    An event counts when it was sent ``READ_GRACE`` s before ``until``, before the client's first
    silence longer than ``READ_GRACE`` (the producer pings every second: a longer silence is a
    cut link or a stalled producer, which may have given the connection up even if its bytes
    arrive later), and, on a session that ended, ``READ_GRACE`` s before the simulator last heard
    from the client. What a session was sent after that (a producer killed, a link cut) may never
    have been read; the snapshot after the reconnect covers it."""
    want: Counter[tuple[Any, ...]] = Counter()
    unknowable = 0
    for node, sessions in journal["nodes"].items():
        for session in sessions:
            limit = until - READ_GRACE
            if session["closed_at"] is not None:
                limit = min(limit, session["last_rx"] - READ_GRACE)
            silences = [start for start, end in session["gaps"] if end - start > READ_GRACE]
            if silences:
                limit = min(limit, silences[0] - READ_GRACE)
            for at, event, endpoint, status, uri, ts in session["events"]:
                if at <= limit:
                    want[_ami_key(node, event, endpoint, status, uri, ts)] += 1
                elif at <= until - READ_GRACE:
                    unknowable += 1
    return want, unknowable


def test_every_ami_event_accounted_for(stack: Stack) -> None:
    """Every AMI event the simulator sent to a producer is in the registrations topic (or, refused,
    in the dead letters), and no record the producers sent twice was applied twice."""
    from astreg.amiwire import header_map
    from producers.simulator.journal import entry_of
    from schemas.codec import Codec
    from schemas.models import RegistrationEvent, Source
    from streams.rules import decide

    _settle(stack)
    journal = httpx.get(f"{stack.control}/journal", timeout=60).json()
    assert journal["enabled"], "the simulator runs without --journal"
    asked = time.time()
    want, unknowable = _accountable(journal, asked)
    per_node = Counter(k[0] for k in want.elements())
    assert set(per_node) == {"node1", "node2", "node3"} and sum(per_node.values()) >= 100, \
        f"too few events to account for: {dict(per_node)}"
    codec = Codec.for_model(RegistrationEvent)
    deadline = time.monotonic() + 30
    while True:
        records = asyncio.run(_read_all(stack.kafka, stack.topics.topic_registrations, stack.topics.partitions))
        events = [(r, codec.decode(r.value)) for r in records]
        got: Counter[tuple[Any, ...]] = Counter()
        for _r, ev in events:
            if ev.source is Source.LIVE and ev.kind.name in _KIND_EVENT:
                status = {"CONTACT": ev.contact_status, "PEER": ev.peer_status, "DEVICE": ev.device_state}[ev.kind.name]
                got[(ev.node, _KIND_EVENT[ev.kind.name], ev.endpoint, status.name if status else "",
                     ev.contact_uri or "", ev.event_time_ms)] += 1
        refused: Counter[tuple[Any, ...]] = Counter()
        for r in asyncio.run(_read_all(stack.kafka, stack.topics.topic_deadletter, stack.topics.partitions)):
            headers = dict(r.headers or ())
            entry = entry_of(r.value or b"") if headers.get("astreg.component") == b"producer" else None
            if entry is not None:
                refused[_ami_key(header_map((r.value or b"").decode("utf-8", "replace")).get("SystemName", ""), *entry)] += 1
        missing = want - got - refused
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)  # poll interval: the last events may still be on their way
    # Records sent twice (a batch retried after an unanswered send): the rules must ignore the copy.
    seen: set[tuple[Any, ...]] = set()
    rows: dict[str, Any] = {}
    copies = applied_twice = 0
    for r, ev in events:
        stamp = (ev.node, ev.producer_epoch, ev.seq, ev.source is Source.SYNTHETIC)
        again = stamp in seen
        seen.add(stamp)
        out = decide(rows.get(ev.endpoint), ev, r.offset, now_ms=r.timestamp, skew_ms=int(CLOCK_SKEW * 1000))
        rows[ev.endpoint] = out.row
        if again and ev.source is not Source.SYNTHETIC:
            copies += 1
            applied_twice += out.applied
    RESULTS[f"{stack.kind}: AMI events accounted for"] = {
        "sent": sum(want.values()), "in registrations": sum((want & got).values()),
        "in dead letters": sum((want & refused).values()), "missing": sum(missing.values()),
        "unknowable (sent to sessions a fault cut or silenced)": unknowable, "copies in topic": copies,
        "copies applied": applied_twice}
    assert not missing, f"{sum(missing.values())} AMI events in no topic, e.g. {sorted(missing)[:10]}"
    assert applied_twice == 0, f"{applied_twice} of {copies} copied records were applied again"
