"""`astreg broker` + `astreg topics create` + a RegistrationEvent through real Kafka."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from astreg.errors import ConfigError
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics
from schemas.codec import Codec
from schemas.models import RegistrationEvent
from tests.support.golden import REGISTRATION

pytestmark = pytest.mark.integration


def _bootstrap_line(child, timeout: float = 20.0) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"^bootstrap=(127\.0\.0\.1:\d+)$", child.log(), re.M)
        if m:
            return m.group(1)
        assert child.alive(), child.log()
        time.sleep(0.1)  # poll interval of this bounded wait
    raise AssertionError(f"no bootstrap line: {child.log()}")


async def _round_trip(kafka: KafkaSettings, topics: TopicSettings, unique: str) -> RegistrationEvent:
    codec = Codec.for_model(RegistrationEvent)
    producer = AIOKafkaProducer(enable_idempotence=kafka.idempotent, **kafka.aiokafka_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.topic_registrations, codec.encode(REGISTRATION), key=REGISTRATION.endpoint.encode()
        )
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topics.topic_registrations, group_id=f"g-{unique}", auto_offset_reset="earliest",
        **kafka.aiokafka_kwargs(), **kafka.group_kwargs(),
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
        assert msg.key == b"PJSIP/1001"
        return codec.decode(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset)
    finally:
        await consumer.stop()


def test_cli_broker_topics_and_a_record_round_trip(procs: ProcessGroup, unique: str) -> None:
    child = procs.start("broker", astreg_argv("broker"))
    bootstrap = _bootstrap_line(child)
    out = subprocess.run(
        astreg_argv("topics", "create", "--bootstrap", bootstrap, "--embedded", "--partitions", "3"),
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "created  asterisk.registrations.v1 partitions=3" in out.stdout
    again = subprocess.run(
        astreg_argv("topics", "create", "--bootstrap", bootstrap, "--embedded", "--partitions", "3"),
        capture_output=True, text=True, timeout=60,
    )
    assert again.returncode == 0 and "exists   asterisk.registrations.v1" in again.stdout
    kafka = KafkaSettings(bootstrap=bootstrap, embedded=True)
    got = asyncio.run(_round_trip(kafka, TopicSettings(partitions=3), unique))
    assert got == REGISTRATION
    # SIGTERM stops the broker (and the tansu child) cleanly
    assert child.stop(grace=10) == 0
    assert "stopped" in child.log()


async def test_round_trip_on_the_session_broker(kafka: KafkaSettings, topics: TopicSettings, unique: str) -> None:
    """The same round trip against whatever broker the session uses (KAFKA_BOOTSTRAP_SERVERS too)."""
    assert await _round_trip(kafka, topics, unique) == REGISTRATION


async def test_topics_create_refuses_a_mismatched_layout(kafka: KafkaSettings, unique: str) -> None:
    t = TopicSettings(partitions=2).with_suffix(unique)
    await ensure_topics(kafka, t)
    with pytest.raises(ConfigError, match=r"has 2 partitions, astreg expects 5"):
        await ensure_topics(kafka, t.model_copy(update={"partitions": 5}))


def test_topics_create_cli_reports_a_mismatch(kafka: KafkaSettings, unique: str) -> None:
    base = ["topics", "create", "--bootstrap", kafka.bootstrap, "--topic-registrations", f"r.{unique}",
            "--topic-nodes", f"n.{unique}", "--topic-locations", f"l.{unique}", "--topic-deadletter", f"d.{unique}"]
    if kafka.embedded:
        base.append("--embedded")
    first = subprocess.run(astreg_argv(*base, "--partitions", "2"), capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(astreg_argv(*base, "--partitions", "4"), capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert f"topic r.{unique} has 2 partitions, astreg expects 4" in second.stderr


async def test_a_stopped_group_consumer_leaves_its_group(kafka: KafkaSettings, topics: TopicSettings, unique: str) -> None:
    """On close a consumer leaves its group, also in the group's first generation, which Tansu
    numbers 0 (aiokafka only leaves at generation > 0): otherwise the next member's join waits
    for the stale one's session timeout (astreg.patches.aiokafka.leave_groups_at_generation_zero,
    installed by the components that make group consumers)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from astreg import patches

    patches.install(kafka)
    group = f"g-{unique}"
    first = AIOKafkaConsumer(topics.topic_locations, **kafka.aiokafka_kwargs(), **kafka.group_kwargs(),
                             group_id=group, enable_auto_commit=False)
    await first.start()
    try:
        while not first.assignment():
            await first.getmany(timeout_ms=200)
    finally:
        await first.stop()
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    (state,) = described[0].groups
    assert state[0] == 0 and state[1] == group  # error_code, group
    assert state[5] == [], f"members left behind: {state[5]}"
