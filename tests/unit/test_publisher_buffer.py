"""The producer's send buffer when Kafka is away: bounded, latest state of every contact kept;
and epochs that never go backwards across restarts."""

from __future__ import annotations

from pathlib import Path

from astreg.settings import KafkaSettings
from producers.node import next_epoch
from producers.publisher import Publisher, Record


def rec(i: int, contact: int | None) -> Record:
    key = None if contact is None else (f"PJSIP/{contact}", "CONTACT", "sip:x")
    return Record("t", b"k", str(i).encode(), key, "CONTACT")


async def test_full_buffer_coalesces_superseded_records_keeping_order() -> None:
    pub = Publisher(KafkaSettings(), buffer_size=100)
    for i in range(1000):  # 10 contacts changing 100 times each, Kafka never reached
        pub.put(rec(i, i % 10))
    values = [int(r.value) for r in pub._buffer]
    assert len(values) <= 100 and pub.dropped == 0 and pub.coalesced > 0
    assert values == sorted(values)  # order kept
    last = {c: max(i for i in range(1000) if i % 10 == c) for c in range(10)}
    assert set(last.values()) <= set(values)  # the latest state of every contact survives


async def test_full_buffer_without_coalescable_records_drops_oldest_and_counts() -> None:
    pub = Publisher(KafkaSettings(), buffer_size=100)
    for i in range(250):
        pub.put(rec(i, None))  # markers: never coalesced
    values = [int(r.value) for r in pub._buffer]
    assert len(values) <= 100 and values[-1] == 249 and values == sorted(values)
    assert pub.dropped == 250 - len(values)
    assert pub.metrics.dropped._value.get() == pub.dropped


def test_epoch_strictly_increases_across_restarts_even_if_the_clock_goes_back(tmp_path: Path) -> None:
    f = tmp_path / "epoch"
    first = next_epoch(2_000, f)
    second = next_epoch(1_000, f)  # clock stepped back
    third = next_epoch(5_000, f)
    assert first == 2_000 and second == 2_001 and third == 5_000
    assert next_epoch(10, None) == 10
