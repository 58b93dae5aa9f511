"""The bulk drain loop against a rebalance that lands in the middle of a fetch round.

Faust's consumer is replaced here by the few attributes :func:`astreg.patches.bulk.drain` reads
(its real use is covered by the worker and rebalance integration tests, which cannot choose the
instant a rebalance lands). A rebalance while a changelog record's callback waits is what
recovery meets: it seeks the changelog partition back to where the store is and sets the read
offset there; the rest of the old round must then be left alone, as Faust's own getmany does, or
the read offset jumps past what recovery is waiting for and the records it needs are dropped as
already read (a worker then waits for ever in "Restoring state from changelog topics").
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from astreg.patches.bulk import drain

REG = "registrations"
CHANGELOG = TP("app-locations-changelog", 1)
SOURCE = TP(REG, 1)


def _record(tp: TP, offset: int) -> Any:
    return SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=offset, key=b"k", value=b"v")


class Kafka:
    """The aiokafka consumer in Faust's consumer thread: positions, seeks."""

    def __init__(self) -> None:
        self.positions: dict[Any, int] = {}

    def assignment(self) -> set[Any]:
        return set(self.positions)

    async def position(self, tp: Any) -> int:
        return self.positions[tp]

    def seek(self, tp: Any, offset: int) -> None:
        self.positions[tp] = offset


class Thread:
    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka

    def _ensure_consumer(self) -> Kafka:
        return self.kafka

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


class Round:
    """A consumer whose first fetch round returns ``records``, then stops the loop."""

    def __init__(self, records: dict[TP, list[Any]], rebalance_at: int, seek_to: int):
        self.app = SimpleNamespace(
            consumer_generation_id=1,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, hw: None),
            flow_control=SimpleNamespace(is_active=lambda: True),
            should_stop=False,
        )
        self.records = records
        self.rebalance_at = rebalance_at
        self.seek_to = seek_to
        self.called: list[int] = []
        self.applied: list[int] = []
        self.rounds = 0
        self._stopped = asyncio.Event()
        self._read_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self._acked_index: dict[TP, set[int]] = defaultdict(set)
        self._acked: dict[TP, list[int]] = defaultdict(list)
        self._n_acked = 0
        self._waiting_for_ack = None
        self._commit_every = None
        self._buffered_partitions: set[TP] = set()
        self.flow_active = True
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self.consumer_stopped_errors = ()
        self.kafka = Kafka()
        self._thread = Thread(self.kafka)
        self.sought_committed = 0
        for tp, recs in records.items():  # aiokafka moved past what it returned
            self.kafka.positions[tp] = recs[-1].offset + 1

    async def sleep(self, _s: float) -> None:
        await asyncio.sleep(0)

    async def _wait_next_records(self, _timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
        self.rounds += 1
        if self.rounds > 1:
            self._stopped.set()
            return {}, set()
        return self.records, set(self.records)

    def highwater(self, tp: TP) -> int:
        return 100

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        pass

    def _to_message(self, tp: TP, record: Any) -> Any:
        return record

    async def callback(self, message: Any) -> None:
        self.called.append(message.offset)
        if message.offset == self.rebalance_at:
            # what a rebalance does meanwhile: new generation, recovery seeks the changelog
            self.app.consumer_generation_id += 1
            self._read_offset[CHANGELOG] = self.seek_to
            self.kafka.positions[CHANGELOG] = self.seek_to

    async def wait_first(self, *coros: Any) -> None:
        tasks = [asyncio.ensure_future(c) for c in coros]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()

    async def perform_seek(self) -> None:
        self.sought_committed += 1

    async def commit(self) -> None:
        pass


async def _apply(consumer: Round, events: list[Any]) -> list[asyncio.Future[Any]]:
    consumer.applied += [e.message.offset for e in events]
    return []


async def test_a_rebalance_during_a_changelog_callback_ends_the_round() -> None:
    consumer = Round({CHANGELOG: [_record(CHANGELOG, o) for o in range(10, 15)]}, rebalance_at=11, seek_to=5)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(drain(consumer, fetcher, REG, lambda ev: _apply(consumer, ev)), 5)
    assert consumer.called == [10, 11]
    assert consumer._read_offset[CHANGELOG] == 5, "the read offset must stay where recovery sought it"
    assert consumer.kafka.positions[CHANGELOG] == 5, "a newer seek is not undone"


async def test_registrations_of_a_round_a_rebalance_interrupted_are_not_applied() -> None:
    records = {CHANGELOG: [_record(CHANGELOG, 10), _record(CHANGELOG, 11)],
               SOURCE: [_record(SOURCE, o) for o in range(40, 43)]}
    consumer = Round(records, rebalance_at=10, seek_to=5)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(drain(consumer, fetcher, REG, lambda ev: _apply(consumer, ev)), 5)
    assert consumer.applied == []
    assert consumer._read_offset[SOURCE] in (None, 40), "the dropped registrations are read again"
    assert consumer.kafka.positions[SOURCE] == 40


async def test_records_fetched_while_the_flow_stopped_are_given_back() -> None:
    """The hang: recovery sought a new changelog partition to 0 and resumes it; a fetch that
    returns before the flow resumes is dropped, and its records must be fetched again."""
    records = {CHANGELOG: [_record(CHANGELOG, o) for o in range(0, 115)],
               SOURCE: [_record(SOURCE, o) for o in range(40, 43)]}
    consumer = Round(records, rebalance_at=-1, seek_to=0)
    consumer.flow_active = False
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(drain(consumer, fetcher, REG, lambda ev: _apply(consumer, ev)), 5)
    assert consumer.called == [] and consumer.applied == []
    assert consumer.kafka.positions == {CHANGELOG: 0, SOURCE: 40}
    assert consumer.sought_committed == 1


async def test_records_of_a_partition_paused_since_the_fetch_are_given_back() -> None:
    records = {CHANGELOG: [_record(CHANGELOG, o) for o in range(7, 9)]}
    consumer = Round(records, rebalance_at=-1, seek_to=0)
    consumer._wait_next_records = _paused_round(consumer)  # type: ignore[method-assign]
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(drain(consumer, fetcher, REG, lambda ev: _apply(consumer, ev)), 5)
    assert consumer.called == []
    assert consumer.kafka.positions[CHANGELOG] == 7


def _paused_round(consumer: Round) -> Any:
    async def wait_next(_timeout: float) -> tuple[dict[TP, list[Any]], set[TP]]:
        consumer.rounds += 1
        if consumer.rounds > 1:
            consumer._stopped.set()
            return {}, set()
        return consumer.records, set()  # the partition left the active set meanwhile

    return wait_next


async def test_a_round_without_a_rebalance_is_applied_whole() -> None:
    records = {CHANGELOG: [_record(CHANGELOG, 10), _record(CHANGELOG, 11)],
               SOURCE: [_record(SOURCE, o) for o in range(40, 43)]}
    consumer = Round(records, rebalance_at=-1, seek_to=5)
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    await asyncio.wait_for(drain(consumer, fetcher, REG, lambda ev: _apply(consumer, ev)), 5)
    assert consumer.called == [10, 11]
    assert consumer.applied == [40, 41, 42]
    assert consumer._read_offset[CHANGELOG] == 11 and consumer._read_offset[SOURCE] == 42
