"""A phone that fails over and comes back within its Expires, end to end.

1003 is on node1, moves to node2 (a new contact there; node1 keeps the old one until it
expires), then re-registers on node1 from its original contact, which node1 still holds. Asterisk
emits no ContactStatus for that refresh, only ChallengeSent/SuccessfulAuth; the producer turns it
into a REFRESH and every store follows: the web API, SQL, Redis and the AstDB of both nodes say
node1 within 2 s of the refresh.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from astreg.settings import KafkaSettings
from astreg.tools.e2e import astdb_nodes, pipeline, redis_nodes, sql_nodes
from producers.simulator import SimConfig, Simulator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PHONE, EP, RESOURCE = 3, "PJSIP/1003", "1003"


async def stores(sim: Simulator, pipe, http: httpx.AsyncClient) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    r = await http.get(f"{pipe.web_urls[0]}/api/v1/endpoints/{quote(EP, safe='')}/node")
    out: dict[str, str | None] = {
        "api": r.text.strip() if r.status_code == 200 else None,
        "sql": sql_nodes(pipe.sqlite_path).get(EP),
        "redis": (await redis_nodes(pipe.redis_url, pipe.redis_prefix)).get(RESOURCE),
    }
    for node in sim.ports:
        out[f"astdb-{node}"] = astdb_nodes(sim.node(node).astdb).get(RESOURCE)
    return out


async def until_all(sim: Simulator, pipe, http: httpx.AsyncClient, node: str, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until every store names ``node``; fails with what each store says at the deadline."""
    t0 = time.monotonic()
    while True:
        seen = await stores(sim, pipe, http)
        if set(seen.values()) == {node}:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not every store says {node} after {timeout} s: {seen}")
        await asyncio.sleep(0.05)  # poll interval of the wait


async def test_a_phone_back_on_a_node_still_holding_its_contact_is_routed_there_everywhere(
        kafka: KafkaSettings, tmp_path: Path, unique: str, redis_url: str, redis_prefix: str) -> None:
    sim = Simulator(SimConfig(nodes=2, phones=6, ami_port=0, seed=4, initial="spread", expires=3600))
    await sim.start()
    try:
        assert sim.location(PHONE) == "node1"
        with pipeline(tmp_path, sim.ports, kafka=kafka, partitions=4, suffix=unique,
                      sinks=("sql", "redis", "astdb"), redis_url=redis_url, redis_prefix=redis_prefix) as pipe:
            async with httpx.AsyncClient(timeout=2.0) as http:
                await until_all(sim, pipe, http, "node1", timeout=90)
                await sim.move(PHONE, "node2")
                await until_all(sim, pipe, http, "node2", timeout=30)
                assert [c["uri"] for c in sim.truth()["nodes"]["node1"]["contacts"] if c["aor"] == RESOURCE]
                await asyncio.sleep(1.1)  # the refresh must move the expiration (one-second resolution)
                await sim.refresh(PHONE, "node1")
                assert sim.location(PHONE) == "node1"
                took = await until_all(sim, pipe, http, "node1", timeout=2.0)
                print(f"move back converged in {took:.2f} s")
    finally:
        await sim.stop()
