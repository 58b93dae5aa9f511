"""Sink benchmarks: rows/s each store takes, alone and fed from Kafka through the runner.

``store_rate(kind)`` times ``write_batch`` of fresh upserts straight into the store (the
store's ceiling); ``pipeline_rate(kind)`` produces the records to a locations topic first and
times the runner from its first write to the last (consume + decode + coalesce + write +
commit). Each uses a scratch database / key prefix / simulated node and removes it afterwards.
Run: ``astreg bench sinks [--rows 50000] [--kind postgresql --kind redis ...]``; the functions
return dicts of figures for ``astreg bench``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr

from schemas.models import Contact, ContactStatus, EndpointLocation, LocationStatus

__all__ = [
    "store_rate", "pipeline_rate", "pipeline_rates", "run_all", "KINDS", "sample", "scratch_sink", "main",
]

KINDS = ("postgresql", "mysql", "sqlite", "redis", "astdb")
PG_ADMIN = os.environ.get("ASTREG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("ASTREG_BENCH_MYSQL", "root@127.0.0.1:3306")
REDIS = os.environ.get("ASTREG_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def sample(i: int, version: int = 1) -> EndpointLocation:
    """A realistic location row (one contact) for endpoint PJSIP/<100000+i>; each version has
    the phone on the next node (an update is a move, so every store has something to write)."""
    res = str(100000 + i)
    node = f"node{(i + version - 1) % 4 + 1}"
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    uri = f"sip:{res}@{ip}:5060;transport=udp"
    return EndpointLocation(
        endpoint=f"PJSIP/{res}", technology="PJSIP", resource=res, updated_at_ms=1_700_000_000_000 + version,
        primary_node=node, status=LocationStatus.REGISTERED, contact_uri=uri, ip=ip, port=5060,
        transport="udp", user_agent="Yealink SIP-T46U 108.86.0.20", rtt_us=2100, expires_at_ms=1_800_000_000_000,
        contacts=(Contact(node=node, uri=uri, aor=res, status=ContactStatus.REACHABLE, ip=ip,
                          port=5060, transport="udp", rtt_us=2100, registered_at_ms=1_700_000_000_000,
                          updated_at_ms=1_700_000_000_000, primary=True),),
        nodes=(node,), version=version,
    )


@contextlib.asynccontextmanager
async def scratch_sink(kind: str) -> AsyncIterator[Any]:
    """A set-up sink of ``kind`` on a scratch store, torn down afterwards."""
    name = f"astreg_bench_{uuid.uuid4().hex[:8]}"
    if kind in ("postgresql", "mysql", "sqlite"):
        from sinks.settings import SqlSettings
        from sinks.sql import SqlSink

        async with _scratch_sql(kind, name) as url:
            sink: Any = SqlSink(SqlSettings(url=url, write_timeout=120))
            await sink.setup()
            try:
                yield sink
            finally:
                await sink.close()
    elif kind == "redis":
        from sinks.redis import RedisSink
        from sinks.settings import RedisSettings

        sink = RedisSink(RedisSettings(url=REDIS, key_prefix=f"{name}:", timeout=60))
        await sink.setup()
        try:
            yield sink
        finally:
            await sink.close()  # the runner may have closed it already; clean up on our own link
            import redis.asyncio as aioredis

            client = aioredis.from_url(REDIS)
            keys = [k async for k in client.scan_iter(match=f"{name}:*", count=5000)]
            for i in range(0, len(keys), 5000):
                await client.delete(*keys[i : i + 5000])
            await client.aclose()
    elif kind == "astdb":
        from astreg.broker import free_port, wait_port
        from astreg.proc import ProcessGroup, astreg_argv
        from sinks.astdb import AstDbSink
        from sinks.settings import AstDbSettings

        # The simulated node runs in its own process, as an Asterisk would: this process's CPU
        # (client_cpu_us_per_row) is then the sink's alone, and the two do not share a loop.
        port = free_port()
        with tempfile.TemporaryDirectory() as logs, ProcessGroup(log_dir=Path(logs)) as procs:
            procs.start("simulator", astreg_argv(
                "--log-level", "WARNING", "simulate", "--nodes", "1", "--phones", "0", "--initial", "none",
                "--ami-port", str(port), "--control-port", "0"))
            if not await asyncio.to_thread(wait_port, "127.0.0.1", port, 30):
                raise RuntimeError("the AMI simulator did not start")
            sink = AstDbSink(AstDbSettings(ami=f"127.0.0.1:{port}", ami_secret=SecretStr("astreg"), timeout=60))
            await sink.setup()
            sink.ready = True
            try:
                yield sink
            finally:
                await sink.close()
    else:
        raise ValueError(f"unknown sink kind {kind!r}; one of {', '.join(KINDS)}")


@contextlib.asynccontextmanager
async def _scratch_sql(kind: str, name: str) -> AsyncIterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'astreg.sqlite'}"
        return
    if kind == "postgresql":
        import asyncpg

        admin = await asyncpg.connect(PG_ADMIN)
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
        return
    import asyncmy

    user, _, hostport = MYSQL.partition("@")
    host, _, port = hostport.partition(":")
    conn = await asyncmy.connect(host=host, port=int(port or 3306), user=user, password="")
    async with conn.cursor() as cur:
        await cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        yield f"mysql+asyncmy://{user}@{host}:{port or 3306}/{name}?charset=utf8mb4"
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


async def store_rate(kind: str, *, rows: int = 50_000, batch: int = 5000) -> dict[str, Any]:
    """Upserts/s of ``write_batch`` alone: ``rows`` new endpoints, then the same rows again."""
    from aiokafka import TopicPartition

    records = [sample(i) for i in range(rows)]
    async with scratch_sink(kind) as sink:
        figures: dict[str, Any] = {"sink": kind, "rows": rows, "batch": batch, "load_avg_1m": os.getloadavg()[0]}
        for label, version in (("insert", 1), ("update", 2)):
            recs = records if version == 1 else [sample(i, 2) for i in range(rows)]
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(0, rows, batch):
                # With the offsets, as the runner writes them: four partitions per batch.
                offsets = {TopicPartition("astreg.bench", p): version * rows + i + batch for p in range(4)}
                await sink.write_batch({r.endpoint: r for r in recs[i : i + batch]}, set(), offsets)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            figures[f"{label}_rows_per_s"] = round(rows / elapsed)
            # Client CPU per row: the part of the cost that does not depend on the machine's load.
            figures[f"{label}_client_cpu_us_per_row"] = round(cpu / rows * 1e6, 1)
        return figures


async def _fill(kafka: Any, kind: str, rows: int) -> Any:
    """A fresh locations topic holding ``rows`` sample records; its TopicSettings."""
    from aiokafka import AIOKafkaProducer

    from astreg.settings import TopicSettings
    from astreg.topics import ensure_topics
    from schemas.codec import location_codec

    topics = TopicSettings(partitions=4).with_suffix(f"{kind}{uuid.uuid4().hex[:8]}")
    await ensure_topics(kafka, topics)
    codec = location_codec()
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=kafka.idempotent,
                                linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        for i in range(rows):
            loc = sample(i)
            await producer.send(topics.topic_locations, key=loc.endpoint.encode(), value=codec.encode(loc))
        await producer.flush()
    finally:
        await producer.stop()
    return topics


class _Gated:
    """Holds a runner's first write until ``gate`` opens; times first write → last write."""

    def __init__(self, sink: Any):
        self.write = sink.write_batch
        self.gate = asyncio.Event()
        self.arrived = asyncio.Event()
        self.first: float | None = None
        self.last: float | None = None
        sink.write_batch = self

    async def __call__(self, upserts: Any, deletes: Any, offsets: Any = None) -> None:
        self.arrived.set()
        await self.gate.wait()
        started = time.perf_counter()
        await self.write(upserts, deletes, offsets)
        self.first = self.first or started
        self.last = time.perf_counter()


async def pipeline_rates(kinds: tuple[str, ...], rows: dict[str, int], kafka: Any = None) -> dict[str, Any]:
    """Rows/s from the locations topic into each store through the runner: consume + decode +
    coalesce + write + commit, from the first write to the last (the records are on the topic
    before the runner starts, as in a catch-up).

    The runners start and join their groups together (the embedded broker makes every join
    wait its whole rebalance timeout), each holding its first write; then they are released
    one at a time, so each kind is measured alone. ``kafka``: a running broker, else an
    embedded one is started here."""
    from astreg.broker import EmbeddedBroker
    from astreg.settings import KafkaSettings
    from sinks.base import SinkRunner
    from sinks.settings import RunnerSettings

    broker = None
    if kafka is None:
        broker = EmbeddedBroker().start()
        kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    try:
        topics = {kind: await _fill(kafka, kind, rows[kind]) for kind in kinds}
        async with contextlib.AsyncExitStack() as stack:
            runs: dict[str, tuple[Any, _Gated, asyncio.Task[None]]] = {}
            for kind in kinds:
                sink = await stack.enter_async_context(scratch_sink(kind))
                sink.setup = _noop  # already set up by scratch_sink
                gated = _Gated(sink)
                runner = SinkRunner(sink, kafka, topics[kind], RunnerSettings(batch_size=5000, batch_linger_ms=100))
                runs[kind] = (runner, gated, asyncio.create_task(runner.run()))
            out: dict[str, Any] = {}
            try:
                for kind, (_runner, gated, task) in runs.items():  # every one joined and fetched
                    arrived = asyncio.create_task(gated.arrived.wait())
                    await asyncio.wait({arrived, task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
                    if not gated.arrived.is_set():
                        arrived.cancel()
                        raise RuntimeError(f"{kind} runner never got to its first write")
                await asyncio.sleep(0.5)  # let the fetchers' prefetch settle: measure each kind alone
                for kind, (runner, gated, task) in runs.items():
                    gated.gate.set()
                    deadline = time.monotonic() + 300
                    while runner.written < rows[kind] and not task.done() and time.monotonic() < deadline:
                        await asyncio.sleep(0.02)
                    runner.stop()
                    await task
                    if runner.written < rows[kind] or gated.first is None or gated.last is None:
                        raise RuntimeError(f"{kind} runner wrote {runner.written} of {rows[kind]} rows")
                    out[kind] = {"sink": kind, "rows": rows[kind], "via": "kafka+runner",
                                 "rows_per_s": round(rows[kind] / (gated.last - gated.first))}
            finally:
                for runner, gated, _task in runs.values():
                    runner.stop()
                    gated.gate.set()
                await asyncio.gather(*(t for _, _, t in runs.values()), return_exceptions=True)
            return out
    finally:
        if broker is not None:
            broker.stop()


async def pipeline_rate(kind: str, *, rows: int = 50_000, bootstrap: str | None = None) -> dict[str, Any]:
    """Rows/s from the locations topic into the store through the runner (embedded broker
    unless ``bootstrap`` is given)."""
    from astreg.settings import KafkaSettings

    kafka = KafkaSettings(bootstrap=bootstrap) if bootstrap else None
    return (await pipeline_rates((kind,), {kind: rows}, kafka))[kind]  # type: ignore[no-any-return]


async def _noop() -> None:
    return None


async def run_all(rows: int = 50_000, kinds: tuple[str, ...] = KINDS, kafka: Any = None) -> dict[str, Any]:
    """Every figure for every kind (AstDB with a tenth of the rows: 4 AMI actions per row):
    each store alone, then each through the runner (``kafka``: a running broker, else an
    embedded one)."""
    sizes = {kind: rows // 10 if kind == "astdb" else rows for kind in kinds}
    out: dict[str, Any] = {kind: {"store": await store_rate(kind, rows=sizes[kind])} for kind in kinds}
    for kind, figures in (await pipeline_rates(kinds, sizes, kafka)).items():
        out[kind]["pipeline"] = figures
    return out


@click.command()
@click.option("--rows", default=50_000, show_default=True, show_envvar=True,
              help="Endpoints per run (AstDB: a tenth).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), show_envvar=True,
              help="Sinks to measure, repeatable (default: all).")
def main(rows: int, kinds: tuple[str, ...]) -> None:
    """Upserts/s of each sink, as JSON lines.

    Each sink alone, then fed from a locations topic through the runner (an embedded broker);
    one line of figures per sink.
    """
    for kind in kinds or KINDS:
        click.echo(json.dumps(asyncio.run(run_all(rows, (kind,)))))
