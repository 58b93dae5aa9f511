"""Helpers for sink tests: build EndpointLocation records, produce them, run a sink in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import location_codec
from schemas.models import Contact, ContactStatus, DeviceState, EndpointLocation, LocationStatus
from sinks.base import RunnerSettings, Sink, SinkRunner
from sinks.metrics import SinkMetrics

T = TypeVar("T")

# Endpoint names a hostile or sloppy configuration could produce: all must be stored literally.
NASTY = [
    "PJSIP/'; DROP TABLE astreg_locations; --",
    'PJSIP/1"2\\3',
    "PJSIP/line\r\nAction: DBDelTree\r\nFamily: astreg",
    "PJSIP/bjørn-日本",
    "PJSIP/a/b/c",
    "PJSIP/%41 space",
]


def location(
    endpoint: str,
    node: str | None = "node1",
    *,
    ip: str = "192.0.2.10",
    port: int = 5060,
    state: DeviceState = DeviceState.NOT_INUSE,
    user_agent: str | None = "Yealink T46U",
    version: int = 1,
    technology: str | None = None,
) -> EndpointLocation:
    tech, _, resource = endpoint.partition("/")
    uri = f"sip:{resource}@{ip}:{port};transport=udp"
    contacts = (
        Contact(
            node=node or "node1",
            uri=uri,
            aor=resource,
            status=ContactStatus.REACHABLE,
            ip=ip,
            port=port,
            transport="udp",
            user_agent=user_agent,
            rtt_us=1234,
            expires_at_ms=1_800_000_000_000,
            registered_at_ms=1_700_000_000_000,
            updated_at_ms=1_700_000_000_000 + version,
            primary=True,
        ),
    )
    return EndpointLocation(
        endpoint=endpoint,
        technology=technology or tech,
        resource=resource,
        updated_at_ms=1_700_000_000_000 + version,
        primary_node=node,
        status=LocationStatus.REGISTERED if node else LocationStatus.STALE,
        device_state=state,
        contact_uri=uri,
        ip=ip,
        port=port,
        transport="udp",
        user_agent=user_agent,
        rtt_us=1234,
        expires_at_ms=1_800_000_000_000,
        contacts=contacts,
        nodes=(node,) if node else (),
        version=version,
    )


async def produce(
    kafka: KafkaSettings, topic: str, items: list[tuple[str, EndpointLocation | bytes | None]]
) -> None:
    """Produce (key, location | raw bytes | tombstone) in order, keyed like the stream does."""
    codec = location_codec()
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=kafka.idempotent, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for key, value in items:
            raw = codec.encode(value) if isinstance(value, EndpointLocation) else value
            futures.append(await producer.send(topic, key=key.encode("utf-8"), value=raw))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def final_state(items: list[tuple[str, EndpointLocation | bytes | None]]) -> dict[str, EndpointLocation]:
    """What a store must hold after the whole log (last value per key; tombstones remove)."""
    state: dict[str, EndpointLocation] = {}
    for key, value in items:
        if isinstance(value, EndpointLocation):
            state[key] = value
        else:
            state.pop(key, None)
    return state


@contextlib.asynccontextmanager
async def running(
    sink: Sink, kafka: KafkaSettings, topics: TopicSettings, *, metrics: SinkMetrics | None = None, **settings: Any
) -> AsyncIterator[SinkRunner]:
    """Run a sink in this event loop; always stopped (bounded) on exit."""
    settings.setdefault("batch_linger_ms", 20)
    runner = SinkRunner(sink, kafka, topics, RunnerSettings(**settings), metrics=metrics)
    task = asyncio.create_task(runner.run())
    try:
        yield runner
    finally:
        runner.stop()
        try:
            await asyncio.wait_for(task, 20)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def eventually(probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout: float = 30.0) -> T:
    """Poll ``probe`` until ``check`` holds; return the last value (the caller asserts on it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    value = await probe()
    while not check(value) and loop.time() < deadline:
        await asyncio.sleep(0.2)  # poll interval of this bounded wait
        value = await probe()
    return value


async def read_topic(kafka: KafkaSettings, topic: str, expect: int, timeout: float = 15.0) -> list[Any]:
    """Read ``expect`` records of a topic from the start (no group)."""
    consumer = AIOKafkaConsumer(topic, **kafka.aiokafka_kwargs(), auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(out) < expect and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out
