"""Sink benchmarks: rows/s each store takes, alone and fed from Kafka through the runner.

``store_rate(kind)`` times ``write_batch`` of fresh upserts straight into the store (the
store's ceiling); ``pipeline_rate(kind)`` produces the records to a locations topic first and
times the runner from its first write to the last (consume + decode + coalesce + write +
commit). Each uses a scratch database / key prefix / simulated node and removes it afterwards.
Run: ``python -m sinks.bench [--rows 50000] [--kind postgresql --kind redis ...]``; the
functions return dicts of figures for ``astreg bench``.
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

__all__ = ["store_rate", "pipeline_rate", "run_all", "KINDS"]

KINDS = ("postgresql", "mysql", "sqlite", "redis", "astdb")
PG_ADMIN = os.environ.get("ASTREG_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("ASTREG_BENCH_MYSQL", "root@127.0.0.1:3306")
REDIS = os.environ.get("ASTREG_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def sample(i: int, version: int = 1) -> EndpointLocation:
    """A realistic location row (one contact) for endpoint PJSIP/<100000+i>."""
    res = str(100000 + i)
    ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
    uri = f"sip:{res}@{ip}:5060;transport=udp"
    return EndpointLocation(
        endpoint=f"PJSIP/{res}", technology="PJSIP", resource=res, updated_at_ms=1_700_000_000_000 + version,
        primary_node=f"node{i % 4 + 1}", status=LocationStatus.REGISTERED, contact_uri=uri, ip=ip, port=5060,
        transport="udp", user_agent="Yealink SIP-T46U 108.86.0.20", rtt_us=2100, expires_at_ms=1_800_000_000_000,
        contacts=(Contact(node=f"node{i % 4 + 1}", uri=uri, aor=res, status=ContactStatus.REACHABLE, ip=ip,
                          port=5060, transport="udp", rtt_us=2100, registered_at_ms=1_700_000_000_000,
                          updated_at_ms=1_700_000_000_000, primary=True),),
        nodes=(f"node{i % 4 + 1}",), version=version,
    )


@contextlib.asynccontextmanager
async def scratch_sink(kind: str) -> AsyncIterator[Any]:
    """A set-up sink of ``kind`` on a scratch store, torn down afterwards."""
    name = f"astreg_bench_{uuid.uuid4().hex[:8]}"
    if kind in ("postgresql", "mysql", "sqlite"):
        from .settings import SqlSettings
        from .sql import SqlSink

        async with _scratch_sql(kind, name) as url:
            sink: Any = SqlSink(SqlSettings(url=url, write_timeout=120))
            await sink.setup()
            try:
                yield sink
            finally:
                await sink.close()
    elif kind == "redis":
        from .redis import RedisSink
        from .settings import RedisSettings

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
        from producers.simulator import SimConfig, Simulator

        from .astdb import AstDbSink
        from .settings import AstDbSettings

        sim = Simulator(SimConfig(nodes=1, phones=0, ami_port=0, initial="none"))
        await sim.start()
        try:
            sink = AstDbSink(AstDbSettings(ami=f"127.0.0.1:{sim.ports['node1']}", ami_secret=SecretStr("astreg"), timeout=60))
            await sink.setup()
            sink.ready = True
            try:
                yield sink
            finally:
                await sink.close()
        finally:
            await sim.stop()
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
    records = [sample(i) for i in range(rows)]
    async with scratch_sink(kind) as sink:
        figures: dict[str, Any] = {"sink": kind, "rows": rows, "batch": batch, "load_avg_1m": os.getloadavg()[0]}
        for label, version in (("insert", 1), ("update", 2)):
            recs = records if version == 1 else [sample(i, 2) for i in range(rows)]
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(0, rows, batch):
                await sink.write_batch({r.endpoint: r for r in recs[i : i + batch]}, set())
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            figures[f"{label}_rows_per_s"] = round(rows / elapsed)
            # Client CPU per row: the part of the cost that does not depend on the machine's load.
            figures[f"{label}_client_cpu_us_per_row"] = round(cpu / rows * 1e6, 1)
        return figures


async def pipeline_rate(kind: str, *, rows: int = 50_000, bootstrap: str | None = None) -> dict[str, Any]:
    """Rows/s from the locations topic into the store through the runner (embedded broker
    unless ``bootstrap`` is given)."""
    from aiokafka import AIOKafkaProducer

    from astreg.broker import EmbeddedBroker
    from astreg.settings import KafkaSettings, TopicSettings
    from astreg.topics import ensure_topics
    from schemas.codec import location_codec

    from .base import SinkRunner
    from .settings import RunnerSettings

    broker = None
    if bootstrap is None:
        broker = EmbeddedBroker().start()
        kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    else:
        kafka = KafkaSettings(bootstrap=bootstrap)
    try:
        topics = TopicSettings(partitions=4).with_suffix(uuid.uuid4().hex[:8])
        await ensure_topics(kafka, topics)
        codec = location_codec()
        producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=kafka.idempotence,
                                    linger_ms=20, max_batch_size=256 * 1024)
        await producer.start()
        try:
            for i in range(rows):
                loc = sample(i)
                await producer.send(topics.topic_locations, key=loc.endpoint.encode(), value=codec.encode(loc))
            await producer.flush()
        finally:
            await producer.stop()
        async with scratch_sink(kind) as sink:
            runner = SinkRunner(sink, kafka, topics, RunnerSettings(batch_size=5000, batch_linger_ms=100))
            sink.setup = _noop  # already set up by scratch_sink
            task = asyncio.create_task(runner.run())
            try:
                while runner.written < rows and not task.done():
                    await asyncio.sleep(0.05)
            finally:
                runner.stop()
                await task
            assert runner.first_write_at is not None and runner.last_write_at is not None
            elapsed = runner.last_write_at - runner.first_write_at
            return {"sink": kind, "rows": rows, "via": "kafka+runner", "rows_per_s": round(rows / elapsed)}
    finally:
        if broker is not None:
            broker.stop()


async def _noop() -> None:
    return None


async def run_all(rows: int = 50_000, kinds: tuple[str, ...] = KINDS) -> dict[str, Any]:
    """Every figure for every kind (AstDB with a tenth of the rows: 4 AMI actions per row)."""
    out: dict[str, Any] = {}
    for kind in kinds:
        n = rows // 10 if kind == "astdb" else rows
        out[kind] = {"store": await store_rate(kind, rows=n), "pipeline": await pipeline_rate(kind, rows=n)}
    return out


@click.command()
@click.option("--rows", default=50_000, show_default=True, help="Endpoints per run.")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(KINDS), help="Sinks to measure (default: all).")
def main(rows: int, kinds: tuple[str, ...]) -> None:
    """Measure every sink and print the figures as JSON, one line per sink."""
    for kind in kinds or KINDS:
        print(json.dumps(asyncio.run(run_all(rows, (kind,)))), flush=True)


if __name__ == "__main__":
    main()
