"""A node's AstDB after it comes back: fixed within a second or two, one sink per node by default.

A restarted Asterisk reloads its AstDB from disk, which may hold routing keys older than the
topic. The AstDB sink retries an unavailable node every half second however long it was down,
and on reconnect reads the node's actual keys (DBGetTree) and rewrites every wrong one, removes
the ones that should not be there. Without ``--group``, each sink's consumer group names the node
it writes, so the same command on every node gives every node every endpoint.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from producers.simulator import SimConfig, Simulator
from sinks.astdb import AstDbSink, entries
from sinks.settings import AstDbSettings
from tests.support.sink_records import eventually, final_state, location, produce, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def expected(items: list[Any], family: str = "astreg") -> dict[str, str]:
    out: dict[str, str] = {}
    for loc in final_state(items).values():
        out.update({f"/{family}/{k}": v for k, v in entries(loc).items()})
    return out


def tree(sim: Simulator, node: str) -> dict[str, str]:
    return {k: v for k, v in sim.node(node).astdb.as_dict().items()
            if k.startswith("/astreg/") and not k.startswith("/astreg/offsets/")}


def settings(sim: Simulator, *nodes: str) -> AstDbSettings:
    return AstDbSettings(ami=",".join(f"127.0.0.1:{sim.ports[n]}" for n in nodes), ami_user="astreg",
                         ami_secret="astreg", timeout=3)


async def test_a_node_back_with_an_old_astdb_is_fixed_within_two_seconds(kafka, topics, unique) -> None:
    items: list[Any] = [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}", "node2" if i % 2 else "node1"))
                        for i in range(30)]
    await produce(kafka, topics.topic_locations, items)
    want = expected(items)
    sim = Simulator(SimConfig(nodes=1, phones=0, ami_port=0, initial="none", restart_delay=0.05))
    await sim.start()
    try:
        async with running(AstDbSink(settings(sim, "node1")), kafka, topics, group=f"g-{unique}"):
            assert await eventually(lambda: asyncio.sleep(0, tree(sim, "node1")), lambda t: t == want) == want
            await sim.shutdown("node1")
            # While it is down (10 s: longer than any backoff that doubles from 0.2 s to 1.6 s),
            # its AstDB goes back in time: wrong nodes, a key of an endpoint gone, one missing.
            db = sim.node("node1").astdb
            db.put("astreg", "node/1000", "node3")
            db.put("astreg", "node/1001", "node3")
            db.put("astreg", "node/7777", "node1")
            db.delete("astreg", "addr/1002")
            down_until = time.monotonic() + 10
            while time.monotonic() < down_until:
                await asyncio.sleep(0.5)  # the outage itself: the node stays down this long
            assert tree(sim, "node1") != want
            await sim.boot("node1")
            back = time.monotonic()
            got = await eventually(lambda: asyncio.sleep(0, tree(sim, "node1")), lambda t: t == want, timeout=2.0)
            assert got == want, f"not fixed {time.monotonic() - back:.1f} s after the node came back"
    finally:
        await sim.stop()


async def test_one_sink_per_node_without_a_group_flag_gives_every_node_every_endpoint(kafka, topics) -> None:
    items: list[Any] = [(f"PJSIP/{2000 + i}", location(f"PJSIP/{2000 + i}", "node1")) for i in range(40)]
    await produce(kafka, topics.topic_locations, items)
    want = expected(items)
    sim = Simulator(SimConfig(nodes=2, phones=0, ami_port=0, initial="none"))
    await sim.start()
    try:
        s1, s2 = AstDbSink(settings(sim, "node1")), AstDbSink(settings(sim, "node2"))
        async with running(s1, kafka, topics) as r1, running(s2, kafka, topics) as r2:
            got = await eventually(lambda: asyncio.sleep(0, [tree(sim, "node1"), tree(sim, "node2")]),
                                   lambda t: t == [want, want])
            assert got == [want, want]
            assert (r1.group, r2.group) == ("astreg-sink-astdb-node1", "astreg-sink-astdb-node2")
    finally:
        await sim.stop()
