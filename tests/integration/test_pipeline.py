"""The demo path on the session's broker: simulator → producers → worker → sinks (SQLite, AstDB
on every node) → API, as `astreg demo` wires it. CI runs it on Apache Kafka and again on the
embedded broker (``-m demo_path --kafka=embedded``), so the demo's default keeps working.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from astreg.settings import KafkaSettings
from astreg.tools.e2e import astdb_nodes, astdb_want, pipeline, primaries, sql_nodes
from producers.simulator import SimConfig, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.demo_path, pytest.mark.timeout(180)]


async def test_simulated_cluster_reaches_sql_astdb_and_api(kafka: KafkaSettings, tmp_path: Path, unique: str) -> None:
    sim = Simulator(SimConfig(nodes=3, phones=60, ami_port=0, seed=11, initial="spread"))
    await sim.start()
    try:
        with pipeline(tmp_path, sim.ports, kafka=kafka, partitions=4, suffix=unique, sinks=("sql", "astdb")) as pipe:
            async def converged() -> bool:
                want = primaries(sim.truth())
                return sql_nodes(pipe.sqlite_path) == want and all(
                    astdb_nodes(sim.node(n).astdb) == astdb_want(want) for n in sim.ports)

            for step in range(3):  # a move, an unregistration, a return: each must arrive everywhere
                await sim.move(1 + step, "node3" if step % 2 else "node1")
                await sim.unregister(10 + step, sim.location(10 + step) or "node1")
                if step:
                    await sim.register(10 + step - 1, "node2")
                deadline = time.monotonic() + 60
                while not await converged() and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)  # poll interval; the assertions below say what differs
                want = primaries(sim.truth())
                assert sql_nodes(pipe.sqlite_path) == want, (step, pipe.procs.children[-1].log()[-2000:])
                for n in sim.ports:
                    assert astdb_nodes(sim.node(n).astdb) == astdb_want(want), (step, n)
            async with httpx.AsyncClient() as http:
                for endpoint, node in list(primaries(sim.truth()).items())[:20]:
                    r = await http.get(f"{pipe.web_urls[0]}/api/v1/endpoints/{quote(endpoint, safe='')}/node")
                    assert (r.status_code, r.text.strip()) == (200, node), endpoint
    finally:
        await sim.stop()
