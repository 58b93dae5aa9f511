"""Compaction is real on Apache Kafka: the locations topic shrinks to one record per live
endpoint, tombstones go after delete.retention.ms, and a new sink group that rebuilds from the
compacted topic gets exactly the worker's table.

The topics are made with small segments and a low dirty ratio (``TopicSettings.compact_*``, the
same settings `astreg topics create` takes) so the cleaner works within the test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.tools.e2e import sql_nodes
from astreg.topics import ensure_topics
from schemas.models import ContactStatus, EventKind, RegistrationEvent, Source
from tests.support.locations import (
    free_port,
    produce,
    read_all,
    read_locations,
    start_worker,
    topic_partitions,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.apache, pytest.mark.timeout(240)]

ENDPOINTS = 40
MOVES = 6


class Events:
    """Registration events of nodes A and B, one (epoch, seq) counter per node."""

    def __init__(self) -> None:
        self.seq = {"A": 0, "B": 0}

    def __call__(self, endpoint: str, node: str, status: ContactStatus) -> RegistrationEvent:
        self.seq[node] += 1
        return RegistrationEvent(
            endpoint=endpoint, node=node, producer_epoch=1, seq=self.seq[node],
            event_time_ms=int(time.time() * 1000), kind=EventKind.CONTACT, source=Source.LIVE,
            contact_status=status, contact_uri=f"sip:{endpoint.split('/')[1]}@{node}.example",
        )


async def written_records(kafka: KafkaSettings, topic: str) -> int:
    """Records ever appended to ``topic`` (the sum of its partitions' end offsets)."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await topic_partitions(consumer, topic))
        return sum(ends.values())
    finally:
        await consumer.stop()


async def test_locations_compact_to_live_endpoints_and_a_new_sink_rebuilds_the_table(
    kafka: KafkaSettings, unique: str, procs: ProcessGroup, tmp_path: Path
) -> None:
    topics = TopicSettings(partitions=2, compact_segment_ms=1000, compact_dirty_ratio=0.01,
                           compact_delete_retention_ms=1000, compact_max_lag_ms=1000).with_suffix(unique)
    await ensure_topics(kafka, topics)
    port = free_port()
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1", "--web-port", str(port))
    ev = Events()
    names = [f"PJSIP/c{i}" for i in range(ENDPOINTS)]
    where = dict.fromkeys(names, "A")

    async def published() -> bool:
        locs = await read_locations(kafka, topics.topic_locations)
        return {k: v.primary_node for k, v in locs.items()} == where

    await produce(kafka, topics, [ev(e, "A", ContactStatus.NON_QUALIFIED) for e in names])
    assert await wait_for(published, timeout=90), "the worker did not publish the registrations"
    for _ in range(MOVES):  # every endpoint moves A -> B -> A ...: one record per key and round
        batch = []
        for e in names:
            new = "B" if where[e] == "A" else "A"
            batch += [ev(e, where[e], ContactStatus.REMOVED), ev(e, new, ContactStatus.NON_QUALIFIED)]
            where[e] = new
        await produce(kafka, topics, batch)
        assert await wait_for(published, timeout=60), "the worker did not publish a round of moves"
    gone = names[: ENDPOINTS // 4]  # unregistered: tombstones on the locations topic
    await produce(kafka, topics, [ev(e, where.pop(e), ContactStatus.REMOVED) for e in gone])
    assert await wait_for(published, timeout=60), "the worker did not publish the removals"
    # What the worker wrote, whether or not the cleaner already ran (on a slow machine the rounds
    # above outlast segment.ms and max.compaction.lag.ms): several values per key, and tombstones.
    written = await written_records(kafka, topics.topic_locations)
    assert written > 3 * ENDPOINTS, f"nothing to compact: {written} records written"

    # The active segment is never cleaned: a new registration after segment.ms rolls it. Each
    # round adds one live endpoint; stop when the topic holds one record per live endpoint.
    async def compacted() -> list:
        # segment.ms of the topic must pass before the next record rolls the active segment:
        # the broker's clock has to move on (time passing, not a condition to poll for).
        await asyncio.sleep(1.2)
        fill = f"PJSIP/fill{len(where)}"
        await produce(kafka, topics, [ev(fill, "A", ContactStatus.NON_QUALIFIED)])
        where[fill] = "A"
        recs = await read_all(kafka, topics.topic_locations)
        live = {k.decode() for k, v, _h in recs if v is not None}
        # one record per live endpoint: no superseded value, no tombstone left
        return recs if len(recs) == len(where) and live == set(where) else []

    recs = await wait_for(compacted, timeout=120, interval=0)
    assert recs, f"not compacted: {len(await read_all(kafka, topics.topic_locations))} records for {len(where)} live"
    assert await wait_for(published, timeout=30)

    # A new sink group reads the compacted topic from the start: exactly the worker's table.
    db = tmp_path / "rebuilt.sqlite"
    sink = procs.start("sink", astreg_argv(
        "sink", "sql", "--url", f"sqlite+aiosqlite:///{db}", "--group", f"rebuild-{unique}",
        "--bootstrap", kafka.bootstrap, "--topic-locations", topics.topic_locations,
        "--topic-deadletter", topics.topic_deadletter, "--partitions", str(topics.partitions)))

    async def rebuilt() -> bool:
        return await asyncio.to_thread(sql_nodes, db) == where

    assert await wait_for(rebuilt, timeout=60), (sql_nodes(db), sink.log()[-2000:])
    async with httpx.AsyncClient() as http:
        for e in list(where)[:10]:
            r = await http.get(f"http://127.0.0.1:{port}/api/v1/endpoints/{e.replace('/', '%2F')}/node")
            assert (r.status_code, r.text.strip()) == (200, where[e]), e
        for e in gone[:5]:
            r = await http.get(f"http://127.0.0.1:{port}/api/v1/endpoints/{e.replace('/', '%2F')}/node")
            assert r.status_code == 404, (e, r.text)
