"""AstDB sink against the AMI simulator (byte-exact Asterisk 22 DB* answers), fed through Kafka."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import pytest

from producers.simulator import SimConfig, Simulator
from schemas.models import DeviceState
from sinks.astdb import AstDbSink, entries
from sinks.metrics import SinkMetrics
from sinks.settings import AstDbSettings
from tests.support.sink_records import NASTY, eventually, final_state, location, produce, running

pytestmark = pytest.mark.timeout(90)


def expected(items: list[Any], family: str = "astreg") -> dict[str, str]:
    """The dialplan keys of a family equal to the log (all endpoints here have one technology)."""
    out: dict[str, str] = {}
    for loc in final_state(items).values():
        out.update({f"/{family}/{k}": v for k, v in entries(loc).items()})
    return out


async def tree(sim: Simulator, node: str, family: str = "astreg") -> dict[str, str]:
    """The family's dialplan keys on a node (the sink's offsets/ keys left out)."""
    return {k: v for k, v in sim.node(node).astdb.as_dict().items()
            if k.startswith(f"/{family}/") and not k.startswith(f"/{family}/offsets/")}


async def trees(sim: Simulator) -> list[dict[str, str]]:
    return [await tree(sim, "node1"), await tree(sim, "node2")]


async def _value(v: float) -> float:
    return v


@contextlib.asynccontextmanager
async def two_nodes() -> AsyncIterator[tuple[Simulator, AstDbSettings]]:
    """Two simulated nodes with an empty AstDB, and sink settings for both."""
    sim = Simulator(SimConfig(nodes=2, phones=0, host="127.0.0.1", ami_port=0, initial="none"))
    await sim.start()
    try:
        ports = sim.ports
        yield sim, AstDbSettings(ami=f"127.0.0.1:{ports['node1']},127.0.0.1:{ports['node2']}", ami_user="astreg",
                                 ami_secret="astreg", timeout=3)
    finally:
        await sim.stop()


async def test_astdb_two_nodes_equal_topic_survive_restart_and_hostile_names(kafka, topics, unique) -> None:
    items: list[Any] = [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}", "node1")) for i in range(20)]
    items += [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}", "node2", state=DeviceState.INUSE, version=2))
              for i in range(0, 20, 3)]
    items += [(f"PJSIP/{1000 + i}", None) for i in range(0, 20, 4)]
    items += [(name, location(name, "node2", user_agent="x")) for name in NASTY]
    items += [("PJSIP/1019", location("PJSIP/1019", None, ip="2001:db8::1", version=3))]
    await produce(kafka, topics.topic_locations, items)
    want = expected(items)

    sim = Simulator(SimConfig(nodes=2, phones=0, host="127.0.0.1", ami_port=0, initial="none"))
    await sim.start()
    try:
        # Left over from an earlier run, and a key of another family the sink must not touch.
        sim.node("node1").astdb.put("astreg", "node/9999", "node1")
        sim.node("node1").astdb.put("other", "keep", "me")
        ports = sim.ports
        settings = AstDbSettings(
            ami=f"127.0.0.1:{ports['node1']},127.0.0.1:{ports['node2']}", ami_user="astreg",
            ami_secret="astreg", timeout=3,
        )
        sink = AstDbSink(settings)
        async with running(sink, kafka, topics, group=f"g-{unique}", backoff_max=0.5) as runner:
            got = await eventually(lambda: trees(sim), lambda t: t == [want, want])
            assert got == [want, want]
            assert sim.node("node1").astdb.get("other", "keep") == "me"

            # The dialplan's reads: ${DB(astreg/node/1001)} and friends.
            db = sim.node("node2").astdb
            assert db.get("astreg", "node/1001") == "node1"
            assert db.get("astreg", "state/1003") == "INUSE"
            assert db.get("astreg", "addr/1019") == "[2001:db8::1]:5060"
            assert db.get("astreg", "node/1019") is None  # nothing routable: no key
            assert db.get("astreg", "node/1000") is None  # tombstone
            # A CR/LF name is one key, percent-encoded; the injected "DBDelTree" did nothing.
            crlf = NASTY[2].partition("/")[2]
            assert db.get("astreg", "node/line%0D%0AAction%3A%20DBDelTree%0D%0AFamily%3A%20astreg") == "node2"
            assert unquote("line%0D%0AAction%3A%20DBDelTree%0D%0AFamily%3A%20astreg") == crlf
            assert db.get("astreg", "node/a%2Fb%2Fc") == "node2"  # a slash never opens a sub-tree
            assert db.get("astreg", "node/bj%C3%B8rn-%E6%97%A5%E6%9C%AC") == "node2"

            # node1 restarts and comes back with a damaged AstDB: the sink reconciles it on reconnect.
            await sim.restart("node1")
            sim.node("node1").astdb.delete_tree("astreg")
            sim.node("node1").astdb.put("astreg", "node/ghost", "node7")
            before = sink.reconciles
            got = await eventually(lambda: trees(sim), lambda t: t == [want, want] and sink.reconciles > before)
            assert got == [want, want]
            assert sink.reconciles > before

            # The node is down for a while: records keep coming, nothing is lost when it is back.
            await sim.crash("node2", mode="close")
            more = [("PJSIP/1001", location("PJSIP/1001", "node2", version=9)), ("PJSIP/1002", None)]
            await produce(kafka, topics.topic_locations, more)
            await sim.recover("node2")
            want2 = expected(items + more)
            got = await eventually(lambda: trees(sim), lambda t: t == [want2, want2])
            assert got == [want2, want2]

            # A hung node (TCP open, no answers): the write times out, is retried, and lands
            # once the node talks again.
            unavailable = runner.metrics.unavailable.labels("astdb")
            before = unavailable._value.get()
            await sim.crash("node1", mode="halfopen")
            last = [("PJSIP/1004", location("PJSIP/1004", "node3", version=10))]
            await produce(kafka, topics.topic_locations, last)
            await eventually(lambda: _value(unavailable._value.get()), lambda v: v > before)
            assert unavailable._value.get() > before
            await sim.recover("node1")
            want3 = expected(items + more + last)
            got = await eventually(lambda: trees(sim), lambda t: t == [want3, want3])
        assert got == [want3, want3]
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def synced_sink(kafka: Any, topics: Any, group: str, sim: Simulator, settings: AstDbSettings,
                      items: list[Any], metrics: SinkMetrics | None = None) -> AsyncIterator[AstDbSink]:
    """A running AstDB sink, once both nodes hold ``items``."""
    sink = AstDbSink(settings)
    async with running(sink, kafka, topics, metrics=metrics, group=group, backoff_max=0.5):
        want = expected(items)
        await eventually(lambda: trees(sim), lambda t: t == [want, want])
        yield sink


async def test_astdb_sends_only_changed_keys_and_nothing_on_a_restart(kafka, topics, unique) -> None:
    """A move changes ``node/`` alone: one DBPut per node, not four. A sink restarted against
    nodes that already hold the topic reads them (DBGetTree) and writes nothing."""
    items: list[Any] = [(f"PJSIP/{2000 + i}", location(f"PJSIP/{2000 + i}", "node1")) for i in range(30)]
    await produce(kafka, topics.topic_locations, items)
    async with two_nodes() as (sim, settings):
        async with synced_sink(kafka, topics, f"g-{unique}", sim, settings, items) as sink:
            assert sink.actions_sent == 2 * 4 * 30  # the first reconcile: every key, both nodes
            sent = sink.actions_sent
            moves = [(f"PJSIP/{2000 + i}", location(f"PJSIP/{2000 + i}", "node2", version=2)) for i in range(10)]
            await produce(kafka, topics.topic_locations, moves)
            want = expected(items + moves)
            got = await eventually(lambda: trees(sim), lambda t: t == [want, want])
            assert got == [want, want]
            assert sink.actions_sent - sent == 2 * 10  # node/ only, on both nodes
            sent = sink.actions_sent
            gone = [("PJSIP/2029", None)]
            await produce(kafka, topics.topic_locations, gone)
            want = expected(items + moves + gone)
            await eventually(lambda: trees(sim), lambda t: t == [want, want])
            assert sink.actions_sent - sent == 2 * 4  # a tombstone: the four keys it had

        again = AstDbSink(settings)
        async with running(again, kafka, topics, group=f"g2-{unique}", backoff_max=0.5):
            await eventually(lambda: _value(again.reconciles), lambda n: n >= 2)
            assert again.ready and again.actions_sent == 0
            assert await trees(sim) == [want, want]


async def test_astdb_node_refusing_writes_is_retried_and_a_too_long_key_is_a_dead_letter(kafka, topics, unique) -> None:
    """A node whose AstDB refuses writes (disk full) is unavailable, not a reason to drop rows:
    the batch is retried until the node takes it, and the refused keys are not taken as
    written. A key longer than Asterisk stores (family + key ≤ 253 bytes) is refused by every
    node every time: that row alone goes to the dead-letter topic, the others land."""
    from tests.support.locations import read_all

    items: list[Any] = [(f"PJSIP/{3000 + i}", location(f"PJSIP/{3000 + i}", "node1")) for i in range(5)]
    await produce(kafka, topics.topic_locations, items)
    metrics = SinkMetrics()
    unavailable = metrics.unavailable.labels("astdb")
    async with two_nodes() as (sim, settings), synced_sink(kafka, topics, f"g-{unique}", sim, settings, items, metrics):
        before = unavailable._value.get()
        await sim.astdb_read_only("node2")
        moved = [("PJSIP/3001", location("PJSIP/3001", "node2", version=2)), ("PJSIP/3002", None)]
        await produce(kafka, topics.topic_locations, moved)
        await eventually(lambda: _value(unavailable._value.get()), lambda v: v > before + 1)
        assert (await tree(sim, "node1"))["/astreg/node/3001"] == "node2"  # node1 took it
        assert (await tree(sim, "node2"))["/astreg/node/3001"] == "node1"  # refused, retried
        assert "/astreg/node/3002" not in await tree(sim, "node1")
        assert "/astreg/node/3002" in await tree(sim, "node2")  # the delete too
        await sim.astdb_read_only("node2", False)
        want = expected(items + moved)
        got = await eventually(lambda: trees(sim), lambda t: t == [want, want])
        assert got == [want, want]  # nothing produced since: the retry delivered it

        huge = "PJSIP/" + "x" * 240  # "contact/" + 240 bytes + "astreg" + 2 > 255
        more = [(huge, location(huge, "node1")), ("PJSIP/3009", location("PJSIP/3009", "node2"))]
        await produce(kafka, topics.topic_locations, more)
        letters = await eventually(lambda: read_all(kafka, topics.topic_deadletter),
                                   lambda recs: any(k == huge.encode() for k, _, _ in recs))
        (headers,) = [dict(h) for k, _, h in letters if k == huge.encode()]
        assert b"MAX_DB_FIELD" in headers["astreg.reason"], headers
        want = expected(items + moved + more[1:])
        got = await eventually(lambda: trees(sim), lambda t: t == [want, want])
        assert got == [want, want]
