"""Fault-injection suite: during a steady load, break one thing at a time, then check that every
store converges to the simulator's truth with nothing lost, and record how long it took.

Run alone with ``make test-faults`` (``pytest -m faults``). One pipeline serves the whole module
(3 simulated nodes, a producer per node, two workers with RocksDB state, the SQL sink on
PostgreSQL and the Redis sink); faults run in order and each starts from a converged state.
Convergence times go to ``test-artifacts/faults.json`` and are printed.

Decisions: the broker outage is SIGSTOP/SIGCONT of the embedded broker (it is memory-only: a real
restart would test a total data loss no Kafka deployment has); PostgreSQL and Redis are really
stopped and started (this suite runs serially, never beside other tests), and a stop or start
command that fails, or a service still answering after its stop, fails the test: an outage that
did not happen must not pass. The load runs in a thread; whatever it raises is re-raised in the
test when the load stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import redis

from astreg.broker import EmbeddedBroker, free_port
from astreg.proc import Child, ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.tools.e2e import primaries
from astreg.topics import ensure_topics
from tests.conftest import ARTIFACTS, PG_ADMIN, REDIS_URL, unique_name
from tests.support.truth import diff
from tests.support.wait import until_sync

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

PHONES = 240
CONVERGE_TIMEOUT = 120.0
RESULTS: dict[str, float] = {}
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
    broker: EmbeddedBroker
    procs: ProcessGroup
    control: str
    sim: Child
    db: str
    redis_prefix: str
    children: dict[str, Child] = field(default_factory=dict)
    web: dict[str, str] = field(default_factory=dict)  # worker name -> base URL of its web API
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
            if problems and time.monotonic() - start > 5 and name not in SLOW:
                SLOW[name] = self.explain(want, sql)  # what a slow convergence was waiting for
            if not problems:
                took = time.monotonic() - start
                RESULTS[name] = round(took, 2)
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("faults")
    db = unique_name("faults")
    _pg(f'CREATE DATABASE "{db}"')
    broker = EmbeddedBroker(log_file=work / "broker.log").start()
    kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    topics = TopicSettings(partitions=4)
    asyncio.run(ensure_topics(kafka, topics))
    procs = ProcessGroup(log_dir=work / "logs", env={
        "ASTREG_BOOTSTRAP": broker.bootstrap, "ASTREG_EMBEDDED": "1", "ASTREG_PARTITIONS": "4",
        "ASTREG_HEARTBEAT_INTERVAL": "1", "ASTREG_NODE_TIMEOUT": "6", "ASTREG_LOG_LEVEL": "INFO"})
    prefix = f"{db}:"
    s: Stack | None = None
    try:
        sim = procs.start("simulator", astreg_argv("simulate", "--nodes", "3", "--phones", str(PHONES),
                                                   "--ami-port", "0", "--control-port", "0"))
        until_sync(lambda: re.search(r"^control=", sim.log(), re.M), 60, interval=0.1,
                   what="the simulator to print its control address")
        ami = dict(re.findall(r"^ami=(\S+)@(\S+)$", sim.log(), re.M))
        control = re.search(r"^control=(\S+)$", sim.log(), re.M).group(1)  # type: ignore[union-attr]
        s = Stack(broker, procs, control, sim, db, prefix)
        for node, addr in sorted(ami.items()):
            s.children[f"producer-{node}"] = procs.start(f"producer-{node}", astreg_argv(
                "producer", "--ami", addr, "--ami-user", "astreg", "--node", node), env={"ASTREG_AMI_SECRET": "astreg"})
        for i in (1, 2):
            port = free_port()
            s.web[f"worker{i}"] = f"http://127.0.0.1:{port}"
            s.children[f"worker{i}"] = procs.start(f"worker{i}", astreg_argv(
                "worker", "--web-port", str(port), "--store", "rocksdb", "--data-dir", str(work / f"w{i}"),
                # The simulated nodes share this host's clock: the skew bound is the resolution of
                # Asterisk's expirations (whole seconds), not the 2 s default meant for NTP'd hosts.
                "--max-clock-skew", str(CLOCK_SKEW)))
        s.children["sink-sql"] = procs.start("sink-sql", astreg_argv(
            "sink", "sql", "--url", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}"))
        s.children["sink-redis"] = procs.start("sink-redis", astreg_argv(
            "sink", "redis", "--url", REDIS_URL, "--key-prefix", prefix))
        s.converge("initial", timeout=180)
        yield s
    finally:
        # Stopped before the processes it talks to; what it raised is re-raised after the cleanup.
        load_error = s.load.halt() if s is not None else None
        procs.stop_all()
        broker.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "faults.json").write_text(json.dumps(RESULTS, indent=2))
        (ARTIFACTS / "faults-slow.json").write_text(json.dumps(SLOW, indent=1, default=str))
        print("\nconvergence times (s):", json.dumps(RESULTS, indent=1))
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


def test_broker_outage(stack: Stack) -> None:
    _under_load(stack)
    os.kill(stack.broker.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        _under_load(stack, 6)
    finally:
        os.kill(stack.broker.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
    _under_load(stack)
    _settle(stack)
    stack.converge("broker outage (6 s)")


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
    # Redis keeps nothing on disk here, so the restart lost every key: the sink must notice (its
    # marker key is gone) and rebuild the store from the compacted locations topic.
    stack.converge("Redis down (6 s)")


def test_asterisk_node_restart(stack: Stack) -> None:
    _under_load(stack)
    stack.action("restart", node="node2")
    _under_load(stack)
    _settle(stack)
    stack.converge("Asterisk node restart")


def test_storm(stack: Stack) -> None:
    _settle(stack)
    r = httpx.post(f"{stack.control}/scenario", json={"name": "storm", "params": {"node": "node1"}}, timeout=120)
    assert r.status_code == 200, r.text
    stack.converge("storm (node1 dies, its phones re-register elsewhere)", live_only=True)
