"""AMI event → every dialplan store: per-move arrival times at each hop and in each store.

:func:`measure_store_latency` moves phones between simulated nodes at a steady AMI event rate
and records, for each move, when the change was first visible:

- in the ``registrations`` topic (the producer's hop) and the ``locations`` topic (the worker's
  hop), read by a consumer of this process;
- in each store the pipeline writes: the SQL table (SQLite, read for the pending keys every
  ``SQL_POLL`` s), Redis (keyspace notifications, then a GET: no polling) and the AstDB of every
  node (the simulator tells each DBPut as it lands).

:func:`broker_latency` is the baseline: the broker's own produce → consume latency at the same
rate, with the producer settings the pipeline uses (acks=all, idempotence). The pipeline has two
broker hops (registrations, locations), so twice that is the floor of any store's latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import statistics
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from astreg.settings import KafkaSettings

__all__ = ["LatencyProbe", "CpuMeter", "measure_store_latency", "broker_latency", "summary", "percentile"]

logger = logging.getLogger(__name__)

SQL_POLL = 0.002  # s between two reads of the SQL store's pending rows
HOPS = ("registrations_created", "registrations", "locations_created", "locations")


@dataclass
class _Move:
    endpoint: str
    target: str
    t0: float
    seen: dict[str, float] = field(default_factory=dict)


class LatencyProbe:
    """Moves in flight and when each hop and store first showed each one.

    ``seen`` may be called from any thread; a move is done once every store (hops are not
    required: a record read late by this process's consumer must not hold a move open) saw it."""

    def __init__(self, stores: list[str]):
        self.stores = list(stores)
        self.pending: dict[str, _Move] = {}
        self.done: list[_Move] = []
        self._lock = threading.Lock()

    def start(self, endpoint: str, target: str) -> None:
        with self._lock:
            self.pending[endpoint] = _Move(endpoint, target, time.perf_counter())

    def waiting(self, name: str) -> list[str]:
        with self._lock:
            return [ep for ep, m in self.pending.items() if name not in m.seen]

    def seen(self, name: str, endpoint: str, node: str | None, at: float | None = None) -> None:
        at = time.perf_counter() if at is None else at
        with self._lock:
            move = self.pending.get(endpoint)
            if move is None or node != move.target or name in move.seen or at < move.t0:
                return
            move.seen[name] = at
            if all(s in move.seen for s in self.stores):
                self.done.append(self.pending.pop(endpoint))


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank (NaN when empty)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


def summary(values_s: list[float]) -> dict[str, float | None]:
    """p50 / p99 / max in ms of latencies in seconds."""
    ms = [v * 1000 for v in values_s]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    ms.sort()
    p50, p99 = (percentile(ms, q) if ms else None for q in (0.50, 0.99))
    return {"p50_ms": r(p50), "p99_ms": r(p99), "max_ms": r(ms[-1] if ms else None),
            "mean_ms": r(statistics.fmean(ms) if ms else None)}


class CpuMeter:
    """CPU used while the moves run: the machine's busy share and cores used per role.

    ``pids``: process name → pid (``producer-node1``, ``worker1``, ``sink-sql`` ...); a name's
    role is its part before the first ``-`` (producers and AstDB sinks are summed), this process
    (simulator and probe) is ``bench`` (see :func:`_role`), and what the machine used besides them (the broker's JVM
    on a one-machine run) is ``other``."""

    def __init__(self, pids: dict[str, int]):
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._procs["bench"] = psutil.Process()
        self._start: dict[str, float] = {}
        self._machine: Any = None
        self._t0 = 0.0

    @staticmethod
    def _used(proc: Any) -> float:
        try:
            t = proc.cpu_times()
            return float(t.user + t.system)
        except Exception:  # noqa: BLE001 - a process that ended counts what it used before
            return 0.0

    def start(self) -> None:
        import psutil

        self._t0 = time.monotonic()
        self._machine = psutil.cpu_times()
        self._start = {name: self._used(p) for name, p in self._procs.items()}

    def stop(self) -> dict[str, float]:
        import psutil

        wall = time.monotonic() - self._t0
        end = psutil.cpu_times()
        idle = (end.idle + getattr(end, "iowait", 0.0)) - (self._machine.idle + getattr(self._machine, "iowait", 0.0))
        total = sum(end) - sum(self._machine)
        cores: dict[str, float] = {}
        for name, proc in self._procs.items():
            role = _role(name)
            cores[role] = cores.get(role, 0.0) + (self._used(proc) - self._start[name]) / wall
        busy_cores = (total - idle) / wall
        cores["other"] = max(0.0, busy_cores - sum(cores.values()))
        out = {"cpu_machine_busy_pct": round(100 * (total - idle) / total, 1) if total else 0.0,
               "cpu_cores": psutil.cpu_count() or 0}
        out.update({f"cpu_cores_used_{role}": round(v, 2) for role, v in sorted(cores.items())})
        return out


def _role(name: str) -> str:
    """``producer-node1`` → producers, ``worker2`` → workers, ``sink-astdb-node1`` → sinks_astdb,
    ``sink-sql`` → sink_sql."""
    for head, role in (("producer", "producers"), ("worker", "workers"), ("sink-astdb", "sinks_astdb")):
        if name.startswith(head):
            return role
    return name.replace("-", "_")


# ---------------------------------------------------------------------------- watchers

def _watch_sql(probe: LatencyProbe, path: Any, stop: threading.Event) -> None:
    """Thread: the SQL store's rows of the pending endpoints, every SQL_POLL s."""
    con: sqlite3.Connection | None = None
    while not stop.is_set():
        keys = probe.waiting("sql")
        if keys:
            try:
                if con is None:
                    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05, check_same_thread=False)
                rows = con.execute(
                    f"SELECT endpoint, node FROM astreg_locations WHERE endpoint IN ({','.join('?' * len(keys))})",
                    keys).fetchall()
                now = time.perf_counter()
                for ep, node in rows:
                    probe.seen("sql", ep, node, now)
            except sqlite3.Error as exc:  # locked by the writer, or not created yet: next poll
                logger.debug("reading the SQL store: %s", exc)
        stop.wait(SQL_POLL)
    if con is not None:
        con.close()


@contextlib.asynccontextmanager
async def _watch_redis(probe: LatencyProbe, url: str, prefix: str,
                       endpoint_of: dict[str, str]) -> AsyncIterator[None]:
    """Redis keyspace notifications of ``<prefix>node:*``: each changed key is read at once."""
    import redis.asyncio as aioredis

    admin = aioredis.from_url(url, decode_responses=True)
    before = str((await admin.config_get("notify-keyspace-events")).get("notify-keyspace-events") or "")
    await admin.config_set("notify-keyspace-events", "K$")
    pubsub = admin.pubsub()
    reader = aioredis.from_url(url, decode_responses=True)
    channel = f"__keyspace@0__:{prefix}node:"
    await pubsub.psubscribe(f"{channel}*")

    async def listen() -> None:
        async for msg in pubsub.listen():
            if msg.get("type") != "pmessage":
                continue
            resource = str(msg["channel"])[len(channel):]
            endpoint = endpoint_of.get(resource)
            if endpoint is not None and endpoint in probe.pending:  # read only keys of moves in flight
                value = await reader.get(f"{prefix}node:{resource}")
                probe.seen("redis", endpoint, None if value is None else str(value))

    task = asyncio.create_task(listen())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await pubsub.aclose()
        await admin.config_set("notify-keyspace-events", before)
        await admin.aclose()
        await reader.aclose()


def _watch_astdb(probe: LatencyProbe, sim: Any, node: str, endpoint_of: dict[str, str]) -> Callable[[], None]:
    """The simulated node's DBPuts of ``astreg/node/<resource>``; returns the unhook."""
    from sinks.astdb import key_part

    by_key = {f"node/{key_part(resource)}": ep for resource, ep in endpoint_of.items()}
    name = f"astdb_{node}"

    def watch(family: str, key: str, value: str) -> None:
        endpoint = by_key.get(key)
        if family == "astreg" and endpoint is not None:
            probe.seen(name, endpoint, value)

    watchers = sim.nodes[node].astdb.watchers
    watchers.append(watch)
    return lambda: watchers.remove(watch)


@contextlib.asynccontextmanager
async def _watch_topics(probe: LatencyProbe, kafka: KafkaSettings, registrations: str,
                        locations: str, partitions: int) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """The two broker hops: the first registration of the moved endpoint from its new node, and
    the first location naming that node as primary. Yields a reader of the registrations
    topic's size (sum of its end offsets): the records the workers had to read."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.codec import location_codec, registration_codec

    fetch = {k: v for k, v in kafka.group_kwargs().items() if k == "fetch_max_wait_ms"}
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, **fetch)
    await consumer.start()
    tps = [TopicPartition(t, p) for t in (registrations, locations) for p in range(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:  # resolve the end offsets now, not at the first fetch (after the moves began)
        await consumer.position(tp)
    reg, loc = registration_codec(), location_codec()

    wall = time.time() - time.perf_counter()  # record timestamps (wall clock, ms) → perf_counter

    async def read() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for tp, recs in batches.items():
                for rec in recs:
                    # Records are keyed by endpoint: decode only those of moves in flight.
                    if rec.value is None or rec.key is None or rec.key.decode(errors="replace") not in probe.pending:
                        continue
                    try:
                        if tp.topic == registrations:
                            d = reg.decode_dict(rec.value)
                            hop, node = "registrations", d["node"]
                        else:
                            d = loc.decode_dict(rec.value)
                            hop, node = "locations", d.get("primary_node")
                        # When its sender handed the record to its Kafka client (CreateTime),
                        # and when this consumer read it.
                        probe.seen(f"{hop}_created", d["endpoint"], node, rec.timestamp / 1000 - wall)
                        probe.seen(hop, d["endpoint"], node, now)
                    except Exception as exc:  # a record this reader cannot decode is not a move
                        logger.debug("latency probe: %s", exc)

    async def size() -> int:
        ends = await consumer.end_offsets([tp for tp in tps if tp.topic == registrations])
        return sum(ends.values())

    task = asyncio.create_task(read())
    try:
        yield size
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


# ---------------------------------------------------------------------------- the measurement

async def measure_store_latency(sim: Any, pipe: Any, *, rate: float, seconds: float, current: dict[str, str],
                                seed: int = 7, drain_s: float = 30.0) -> dict[str, Any]:
    """Move phones at ``rate`` AMI events/s (the simulator's own count of the events it sends)
    for ``seconds``; per-store and per-hop latency of each move from its ``sim.move``.

    ``current``: endpoint → primary node before the first move (every store already holds it)."""
    rng = random.Random(seed)
    nodes = sorted(sim.nodes)
    endpoint_of = {ep.partition("/")[2]: ep for ep in current}
    stores = ["sql"] + (["redis"] if "redis" in pipe.sinks else []) + [f"astdb_{n}" for n in pipe.astdb_sinks]
    probe = LatencyProbe(stores)
    stop = threading.Event()
    sql = threading.Thread(target=_watch_sql, args=(probe, pipe.sqlite_path, stop), name="latency-sql", daemon=True)
    unhook = [_watch_astdb(probe, sim, n, endpoint_of) for n in pipe.astdb_sinks]
    async with contextlib.AsyncExitStack() as stack:
        if "redis" in pipe.sinks:
            await stack.enter_async_context(_watch_redis(probe, pipe.redis_url, pipe.redis_prefix, endpoint_of))
        t = pipe.topics
        size = await stack.enter_async_context(_watch_topics(probe, pipe.kafka, t.topic_registrations, t.topic_locations,
                                                             t.partitions))
        sql.start()
        meter = CpuMeter({c.name: c.pid for c in pipe.procs.children if c.alive()})
        meter.start()
        try:
            sent0, records0 = _ami_events(sim), await size()
            endpoints = sorted(current)
            t_start = time.perf_counter()
            started = 0
            while (elapsed := time.perf_counter() - t_start) < seconds:
                # Pace by events actually sent: a move is 4-6 AMI events depending on the phone.
                if _ami_events(sim) - sent0 >= rate * elapsed:
                    await asyncio.sleep(0.002)
                    continue
                ep = rng.choice(endpoints)
                if ep in probe.pending:
                    continue
                target = rng.choice([n for n in nodes if n != current[ep]])
                probe.start(ep, target)
                await sim.move(ep.split("/", 1)[1], target)
                current[ep] = target
                started += 1
            emitted, took = _ami_events(sim) - sent0, time.perf_counter() - t_start
            cpu = meter.stop()
            records = await size() - records0
            deadline = time.monotonic() + drain_s
            while probe.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            sql.join(5)
            for u in unhook:
                u()
    moves = probe.done
    figures: dict[str, Any] = {
        "moves": len(moves), "lost": len(probe.pending), "ami_events": emitted,
        "ami_events_per_s": round(emitted / took, 1), "seconds": round(took, 1), "stores": ", ".join(stores),
        "registration_records": records, **cpu,
    }
    if records:
        # What the workers spent per record they read (timers and heartbeats included).
        figures["workers_cpu_us_per_record"] = round(cpu["cpu_cores_used_workers"] * took * 1e6 / records, 1)
    every = [max(m.seen[s] for s in stores) - m.t0 for m in moves]
    figures.update({f"every_store_{k}": v for k, v in summary(every).items()})
    for name in stores:
        s = summary([m.seen[name] - m.t0 for m in moves])
        figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = s["p50_ms"], s["p99_ms"]
    for hop in HOPS:
        s = summary([m.seen[hop] - m.t0 for m in moves if hop in m.seen])
        figures[f"hop_{hop}_p50_ms"], figures[f"hop_{hop}_p99_ms"] = s["p50_ms"], s["p99_ms"]
    figures["timeline"] = [(round(m.t0 - t_start, 3), max(m.seen[s] for s in stores) - m.t0) for m in moves]
    return figures


def _ami_events(sim: Any) -> int:
    return sum(node.stats_events for node in sim.nodes.values())


async def broker_latency(kafka: KafkaSettings, topic: str, *, rate: float, seconds: float,
                         partitions: int = 12) -> dict[str, Any]:
    """Produce → consume latency of the broker alone at ``rate`` records/s: one aiokafka
    producer with the pipeline's settings (acks=all, idempotence, no linger) and one consumer
    reading every partition, in this process."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        # As the pipeline's topics: replicated on up to three of the bootstrap brokers.
        await admin.create_topics([NewTopic(topic, partitions, min(3, len(kafka.servers)))])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), acks="all", enable_idempotence=kafka.idempotent,
                                linger_ms=0)
    fetch = {k: v for k, v in kafka.group_kwargs().items() if k == "fetch_max_wait_ms"}
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, **fetch)
    await producer.start()
    await consumer.start()
    lat: list[float] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            await consumer.position(tp)
        total = int(rate * seconds)

        async def read() -> None:
            while len(lat) < total:
                for recs in (await consumer.getmany(timeout_ms=100)).values():
                    now = time.perf_counter()
                    lat.extend(now - struct.unpack(">d", r.value)[0] for r in recs)

        reader = asyncio.create_task(read())
        t_start = time.perf_counter()
        for i in range(total):
            while (time.perf_counter() - t_start) * rate < i:
                await asyncio.sleep(0.001)
            await producer.send(topic, struct.pack(">d", time.perf_counter()), key=str(i % 3000).encode())
        await asyncio.wait_for(reader, 30)
    finally:
        await producer.stop()
        await consumer.stop()
    s = summary(lat)
    return {"records": len(lat), "p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"]}
