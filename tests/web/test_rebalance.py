"""Lookups while the group rebalances under load: a right node, or 503 with Retry-After — never a
wrong node, never another worker's stale row.

Two workers serve 300 fixed endpoints while 60 more keep moving between nodes (the load). Clients
ask every live worker all the time while the group changes: a third worker joins, one is killed
with SIGKILL, a fourth joins, one leaves cleanly. After each change the group must settle (every
worker ready, every partition owned once) and answer right at once; a group that does not settle
within a minute fails the test, naming the step. A moving endpoint's answer
is stale when the endpoint left that node more than ``LAG`` seconds before the question was
asked: a worker serving rows of a partition it lost would answer like that for ever.

The workers use RocksDB, the store astreg deploys. (Faust's memory store is for tests only: on
a rebalance that hands a worker back a partition it had, its recovery of that partition was
seen waiting for changelog records for ever, on Apache Kafka as on the embedded broker.)
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from schemas.models import ContactStatus
from tests.support.wait import until

from .conftest import NODES, Cluster, Feeder, Worker, wait_ready, wait_total

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LAG = 5.0  # seconds a moved endpoint may still be answered with its previous node


class History:
    """When each moving endpoint was sent to which node (send times, monotonic clock)."""

    def __init__(self) -> None:
        self.moves: dict[str, list[tuple[float, str]]] = {}

    def record(self, endpoint: str, node: str) -> None:
        self.moves.setdefault(endpoint, []).append((time.monotonic(), node))

    def allowed(self, endpoint: str, asked_at: float) -> set[str]:
        """Nodes the endpoint was on at some instant of [asked_at - LAG, asked_at]."""
        moves = self.moves[endpoint]
        out = set()
        for i, (t, node) in enumerate(moves):
            until = moves[i + 1][0] if i + 1 < len(moves) else float("inf")
            if t <= asked_at and until >= asked_at - LAG:
                out.add(node)
        return out

    def current(self, endpoint: str) -> str:
        return self.moves[endpoint][-1][1]


async def test_lookups_during_rebalances_are_right_or_503(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    feeder = Feeder(kafka, topics)
    cluster = Cluster(kafka, topics, procs, feeder, [])
    cluster.start_worker("r1", tmp_path / "r1", store="rocksdb")
    cluster.start_worker("r2", tmp_path / "r2", store="rocksdb")
    fixed = {f"PJSIP/{2000 + i}": NODES[i % 3] for i in range(300)}
    moving = [f"PJSIP/{3000 + i}" for i in range(60)]
    history = History()
    await wait_ready(http, cluster.workers, topics.partitions)
    first = [feeder.contact(e, n, ip="10.1.0.1") for e, n in fixed.items()]
    for i, e in enumerate(moving):
        first.append(feeder.contact(e, NODES[i % 3], ip="10.2.0.1"))
        history.record(e, NODES[i % 3])
    await feeder.send(first)
    await wait_total(http, cluster, len(fixed) + len(moving))

    answers: dict[str, int] = {}
    wrong: list[str] = []
    stop = asyncio.Event()

    async def load() -> None:
        """Moves six endpoints every 0.3 s to their next node (remove there, register here)."""
        k = 0
        while not stop.is_set():
            batch = []
            for e in moving[k % 10 * 6:k % 10 * 6 + 6]:
                old = history.current(e)
                new = NODES[(NODES.index(old) + 1) % 3]
                batch += [feeder.contact(e, old, ip="10.2.0.1", status=ContactStatus.REMOVED),
                          feeder.contact(e, new, ip="10.2.0.1")]
                history.record(e, new)
            await feeder.send(batch)
            k += 1
            await asyncio.sleep(0.3)  # the pace of the load, not a wait for a condition

    async def ask(offset: int) -> None:
        i = offset
        everything = list(fixed) + moving
        while not stop.is_set():
            for w in list(cluster.workers):
                if not w.child.alive():
                    continue
                endpoint = everything[i % len(everything)]
                i += 7
                asked = time.monotonic()
                try:
                    async with http.get(f"{w.url}/api/v1/endpoints/{quote(endpoint, safe='')}/node") as r:
                        body = await r.text()
                        status = r.status
                        retry = r.headers.get("Retry-After")
                except aiohttp.ClientError:
                    answers["conn"] = answers.get("conn", 0) + 1
                    continue
                answers[str(status)] = answers.get(str(status), 0) + 1
                if status == 200:
                    ok = {fixed[endpoint]} if endpoint in fixed else history.allowed(endpoint, asked)
                    if body not in ok:
                        wrong.append(f"{w.child.name}: {endpoint} on {body!r}, expected one of {sorted(ok)}")
                elif status == 503 and retry != "1":
                    wrong.append(f"{w.child.name}: 503 without Retry-After for {endpoint}")
                elif status not in (200, 503):
                    wrong.append(f"{w.child.name}: {endpoint}: HTTP {status} {body!r}")
            await asyncio.sleep(0.01)  # the pace of the clients, not a wait for a condition

    async def settled_and_right(step: str) -> None:
        try:
            await wait_ready(http, cluster.workers, topics.partitions, timeout=60)
        except AssertionError as exc:
            raise AssertionError(f"the group never settled after {step}: {exc}") from None
        for w in cluster.workers:  # right at once, from every worker
            for endpoint in list(fixed)[:: 30]:
                async with http.get(f"{w.url}/api/v1/endpoints/{quote(endpoint, safe='')}/node") as r:
                    assert (r.status, await r.text()) == (200, fixed[endpoint]), (step, w.child.name, endpoint)
        assert wrong == [], (step, wrong[:10])

    tasks = [asyncio.create_task(load()), asyncio.create_task(ask(0)), asyncio.create_task(ask(3))]
    try:
        cluster.start_worker("r3", tmp_path / "r3", store="rocksdb")
        await settled_and_right("r3 joined")
        killed = _named(cluster, "r2")
        killed.child.kill9()
        cluster.workers.remove(killed)
        await settled_and_right("r2 killed with SIGKILL")
        cluster.start_worker("r4", tmp_path / "r4", store="rocksdb")
        await settled_and_right("r4 joined")
        left = _named(cluster, "r3")
        assert left.child.stop() == 0, left.child.log()[-2000:]
        cluster.workers.remove(left)
        await settled_and_right("r3 left")
    finally:
        stop.set()
        # A failure of the load or of a client must not be lost (answers would silently stop).
        ended = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in ended if isinstance(r, BaseException)]
    assert failures == [], f"the load or a client failed: {failures!r}"
    assert wrong == [], wrong[:10]
    assert answers.get("200", 0) > 200, answers
    # after the load stopped, every worker answers every moving endpoint's current node
    async def current_everywhere() -> list[str]:
        bad = []
        for w in cluster.workers:
            for e in moving:
                async with http.get(f"{w.url}/api/v1/endpoints/{quote(e, safe='')}/node") as r:
                    body = await r.text()
                if (r.status, body) != (200, history.current(e)):
                    bad.append(f"{w.child.name} {e}: {r.status} {body!r} != {history.current(e)!r}")
        return bad

    async def all_current() -> bool:
        bad = await current_everywhere()
        if bad:
            problems[:] = bad
        return not bad

    problems: list[str] = []
    try:
        await until(all_current, 30, interval=0.5, what="every worker to answer every moving endpoint's node")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {problems[:10]}") from None


def _named(cluster: Cluster, name: str) -> Worker:
    return next(w for w in cluster.workers if w.child.name == name)
