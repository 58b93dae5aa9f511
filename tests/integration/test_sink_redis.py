"""Redis sink on this machine's real Redis (own key prefix per test), fed through the real broker."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.models import DeviceState
from sinks.redis import RedisSettings, RedisSink, hash_of
from sinks.routes import preferred
from tests.support.sink_records import NASTY, eventually, final_state, location, produce, running
from tests.support.wait import until

pytestmark = pytest.mark.timeout(90)


async def snapshot(url: str, prefix: str) -> dict[str, Any]:
    client = aioredis.from_url(url, decode_responses=True)
    try:
        out: dict[str, Any] = {}
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            if key.startswith(f"{prefix}meta:"):
                continue  # the sink's own offsets, not data for the dialplan
            kind = await client.type(key)
            if kind == "hash":
                out[key] = await client.hgetall(key)
            elif kind == "set":
                out[key] = await client.smembers(key)
            else:
                out[key] = await client.get(key)
        return out
    finally:
        await client.aclose()


def expected(prefix: str, items: list[Any]) -> dict[str, Any]:
    """The keys a store equal to the log holds; one node key per resource (sinks.routes)."""
    out: dict[str, Any] = {}
    by_resource: dict[str, list[Any]] = {}
    for key, loc in final_state(items).items():
        out[f"{prefix}loc:{key}"] = hash_of(key, loc)
        out.setdefault(f"{prefix}res:{loc.resource}", set()).add(key)
        by_resource.setdefault(loc.resource, []).append(loc)
    for resource, locs in by_resource.items():
        chosen = preferred(locs)
        if chosen is not None and chosen.primary_node is not None:
            out[f"{prefix}node:{resource}"] = chosen.primary_node
    return out


async def test_redis_store_equals_topic_and_rebuild_removes_stale_keys(kafka, topics, unique, redis_url, redis_prefix):
    items: list[Any] = [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}")) for i in range(30)]
    items += [(f"PJSIP/{1000 + i}", location(f"PJSIP/{1000 + i}", "node2", state=DeviceState.RINGING, version=2))
              for i in range(0, 30, 4)]
    items += [(f"PJSIP/{1000 + i}", None) for i in range(0, 30, 7)]
    items += [("PJSIP/1001", location("PJSIP/1001", None, version=3))]  # registered nowhere routable
    items += [(name, location(name, "node\r\nSET x y", user_agent="UA\r\n*1\r\n$4\r\nPING")) for name in NASTY]
    await produce(kafka, topics.topic_locations, items)
    want = expected(redis_prefix, items)
    assert f"{redis_prefix}node:1001" not in want
    settings = RedisSettings(url=redis_url, key_prefix=redis_prefix)
    group = f"g-{unique}"
    async with running(RedisSink(settings), kafka, topics, group=group):
        got = await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == want)
    assert got == want

    client = aioredis.from_url(redis_url, decode_responses=True)
    await client.hset(f"{redis_prefix}loc:PJSIP/ghost", mapping={"node": "node9"})
    await client.hset(f"{redis_prefix}loc:PJSIP/1002", mapping={"node": "wrong"})
    await client.aclose()
    # A replay through a new group (no committed offsets) repairs the store.
    async with running(RedisSink(settings), kafka, topics, group=f"g2-{unique}") as runner:
        got = await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == want and runner.rebuilds_done > 0)
    assert got == want


async def test_redis_client_pause_mid_run_loses_nothing(kafka, topics, unique, redis_url, redis_prefix):
    first = [(f"PJSIP/{2000 + i}", location(f"PJSIP/{2000 + i}")) for i in range(20)]
    second = [(f"PJSIP/{2000 + i}", location(f"PJSIP/{2000 + i}", "node2", version=2)) for i in range(20)]
    second += [("PJSIP/2019", None)]
    settings = RedisSettings(url=redis_url, key_prefix=redis_prefix, timeout=0.5)
    admin = aioredis.from_url(redis_url)
    async with running(RedisSink(settings), kafka, topics, group=f"g-{unique}", backoff_max=0.5) as runner:
        await produce(kafka, topics.topic_locations, first)
        await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == expected(redis_prefix, first))
        unavailable = runner.metrics.unavailable.labels("redis")
        before = unavailable._value.get()
        # Short: the Redis server is shared with other engineers' tests.
        await admin.execute_command("CLIENT", "PAUSE", "2500", "WRITE")
        await produce(kafka, topics.topic_locations, second)
        await until(lambda: unavailable._value.get() > before, 15,
                    what="the sink to find Redis unavailable during the pause")
        got = await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == expected(redis_prefix, first + second))
    await admin.aclose()
    assert unavailable._value.get() > before
    assert got == expected(redis_prefix, first + second)


async def test_redis_that_lost_its_data_is_rebuilt_from_the_topic(kafka, topics, unique, redis_url, redis_prefix):
    # A Redis without persistence restarts empty (fault suite, Redis down): committed offsets
    # are past every record, so without noticing the loss the sink would never write them again.
    items = [(f"PJSIP/{4000 + i}", location(f"PJSIP/{4000 + i}")) for i in range(30)]
    items += [("PJSIP/4003", None)]
    more = [("PJSIP/4100", location("PJSIP/4100", "node3"))]
    settings = RedisSettings(url=redis_url, key_prefix=redis_prefix)
    admin = aioredis.from_url(redis_url)
    await produce(kafka, topics.topic_locations, items)
    async with running(RedisSink(settings), kafka, topics, group=f"g-{unique}") as runner:
        await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == expected(redis_prefix, items))
        store_lost = runner.metrics.store_lost.labels("redis")
        lost_before = store_lost._value.get()
        rebuilds = runner.rebuilds_done
        # Everything this sink wrote disappears while it is idle (what a restart does here).
        await admin.delete(*[k async for k in admin.scan_iter(match=f"{redis_prefix}*")])
        got = await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == expected(redis_prefix, items))
        assert got == expected(redis_prefix, items)
        assert await admin.exists(f"{redis_prefix}meta:offsets:{topics.topic_locations}")
        assert store_lost._value.get() == lost_before + 1
        await eventually(lambda: _value(runner.rebuilds_done), lambda n: n > rebuilds)
        # And the sink goes on with new records afterwards.
        await produce(kafka, topics.topic_locations, more)
        got = await eventually(lambda: snapshot(redis_url, redis_prefix), lambda s: s == expected(redis_prefix, items + more))
        assert got == expected(redis_prefix, items + more)
    await admin.aclose()


async def _value(value: Any) -> Any:
    return value
