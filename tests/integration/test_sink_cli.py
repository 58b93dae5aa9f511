"""``astreg sink sql`` as a real process: options, metrics endpoint, clean stop on SIGTERM."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from astreg.proc import astreg_argv
from producers.simulator import SimConfig, Simulator
from tests.integration.test_sink_sql import expected_rows, table_rows
from tests.support.databases import pg_admin
from tests.support.redis_server import PrivateRedis
from tests.support.sink_records import eventually, location, produce
from tests.support.wait import until

pytestmark = [pytest.mark.timeout(90), pytest.mark.demo_path]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sink_help_lists_the_stores_and_env_vars() -> None:
    out = subprocess.run(astreg_argv("sink", "sql", "--help"), capture_output=True, text=True, check=True).stdout
    for needle in ("--url", "ASTREG_SQL_URL", "--rebuild", "ASTREG_SINK_GROUP", "--metrics-port", "ASTREG_BOOTSTRAP"):
        assert needle in out
    top = subprocess.run(astreg_argv("sink", "--help"), capture_output=True, text=True, check=True).stdout
    assert all(cmd in top for cmd in ("sql", "astdb", "redis"))


async def test_sink_sql_process_writes_serves_metrics_and_stops(kafka, topics, unique, sqlite_url, procs) -> None:
    items: list[Any] = [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}")) for i in range(10)]
    items += [("PJSIP/1003", None)]
    await produce(kafka, topics.topic_locations, items)
    port = free_port()
    child = procs.start("sink", astreg_argv(
        "sink", "sql", "--bootstrap", kafka.bootstrap, "--embedded" if kafka.embedded else "--no-embedded",
        "--topic-locations", topics.topic_locations, "--topic-deadletter", topics.topic_deadletter,
        "--url", sqlite_url, "--metrics-port", str(port), "--group", f"g-{unique}",
    ))
    rows = await eventually(lambda: table_rows(sqlite_url), lambda r: r == expected_rows(items))
    assert rows == expected_rows(items), child.log()
    async with httpx.AsyncClient() as client:
        metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    assert 'astreg_sink_records_total{outcome="upsert",sink="sql"}' in metrics
    assert 'astreg_sink_store_up{sink="sql"} 1.0' in metrics
    assert child.stop() == 0, child.log()
    assert "sink sql stopped" in child.log()


# ------------------------------------------------------------------ stopping while the store is down


def _sink_argv(kafka: Any, topics: Any, group: str, kind: str, *store: str) -> list[str]:
    return astreg_argv(
        "sink", kind, "--bootstrap", kafka.bootstrap, "--embedded" if kafka.embedded else "--no-embedded",
        "--topic-locations", topics.topic_locations, "--topic-deadletter", topics.topic_deadletter,
        "--group", group, "--backoff-max", "0.5", *store,
    )


class _Store:
    """One store of each kind that a test can take down and bring back."""

    def __init__(self, kind: str, unique: str, tmp_path: Path):
        self.kind = kind
        self.db = unique
        self.tmp_path = tmp_path
        self.sim: Any = None
        self.redis: PrivateRedis | None = None

    async def open(self) -> list[str]:
        if self.kind == "sql":
            await pg_admin(f'CREATE DATABASE "{self.db}"')
            return ["--url", f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.db}", "--write-timeout", "2"]
        if self.kind == "redis":
            self.redis = PrivateRedis(self.tmp_path / "redis").start()
            return ["--url", self.redis.url, "--timeout", "1"]
        self.sim = Simulator(SimConfig(nodes=1, phones=0, host="127.0.0.1", ami_port=0, initial="none"))
        await self.sim.start()
        return ["--ami", f"127.0.0.1:{self.sim.ports['node1']}", "--ami-user", "astreg", "--timeout", "2"]

    async def down(self) -> None:
        if self.kind == "sql":
            await pg_admin(f'ALTER DATABASE "{self.db}" ALLOW_CONNECTIONS false')
            await pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.db}'")
        elif self.redis is not None:
            self.redis.stop()
        else:
            await self.sim.crash("node1", mode="close")

    async def up(self) -> None:
        if self.kind == "sql":
            await pg_admin(f'ALTER DATABASE "{self.db}" ALLOW_CONNECTIONS true')
        elif self.redis is not None:
            self.redis.start()
        else:
            await self.sim.recover("node1")

    async def close(self) -> None:
        if self.kind == "sql":
            await pg_admin(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        elif self.redis is not None:
            self.redis.stop()
        elif self.sim is not None:
            await self.sim.stop()


@pytest.mark.parametrize("when", ["at-start", "while-running"])
@pytest.mark.parametrize("kind", ["sql", "redis", "astdb"])
async def test_sigterm_while_the_store_is_down_exits_0(kafka, topics, unique, procs, tmp_path, kind, when) -> None:
    items: list[Any] = [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}")) for i in range(5)]
    await produce(kafka, topics.topic_locations, items)
    store = _Store(kind, unique, tmp_path)
    env = {"ASTREG_ASTDB_AMI_SECRET": "astreg"}
    try:
        args = await store.open()
        if when == "at-start":
            await store.down()
        child = procs.start("sink", _sink_argv(kafka, topics, f"g-{unique}", kind, *args), env=env)
        if when == "while-running":
            await until(lambda: "caught up" in child.log(), 30, what="the sink to write the first records")
            await store.down()
            await produce(kafka, topics.topic_locations, [("PJSIP/1099", location("PJSIP/1099"))])
        await until(lambda: "retrying" in child.log(), 30, what="the sink to find its store down")
        code = child.stop()
        log = child.log()
        assert code == 0, log
        assert "Traceback" not in log, log
        assert f"sink {kind} stopping" in log and "nothing committed past what the store holds" in log, log
        # Offsets consistent: once the store is back, a new run holds everything.
        await store.up()
        child = procs.start("sink2", _sink_argv(kafka, topics, f"g-{unique}", kind, *args), env=env)
        await until(lambda: "caught up" in child.log(), 45, what="the second run to catch up")
        assert child.stop() == 0, child.log()
    finally:
        await store.close()


async def test_wrong_credentials_are_one_clear_line_and_a_nonzero_exit(kafka, topics, unique, procs, pg_url,
                                                                     private_redis) -> None:
    # Fatal configuration: no retry loop, no traceback, the reason on one line.
    bad_pg = pg_url.replace("postgres@", "nosuchuser@")
    child = procs.start("sql", _sink_argv(kafka, topics, f"g-{unique}", "sql", "--url", bad_pg))
    assert child.proc.wait(60) not in (0, None), child.log()
    assert "Traceback" not in child.log() and "nosuchuser" in child.log(), child.log()
    bad_redis = private_redis.url.replace("redis://", "redis://:wrong@")
    private_redis.client().config_set("requirepass", "right")
    child = procs.start("redis", _sink_argv(kafka, topics, f"g-{unique}", "redis", "--url", bad_redis))
    assert child.proc.wait(60) not in (0, None), child.log()
    assert "Traceback" not in child.log() and "password" in child.log().lower(), child.log()
