"""Sinks that never lose a row silently, on the real stores of this machine.

Each test is a fault a deployment meets: a database dropped and recreated empty under a running
sink, a store restored from an older backup, Redis out of memory or read-only, a contact host
longer than 64 characters, one resource registered by two technologies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from producers.simulator import SimConfig, Simulator
from sinks.astdb import AstDbSink
from sinks.redis import RedisSettings, RedisSink
from sinks.settings import AstDbSettings
from sinks.sql import SqlSettings, SqlSink
from tests.integration.test_sink_redis import expected as redis_expected
from tests.integration.test_sink_redis import snapshot as redis_snapshot
from tests.integration.test_sink_sql import expected_rows, table_rows
from tests.support.databases import pg_admin, recreate_empty
from tests.support.redis_server import PrivateRedis
from tests.support.sink_records import eventually, location, produce, running
from tests.support.wait import until

pytestmark = pytest.mark.timeout(120)

# A contact host as SIP allows it (RFC 3261 hostname: labels of up to 63 characters): 200 characters.
LONG_HOST = ".".join(["a" * 63, "b" * 63, "c" * 60, "example.net"])
assert len(LONG_HOST) == 200


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


async def _true(value: Any) -> Any:
    return value


def _items(base: int, count: int, node: str = "node1", version: int = 1) -> list[Any]:
    return [(f"PJSIP/{base + i}", location(f"PJSIP/{base + i}", node, version=version)) for i in range(count)]


# ------------------------------------------------------------------ SQL


async def test_sql_database_recreated_empty_while_running_is_rebuilt(kafka, topics, unique, db_url) -> None:
    first = _items(1000, 20)
    more = [("PJSIP/1100", location("PJSIP/1100", "node2"))]
    group = f"g-{unique}"
    await produce(kafka, topics.topic_locations, first)
    sink = SqlSink(SqlSettings(url=db_url, write_timeout=3))
    async with running(sink, kafka, topics, group=group, backoff_max=0.5) as runner:
        await eventually(lambda: table_rows(db_url), lambda r: r == expected_rows(first))
        lost = runner.metrics.store_lost.labels("sql")
        before = lost._value.get()
        await recreate_empty(db_url)
        await produce(kafka, topics.topic_locations, more)
        # Found while running, without a restart: the table is back with every row.
        rows = await eventually(lambda: table_rows(db_url), lambda r: r == expected_rows(first + more), timeout=45)
        assert rows == expected_rows(first + more)
        assert lost._value.get() > before
    # A restart resumes from what the store holds: nothing is missing afterwards either.
    async with running(SqlSink(SqlSettings(url=db_url)), kafka, topics, group=group) as runner:
        await until(lambda: runner.caught_up.is_set(), 30, what="the restarted sink to catch up")
        assert await table_rows(db_url) == expected_rows(first + more)


async def test_postgres_restored_from_an_older_backup_is_rebuilt_at_start(kafka, topics, unique, pg_url) -> None:
    first = _items(2000, 20)
    second = _items(2000, 10, "node2", version=2) + [("PJSIP/2015", None)] + _items(2100, 5)
    group = f"g-{unique}"
    backup = f"{unique}_bak"
    await produce(kafka, topics.topic_locations, first)
    async with running(SqlSink(SqlSettings(url=pg_url)), kafka, topics, group=group):
        await eventually(lambda: table_rows(pg_url), lambda r: r == expected_rows(first))
    await pg_admin(f'CREATE DATABASE "{backup}" TEMPLATE "{unique}"')  # the operator's backup
    try:
        await produce(kafka, topics.topic_locations, second)
        async with running(SqlSink(SqlSettings(url=pg_url)), kafka, topics, group=group):
            await eventually(lambda: table_rows(pg_url), lambda r: r == expected_rows(first + second))
        # The database is restored from the older backup while the sink is stopped.
        await pg_admin(f'DROP DATABASE "{unique}" WITH (FORCE)')
        await pg_admin(f'ALTER DATABASE "{backup}" RENAME TO "{unique}"')
        async with running(SqlSink(SqlSettings(url=pg_url)), kafka, topics, group=group) as runner:
            rows = await eventually(lambda: table_rows(pg_url), lambda r: r == expected_rows(first + second))
            assert runner.rebuilds_done >= 1
        assert rows == expected_rows(first + second)
    finally:
        await pg_admin(f'DROP DATABASE IF EXISTS "{backup}" WITH (FORCE)')


async def test_sql_long_host_fits_an_older_table_too(kafka, topics, unique, db_url) -> None:
    # A table created by an earlier release had ip VARCHAR(64): the sink widens it.
    engine = create_async_engine(db_url)
    async with engine.begin() as conn:
        await conn.execute(text(
            "CREATE TABLE astreg_locations (endpoint VARCHAR(255) PRIMARY KEY, technology VARCHAR(32) NOT NULL,"
            " resource VARCHAR(255) NOT NULL, node VARCHAR(255), ip VARCHAR(64), port INTEGER,"
            " transport VARCHAR(16), status VARCHAR(16) NOT NULL, device_state VARCHAR(16) NOT NULL,"
            " updated_at BIGINT NOT NULL)"
        ))
    await engine.dispose()
    items = [("PJSIP/3001", location("PJSIP/3001", ip=LONG_HOST)), ("PJSIP/3002", location("PJSIP/3002"))]
    await produce(kafka, topics.topic_locations, items)
    async with running(SqlSink(SqlSettings(url=db_url)), kafka, topics, group=f"g-{unique}") as runner:
        rows = await eventually(lambda: table_rows(db_url), lambda r: r == expected_rows(items))
        assert runner.metrics.records.labels("sql", "deadletter")._value.get() == 0
    assert rows["PJSIP/3001"]["ip"] == LONG_HOST


# ------------------------------------------------------------------ one key per resource

# (record, the node the dialplan key must then hold). PJSIP ranks before SIP whatever the order
# the records arrive in; the key goes only when no technology has the resource registered.
PJSIP_REMOVED_FIRST: list[tuple[tuple[str, Any], str | None]] = [
    (("SIP/7777", location("SIP/7777", "node2", ip="192.0.2.2")), "node2"),
    (("PJSIP/7777", location("PJSIP/7777", "node1", ip="192.0.2.1")), "node1"),
    (("SIP/7777", location("SIP/7777", "node3", ip="192.0.2.3", version=2)), "node1"),
    (("PJSIP/7777", None), "node3"),
    (("SIP/7777", None), None),
]
SIP_REMOVED_FIRST: list[tuple[tuple[str, Any], str | None]] = [
    (("PJSIP/7777", location("PJSIP/7777", "node1", ip="192.0.2.1")), "node1"),
    (("SIP/7777", location("SIP/7777", "node2", ip="192.0.2.2")), "node1"),
    (("PJSIP/7777", location("PJSIP/7777", None, ip="192.0.2.1", version=2)), "node2"),  # nothing routable
    (("PJSIP/7777", location("PJSIP/7777", "node1", ip="192.0.2.1", version=3)), "node1"),
    (("SIP/7777", None), "node1"),
    (("PJSIP/7777", None), None),
]
ORDERS = pytest.mark.parametrize("steps", [PJSIP_REMOVED_FIRST, SIP_REMOVED_FIRST], ids=["pjsip-first", "sip-first"])


async def _walk(kafka: Any, topics: Any, runner: Any, steps: list[Any], read_node: Any) -> list[Any]:
    """Produce each step's record, wait until the sink wrote it, read the dialplan key."""
    seen = []
    for n, (record, _want) in enumerate(steps, 1):
        await produce(kafka, topics.topic_locations, [record])
        await until(lambda n=n: runner.written >= n, 30, what=f"the sink to write step {n}")
        seen.append(await read_node())
    return seen


@ORDERS
async def test_sql_route_view_holds_one_node_per_resource(kafka, topics, unique, db_url, steps) -> None:
    async def read_node() -> Any:
        engine = create_async_engine(db_url)
        try:
            async with engine.connect() as conn:
                rows = (await conn.execute(text(
                    "SELECT node FROM astreg_routes WHERE resource = '7777'"))).all()
        finally:
            await engine.dispose()
        assert len(rows) <= 1, rows
        return rows[0][0] if rows else None

    async with running(SqlSink(SqlSettings(url=db_url)), kafka, topics, group=f"g-{unique}", batch_linger_ms=0) as runner:
        await until(lambda: runner.caught_up.is_set(), 30, what="the sink to start")
        seen = await _walk(kafka, topics, runner, steps, read_node)
    assert seen == [want for _, want in steps]


@ORDERS
async def test_redis_node_key_holds_one_node_per_resource(kafka, topics, unique, redis_url, redis_prefix, steps) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)

    async def read_node() -> Any:
        return await client.get(f"{redis_prefix}node:7777")

    try:
        settings = RedisSettings(url=redis_url, key_prefix=redis_prefix)
        async with running(RedisSink(settings), kafka, topics, group=f"g-{unique}", batch_linger_ms=0) as runner:
            await until(lambda: runner.caught_up.is_set(), 30, what="the sink to start")
            seen = await _walk(kafka, topics, runner, steps, read_node)
    finally:
        await client.aclose()
    assert seen == [want for _, want in steps]


@ORDERS
async def test_astdb_node_key_holds_one_node_per_resource(kafka, topics, unique, steps) -> None:
    sim = Simulator(SimConfig(nodes=1, phones=0, host="127.0.0.1", ami_port=0, initial="none"))
    await sim.start()
    db = sim.node("node1").astdb

    async def read_node() -> Any:
        node = db.get("astreg", "node/7777")
        if node is not None:  # the other keys describe the same endpoint as node/
            ip = {"node1": "192.0.2.1", "node2": "192.0.2.2", "node3": "192.0.2.3"}[node]
            assert db.get("astreg", "addr/7777") == f"{ip}:5060"
        return node

    try:
        settings = AstDbSettings(ami=f"127.0.0.1:{sim.ports['node1']}", ami_user="astreg", ami_secret="astreg", timeout=3)
        sink = AstDbSink(settings)
        async with running(sink, kafka, topics, group=f"g-{unique}", batch_linger_ms=0) as runner:
            await until(lambda: sink.ready and runner.caught_up.is_set(), 30, what="the sink to start")
            seen = await _walk(kafka, topics, runner, steps, read_node)
        assert db.get("astreg", "state/7777") is None  # the last removal took every key
    finally:
        await sim.stop()
    assert seen == [want for _, want in steps]


# ------------------------------------------------------------------ Redis faults


async def test_redis_restored_from_an_older_snapshot_is_rebuilt(kafka, topics, unique, private_redis: PrivateRedis,
                                                                tmp_path: Path) -> None:
    first = _items(4000, 20)
    second = _items(4000, 10, "node2", version=2) + [("PJSIP/4019", None)] + _items(4100, 5)
    prefix = "astreg:"
    settings = RedisSettings(url=private_redis.url, key_prefix=prefix, timeout=1)
    async with running(RedisSink(settings), kafka, topics, group=f"g-{unique}", backoff_max=0.5) as runner:
        await produce(kafka, topics.topic_locations, first)
        await eventually(lambda: redis_snapshot(private_redis.url, prefix), lambda s: s == redis_expected(prefix, first))
        private_redis.save_snapshot(tmp_path / "older.rdb")
        await produce(kafka, topics.topic_locations, second)
        await eventually(lambda: redis_snapshot(private_redis.url, prefix),
                         lambda s: s == redis_expected(prefix, first + second))
        lost = runner.metrics.store_lost.labels("redis")
        before = lost._value.get()
        private_redis.restart_from(tmp_path / "older.rdb")
        got = await eventually(lambda: redis_snapshot(private_redis.url, prefix),
                               lambda s: s == redis_expected(prefix, first + second) and lost._value.get() > before)
        assert got == redis_expected(prefix, first + second)
        assert lost._value.get() > before


async def _redis_refuses(server: PrivateRedis, how: str) -> None:
    client = server.client()
    if how == "oom":
        client.config_set("maxmemory", "1")  # every write: "OOM command not allowed ..."
    else:
        client.execute_command("REPLICAOF", "127.0.0.1", "1")  # no master there: READONLY, data kept


async def _redis_takes_writes(server: PrivateRedis, how: str) -> None:
    client = server.client()
    if how == "oom":
        client.config_set("maxmemory", "0")
    else:
        client.execute_command("REPLICAOF", "NO", "ONE")


@pytest.mark.parametrize("how", ["oom", "readonly"])
async def test_redis_refusing_writes_is_retried_not_a_crash(kafka, topics, unique, private_redis: PrivateRedis,
                                                           how: str) -> None:
    first = _items(5000, 10)
    second = _items(5000, 10, "node3", version=2) + [("PJSIP/5009", None)]
    prefix = "astreg:"
    settings = RedisSettings(url=private_redis.url, key_prefix=prefix, timeout=1)
    async with running(RedisSink(settings), kafka, topics, group=f"g-{unique}", backoff_max=0.5) as runner:
        await produce(kafka, topics.topic_locations, first)
        await eventually(lambda: redis_snapshot(private_redis.url, prefix), lambda s: s == redis_expected(prefix, first))
        unavailable = runner.metrics.unavailable.labels("redis")
        before = unavailable._value.get()
        await _redis_refuses(private_redis, how)
        await produce(kafka, topics.topic_locations, second)
        await until(lambda: unavailable._value.get() > before + 1, 20, what="the sink to retry the refused write")
        assert runner.metrics.store_up.labels("redis")._value.get() == 0
        await _redis_takes_writes(private_redis, how)
        got = await eventually(lambda: redis_snapshot(private_redis.url, prefix),
                               lambda s: s == redis_expected(prefix, first + second))
        assert got == redis_expected(prefix, first + second)
        assert runner.metrics.records.labels("redis", "deadletter")._value.get() == 0


async def test_redis_and_astdb_store_a_long_host(kafka, topics, unique, redis_url, redis_prefix) -> None:
    items = [("PJSIP/3001", location("PJSIP/3001", ip=LONG_HOST))]
    await produce(kafka, topics.topic_locations, items)
    settings = RedisSettings(url=redis_url, key_prefix=redis_prefix)
    async with running(RedisSink(settings), kafka, topics, group=f"g-{unique}"):
        got = await eventually(lambda: redis_snapshot(redis_url, redis_prefix),
                               lambda s: s == redis_expected(redis_prefix, items))
    assert got[f"{redis_prefix}loc:PJSIP/3001"]["ip"] == LONG_HOST
    sim = Simulator(SimConfig(nodes=1, phones=0, host="127.0.0.1", ami_port=0, initial="none"))
    await sim.start()
    try:
        astdb = AstDbSink(AstDbSettings(ami=f"127.0.0.1:{sim.ports['node1']}", ami_user="astreg", ami_secret="astreg"))
        async with running(astdb, kafka, topics, group=f"a-{unique}"):
            addr = await eventually(lambda: _true(sim.node("node1").astdb.get("astreg", "addr/3001")), bool)
        assert addr == f"{LONG_HOST}:5060"
    finally:
        await sim.stop()


# ------------------------------------------------------------------ AstDB emptied while running


async def test_astdb_family_emptied_while_running_is_rewritten(kafka, topics, unique) -> None:
    items = _items(6000, 15)
    await produce(kafka, topics.topic_locations, items)
    sim = Simulator(SimConfig(nodes=1, phones=0, host="127.0.0.1", ami_port=0, initial="none"))
    await sim.start()
    db = sim.node("node1").astdb
    try:
        settings = AstDbSettings(ami=f"127.0.0.1:{sim.ports['node1']}", ami_user="astreg", ami_secret="astreg", timeout=3)
        async with running(AstDbSink(settings), kafka, topics, group=f"g-{unique}", backoff_max=0.5):
            await until(lambda: db.get("astreg", "node/6014") == "node1", 30, what="the family to be written")
            db.delete_tree("astreg")  # `database deltree astreg` on the console; the AMI link stays up
            await until(lambda: all(db.get("astreg", f"node/{6000 + i}") == "node1" for i in range(15)), 30,
                        what="the emptied family to be written again")
    finally:
        await sim.stop()



async def _group_offsets(kafka: Any, group: str, topic: str, partitions: int,
                         set_to: int | None = None) -> dict[int, int | None]:
    """The group's committed offsets of ``topic`` (after committing ``set_to`` to each, if given),
    read or written by a consumer outside the group's membership, as an operator's tool does."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        if set_to is not None:
            await consumer.commit(dict.fromkeys(tps, set_to))
        return {tp.partition: await consumer.committed(tp) for tp in tps}
    finally:
        await consumer.stop()


async def test_a_store_ahead_of_the_group_commits_is_where_the_sink_resumes(kafka, topics, unique, sqlite_url) -> None:
    # Commits to Kafka lag the store by up to a second (the store keeps its offsets with its
    # rows). A sink stopped between two commits, or whose group offsets fell behind, resumes from
    # the store's offsets: it neither replays (briefly regressing) rows the store holds, nor skips any.
    items = [(f"PJSIP/{5000 + i}", location(f"PJSIP/{5000 + i}", "node1", version=1)) for i in range(30)]
    group = f"g-{unique}"
    await produce(kafka, topics.topic_locations, items)
    async with running(SqlSink(SqlSettings(url=sqlite_url)), kafka, topics, group=group, batch_linger_ms=0) as runner:
        await eventually(lambda: table_rows(sqlite_url), lambda r: r == expected_rows(items))
        await until(lambda: runner.caught_up.is_set(), timeout=30)
    ends = await _group_offsets(kafka, group, topics.topic_locations, topics.partitions)
    assert sum(v or 0 for v in ends.values()) == len(items)  # the stop committed what the store holds

    await _group_offsets(kafka, group, topics.topic_locations, topics.partitions, set_to=0)
    later = [("PJSIP/5000", location("PJSIP/5000", "node2", version=2))]
    await produce(kafka, topics.topic_locations, later)
    async with running(SqlSink(SqlSettings(url=sqlite_url)), kafka, topics, group=group, batch_linger_ms=0) as runner:
        await eventually(lambda: table_rows(sqlite_url), lambda r: r == expected_rows(items + later))
        await until(lambda: runner.caught_up.is_set(), timeout=30)
        assert runner.written == 1 and runner.rebuilds_done == 0
