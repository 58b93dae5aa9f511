"""Cold restart of a worker that lost its data dir: the table is rebuilt from the changelog.

The bulk restore (astreg/patches/recovery.py) must leave RocksDB exactly as Faust's record-by-record
replay does: the last value of every key of the changelog, per partition, and serve the same
answers afterwards.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from astreg.patches.recovery import MIN_LAG
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics
from schemas.models import ContactStatus, EventKind, RegistrationEvent, Source
from streams.topics import changelog_name, changelog_specs
from tests.support.locations import free_port, produce, read_locations, wait_for
from tests.support.wait import until

pytestmark = pytest.mark.integration

N = 4_000  # endpoints: with the moves below, well over MIN_LAG changelog records per partition


def ev(endpoint: str, node: str, seq: int, status: ContactStatus) -> RegistrationEvent:
    return RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=1, seq=seq, event_time_ms=int(time.time() * 1000),
        kind=EventKind.CONTACT, source=Source.LIVE, contact_status=status,
        contact_uri=f"sip:{endpoint.split('/')[1]}@{node}",
    )


def worker(procs: ProcessGroup, kafka: KafkaSettings, topics: TopicSettings, app_id: str, name: str,
           data_dir: Path, *extra: str) -> object:
    argv = astreg_argv(
        "--log-level", "INFO", "worker", "--bootstrap", kafka.bootstrap,
        "--embedded" if kafka.embedded else "--no-embedded", "--partitions", str(topics.partitions),
        "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
        "--topic-locations", topics.topic_locations, "--topic-deadletter", topics.topic_deadletter,
        "--web-port", str(free_port()), "--data-dir", str(data_dir), "--worker-id", name, "--app-id", app_id,
        *extra,
    )
    return procs.start(name, argv)


async def changelog(kafka: KafkaSettings, topic: str, partitions: int) -> dict[int, dict[bytes, bytes]]:
    """The changelog folded per partition: last value per key, tombstones delete."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: dict[int, dict[bytes, bytes]] = {p: {} for p in range(partitions)}
        idle = 0
        while idle < 5:
            batches = await consumer.getmany(timeout_ms=300)
            idle = 0 if any(batches.values()) else idle + 1
            for tp, records in batches.items():
                for r in records:
                    if r.value is None:
                        out[tp.partition].pop(r.key, None)
                    else:
                        out[tp.partition][r.key] = r.value
        return out
    finally:
        await consumer.stop()


async def changed_in_changelog(kafka: KafkaSettings, topic: str, partitions: int, key: bytes,
                               before: dict[int, dict[bytes, bytes]]) -> bool:
    """Whether the changelog now holds another value for ``key`` than ``before`` (a folded read)."""
    now = await changelog(kafka, topic, partitions)
    return any(rows.get(key) != before[p].get(key) for p, rows in now.items())


def rocksdb_rows(data_dir: Path) -> dict[int, dict[bytes, bytes]]:
    """What the (stopped) worker's RocksDB holds per partition, without Faust's offset key."""
    from faust.stores.rocksdb import Store
    from rocksdict import AccessType, Rdict

    out: dict[int, dict[bytes, bytes]] = {}
    for path in sorted(data_dir.rglob("*locations-*.db")):
        db = Rdict(str(path), access_type=AccessType.read_only())
        try:
            out[int(path.stem.rsplit("-", 1)[1])] = {k: v for k, v in db.items() if k != Store.offset_key}
        finally:
            db.close()
    return out


async def test_cold_restart_bulk_restore_equals_changelog_and_faust_replay(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup, tmp_path: Path, unique: str
) -> None:
    app_id = f"restore-{unique}"
    await ensure_topics(kafka, topics, extra=changelog_specs(app_id, topics))
    w1 = worker(procs, kafka, topics, app_id, "fill", tmp_path / "fill")
    names = [f"PJSIP/r{i}" for i in range(N)]
    await produce(kafka, topics, [ev(e, "A", i + 1, ContactStatus.NON_QUALIFIED) for i, e in enumerate(names)])
    # Overwrites in the changelog: a third moves to B, a sixth unregister (rows stay, no contact).
    await produce(kafka, topics, [
        *[ev(e, "B", i + 1, ContactStatus.NON_QUALIFIED) for i, e in enumerate(names) if i % 3 == 0],
        *[ev(e, "A", N + i + 1, ContactStatus.REMOVED) for i, e in enumerate(names) if i % 6 == 1],
    ])
    expect = {e: ("B" if i % 3 == 0 else None if i % 6 == 1 else "A") for i, e in enumerate(names)}
    expect = {k: v for k, v in expect.items() if v is not None}

    async def published() -> bool:
        locs = await read_locations(kafka, topics.topic_locations)
        return {k: v.primary_node for k, v in locs.items()} == expect

    assert await wait_for(published, timeout=120), "the fill worker did not converge"
    w1.stop()  # type: ignore[attr-defined]
    log = changelog_name(app_id, "locations")
    folded = await changelog(kafka, log, topics.partitions)
    assert sum(len(rows) for rows in folded.values()) == N
    records_per_partition = (N + N // 3 + N // 6) / topics.partitions
    assert records_per_partition > MIN_LAG, "the test would not exercise the bulk path"

    # Cold restarts (empty data dirs), one with the bulk restore, one with Faust's own replay.
    for label, flag, moved in (("bulk", "--bulk-restore", "PJSIP/r2"), ("faust", "--no-bulk-restore", "PJSIP/r4")):
        w = worker(procs, kafka, topics, app_id, label, tmp_path / label, flag)
        logged = await changelog(kafka, log, topics.partitions)
        # Something to do after the restore: move one endpoint from A to B, then wait for it.
        await produce(kafka, topics, [ev(moved, "B", 10 * N, ContactStatus.NON_QUALIFIED)])
        expect[moved] = "B"
        assert await wait_for(published, timeout=120), f"{label}: restarted worker did not converge"

        await until(partial(changed_in_changelog, kafka, log, topics.partitions, moved.encode(), logged), 30,
                    interval=0.1, what=f"{label}: the changelog write of the move of {moved}")
        w.stop()  # type: ignore[attr-defined]
        text = w.log()  # type: ignore[attr-defined]
        assert ("bulk restore:" in text) == (label == "bulk"), text[-3000:]
        # Its RocksDB = the changelog (up to and including its own writes), partition by partition.
        assert rocksdb_rows(tmp_path / label) == await changelog(kafka, log, topics.partitions), label
