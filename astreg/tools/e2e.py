"""A whole pipeline for end-to-end measurements, and readers of what each store holds.

Used by ``astreg bench`` (sections ``e2e`` and ``storm``; the latency itself is measured by
:mod:`astreg.tools.latency`) and by the integration and fault suites. The simulator runs in the
caller's process (its Python API gives exact emit times); the producers, workers and sinks run
as separate ``astreg`` processes, exactly as deployed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astreg.broker import EmbeddedBroker, free_port, wait_port
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics

__all__ = [
    "Pipeline", "pipeline", "sql_nodes", "redis_nodes", "redis_nodes_sync", "astdb_nodes", "astdb_want", "wait_stores",
    "sql_nodes_of", "redis_nodes_of", "astdb_nodes_of",
    "primaries",
]

logger = logging.getLogger(__name__)


def sql_nodes(path: Path) -> dict[str, str | None]:
    """endpoint → node from the SQLite sink's table (empty when the table is not there yet)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return {}
    try:
        return {ep: node for ep, node in con.execute("SELECT endpoint, node FROM astreg_locations")}
    except sqlite3.Error:
        return {}
    finally:
        con.close()


async def redis_nodes(url: str, prefix: str) -> dict[str, str]:
    """resource → node from the Redis sink's ``<prefix>node:<resource>`` strings."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, decode_responses=True)
    try:
        head = f"{prefix}node:"
        keys = [k async for k in client.scan_iter(match=f"{head}*", count=1000)]
        values = await client.mget(keys) if keys else []
        return {k[len(head):]: str(v) for k, v in zip(keys, values, strict=True) if v is not None}
    finally:
        await client.aclose()


def sql_nodes_of(path: Path, endpoints: list[str]) -> dict[str, str | None]:
    """:func:`sql_nodes` of some endpoints only."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    try:
        out: dict[str, str | None] = {}
        for i in range(0, len(endpoints), 500):
            chunk = endpoints[i:i + 500]
            out.update(con.execute(
                f"SELECT endpoint, node FROM astreg_locations WHERE endpoint IN ({','.join('?' * len(chunk))})",
                chunk).fetchall())
        return out
    finally:
        con.close()


def redis_nodes_of(url: str, prefix: str, resources: list[str]) -> dict[str, str]:
    """:func:`redis_nodes_sync` of some resources only."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        out: dict[str, str] = {}
        for i in range(0, len(resources), 5000):
            chunk = resources[i:i + 5000]
            values = client.mget([f"{prefix}node:{r}" for r in chunk])
            out.update({r: str(v) for r, v in zip(chunk, values, strict=True) if v is not None})
        return out
    finally:
        client.close()


def astdb_nodes_of(db: Any, keys: list[str], family: str = "astreg") -> dict[str, str]:
    """:func:`astdb_nodes` of some keys only."""
    out: dict[str, str] = {}
    for key in keys:
        value = db.get(family, f"node/{key}")
        if value is not None:
            out[key] = value
    return out


def redis_nodes_sync(url: str, prefix: str) -> dict[str, str]:
    """:func:`redis_nodes` for a thread: resource → node."""
    import redis

    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        head = f"{prefix}node:"
        keys = list(client.scan_iter(match=f"{head}*", count=5000))
        values = client.mget(keys) if keys else []
        return {k[len(head):]: str(v) for k, v in zip(keys, values, strict=True) if v is not None}
    finally:
        client.close()


def astdb_nodes(db: Any, family: str = "astreg") -> dict[str, str]:
    """AstDB key ``node/<resource>`` → value from a simulated node's AstDB (``AmiNode.astdb``)."""
    head = f"/{family}/node/"
    return {key[len(head):]: value for key, value in db.tree(family, "node")}


def astdb_want(want: dict[str, str]) -> dict[str, str]:
    """endpoint → node as the AstDB sink stores it: key ``node/<URI-encoded resource>``."""
    from sinks.astdb import key_part

    return {key_part(ep.partition("/")[2] or ep): node for ep, node in want.items()}


def _run_blocking(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even when an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


@dataclass
class Pipeline:
    """A running pipeline: broker, topics, processes; the simulator is driven by the caller."""

    kafka: KafkaSettings
    topics: TopicSettings
    procs: ProcessGroup
    sqlite_path: Path
    web_urls: list[str] = field(default_factory=list)
    astdb_sinks: list[str] = field(default_factory=list)  # the nodes that have their own AstDB sink
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "astreg:"
    sinks: tuple[str, ...] = ()

    def topic_args(self) -> list[str]:
        t = self.topics
        return ["--topic-registrations", t.topic_registrations, "--topic-nodes", t.topic_nodes,
                "--topic-locations", t.topic_locations, "--topic-deadletter", t.topic_deadletter,
                "--partitions", str(t.partitions)]


@contextmanager
def pipeline(
    work: Path,
    ami: dict[str, int],
    *,
    kafka: KafkaSettings | None = None,
    workers: int = 1,
    partitions: int = 12,
    suffix: str | None = None,
    sinks: tuple[str, ...] = ("sql",),
    extra_env: dict[str, str] | None = None,
    stop_grace: float = 8.0,
    store: str = "rocksdb",
    redis_url: str = "redis://127.0.0.1:6379/0",
    redis_prefix: str = "astreg:",
) -> Iterator[Pipeline]:
    """Broker (embedded unless ``kafka`` is given) + topics + producers + workers + sinks.

    ``sinks``: ``"sql"`` (SQLite file ``sqlite_path``), ``"redis"`` (``redis_url``, keys under
    ``redis_prefix``) and/or ``"astdb"``: one AstDB sink per
    node as deployed (SPEC: "AstDB sink: one per node"), each its own consumer group, so a dead
    node stalls only its own sink. ``stop_grace``: seconds the processes get to stop on SIGTERM
    before SIGKILL (a benchmark that throws the pipeline away need not wait long). ``store``:
    the workers' table store, RocksDB as deployed (the memory store takes Faust's per-record
    write path, not the batched one: a benchmark on it measures a configuration nobody runs)."""
    work.mkdir(parents=True, exist_ok=True)
    broker = None
    if kafka is None:
        broker = EmbeddedBroker(log_file=work / "broker.log").start()
        kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    topics = TopicSettings(partitions=partitions)
    if suffix:
        topics = topics.with_suffix(suffix)
    env = {**kafka.env(), "ASTREG_LOG_LEVEL": "WARNING", "ASTREG_AMI_SECRET": "astreg", "ASTREG_ASTDB_AMI_SECRET": "astreg",
           **(extra_env or {})}
    procs = ProcessGroup(log_dir=work / "logs", env=env)
    pipe = Pipeline(kafka, topics, procs, work / "astreg.sqlite", redis_url=redis_url, redis_prefix=redis_prefix,
                    sinks=sinks)
    try:
        _run_blocking(ensure_topics(kafka, topics))
        for node, port in ami.items():
            procs.start(f"producer-{node}", astreg_argv(
                "producer", "--ami", f"127.0.0.1:{port}", "--ami-user", "astreg",
                "--node", node, *pipe.topic_args()))
        for i in range(workers):
            port = free_port()
            procs.start(f"worker{i + 1}", astreg_argv(
                "worker", "--web-port", str(port), "--store", store, "--data-dir", str(work / f"worker{i + 1}"),
                *pipe.topic_args()))
            pipe.web_urls.append(f"http://127.0.0.1:{port}")
        group = f"-{suffix}" if suffix else ""
        if "sql" in sinks:
            procs.start("sink-sql", astreg_argv("sink", "sql", "--url", f"sqlite+aiosqlite:///{pipe.sqlite_path}",
                                                *(["--group", f"astreg-sink-sql{group}"] if suffix else []),
                                                *pipe.topic_args()))
        if "redis" in sinks:
            procs.start("sink-redis", astreg_argv("sink", "redis", "--url", redis_url, "--key-prefix", redis_prefix,
                                                  *(["--group", f"astreg-sink-redis{group}"] if suffix else []),
                                                  *pipe.topic_args()))
        if "astdb" in sinks:
            for node, port in ami.items():
                procs.start(f"sink-astdb-{node}", astreg_argv(
                    "sink", "astdb", "--ami", f"127.0.0.1:{port}", "--ami-user", "astreg",
                    "--group", f"astreg-sink-astdb-{node}{group}", *pipe.topic_args()))
                pipe.astdb_sinks.append(node)
        for url in pipe.web_urls:
            wait_port("127.0.0.1", int(url.rsplit(":", 1)[1]), 60)
        yield pipe
    finally:
        procs.stop_all(grace=stop_grace)
        if broker is not None:
            broker.stop()


def _wrong_keys(have: dict[str, Any], want: dict[str, str]) -> set[str]:
    """Keys whose value differs from ``want``, missing or extra."""
    return {k for k, v in want.items() if have.get(k) != v} | {k for k in have if k not in want}


Reader = Callable[[], dict[str, Any]]
PartialReader = Callable[[list[str]], dict[str, Any]]


async def wait_stores(stores: dict[str, Reader], want: dict[str, dict[str, str]],
                      timeout: float, poll: float = 0.05,
                      progress: Callable[[float, dict[str, int]], None] | None = None,
                      progress_every: float = 1.0,
                      partial: dict[str, PartialReader] | None = None) -> dict[str, float | None]:
    """Seconds until each store equals its ``want`` (None: not within ``timeout``).

    ``stores``: name → a blocking reader of the store's whole key → node mapping; ``partial``:
    name → a blocking reader of some keys only (absent keys left out). With a partial reader a
    store is read whole once, then only its wrong keys are read again until none is left, and a
    last whole read confirms (a key gone wrong meanwhile sends it back to the wrong ones): at
    100,000 keys per store, reading every store whole at every poll took the CPU the in-process
    simulator needs to answer the AstDB sinks. Reads run in a thread. A store counts as
    converged at the read that first found it equal. ``progress`` gets, every
    ``progress_every`` s, the number of wrong, missing or extra keys per store still waiting."""
    partial = partial or {}
    start = time.monotonic()
    took: dict[str, float | None] = dict.fromkeys(stores)
    wrong: dict[str, set[str] | None] = dict.fromkeys(stores)  # None: read the store whole next
    equal_at: dict[str, float] = {}  # the partial read that found no key wrong, to be confirmed
    counted = -progress_every

    def check(name: str) -> set[str]:
        keys = wrong[name]
        if keys is None or name not in partial:
            return _wrong_keys(stores[name](), want[name])
        have = partial[name](sorted(keys))
        return {k for k in keys if have.get(k) != want[name].get(k)}

    while time.monotonic() - start < timeout:
        waiting = [name for name, t in took.items() if t is None]
        if not waiting:
            break
        again = False
        for name in waiting:
            whole = wrong[name] is None or name not in partial
            try:
                left = await asyncio.to_thread(check, name)
            except sqlite3.Error as exc:  # read while the store is being written: try again
                logger.debug("reading %s: %s", name, exc)
                continue
            now = time.monotonic() - start
            if left:
                wrong[name] = left
                equal_at.pop(name, None)
            elif whole:
                took[name] = equal_at.pop(name, now)
            else:  # every wrong key is right now: one whole read to confirm, at once
                wrong[name], equal_at[name] = None, now
                again = True
        if progress is not None and time.monotonic() - start - counted >= progress_every:
            counted = time.monotonic() - start
            left_now = {n: len(w) for n, w in wrong.items() if took[n] is None and w is not None}
            if left_now:
                progress(counted, left_now)
        if any(t is None for t in took.values()) and not again:
            await asyncio.sleep(poll)
    return took


def primaries(truth: dict[str, Any], live_only: bool = True) -> dict[str, str]:
    """endpoint → expected primary node from a simulator truth dump (SPEC item 3)."""
    best: dict[str, tuple[bool, int, str]] = {}
    for node, info in truth["nodes"].items():
        if live_only and not info.get("up", True):
            continue
        for c in info.get("contacts", []):
            rank = (c["status"] in ("Reachable", "NonQualified"), int(c["registered_seq"]), node)
            if c["endpoint"] not in best or rank > best[c["endpoint"]]:
                best[c["endpoint"]] = rank
    return {ep: r[2] for ep, r in best.items()}
