"""``astreg sink sql`` as a real process: options, metrics endpoint, clean stop on SIGTERM."""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import httpx
import pytest

from astreg.proc import astreg_argv
from tests.integration.test_sink_sql import expected_rows, table_rows
from tests.support.sink_records import eventually, location, produce

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
