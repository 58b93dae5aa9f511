"""The worker commits a registration's offset only once the cluster acknowledged its outputs.

The locations topic is made to refuse every write (``max.message.bytes`` below one record: the
broker answers MESSAGE_TOO_LARGE). The events are applied, their rows reach the changelog, but
their location records are refused: the group's committed offset must not move past them, or
they would be lost for good (the next owner would start after them). The worker stops with a
clear error instead; restarted once the topic takes writes again, it reads the events again and
publishes their rows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import compaction_configs
from schemas.models import ContactStatus
from streams.app import app_id_for
from streams.settings import WorkerSettings
from streams.topics import changelog_name
from tests.integration.test_stream_worker import ev, node
from tests.support.locations import produce, read_all, read_locations, start_worker, wait_for
from tests.support.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.apache, pytest.mark.timeout(180)]


async def _set_max_message_bytes(kafka: KafkaSettings, topics: TopicSettings, value: int) -> None:
    """AlterConfigs replaces a topic's whole configuration: the locations topic's own goes with it."""
    configs = {"cleanup.policy": "compact", **dict(compaction_configs(topics)), "max.message.bytes": str(value)}
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.topic_locations,
                                                  configs={k: str(v) for k, v in configs.items()})])
    finally:
        await admin.close()


async def _committed(kafka: KafkaSettings, topics: TopicSettings, group: str) -> int:
    """Sum of the group's committed offsets on the registrations topic (0: none)."""
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items()
               if tp.topic == topics.topic_registrations and meta.offset > 0)


async def test_offsets_wait_for_the_outputs_to_be_acknowledged(
        kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path) -> None:
    group = app_id_for(topics, WorkerSettings())
    await _set_max_message_bytes(kafka, topics, 64)
    worker = start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--tick", "0.5")
    events = [node("A", 1)] + [ev(f"PJSIP/{1000 + i}", "A", 2 + i, ContactStatus.REACHABLE, f"sip:{1000 + i}@a")
                               for i in range(20)]
    await produce(kafka, topics, events)
    # The events are applied: their rows reach the table's changelog (which takes writes).
    changelog = changelog_name(group, "locations")
    rows = await wait_for(lambda: _records(kafka, changelog, 20), timeout=60)
    assert len(rows) >= 20
    # Their location records are refused: the worker stops without committing their offsets.
    await until(lambda: not worker.alive(), 60, what="the worker to stop on the refused outputs")
    assert worker.proc.returncode != 0, worker.log()[-3000:]
    assert "not acknowledged by the cluster" in worker.log(), worker.log()[-3000:]
    assert await _committed(kafka, topics, group) == 0, "offsets committed before the outputs were acknowledged"
    assert await read_locations(kafka, topics.topic_locations) == {}
    # Once the topic takes writes, a restart applies the events again and publishes every row.
    await _set_max_message_bytes(kafka, topics, 1_048_588)
    procs.restart(worker)
    locs = await wait_for(lambda: _all_locations(kafka, topics, 20), timeout=90)
    assert len(locs) == 20
    committed = await wait_for(lambda: _committed(kafka, topics, group), timeout=60)
    assert committed >= 20


async def _records(kafka: KafkaSettings, topic: str, count: int) -> list:
    got = await read_all(kafka, topic)
    return got if len(got) >= count else []


async def _all_locations(kafka: KafkaSettings, topics: TopicSettings, count: int) -> dict:
    locs = await read_locations(kafka, topics.topic_locations)
    return locs if len(locs) >= count else {}
