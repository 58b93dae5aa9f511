"""astreg/tools/latency.py: what counts as a move seen, and how CPU is grouped by role."""

from __future__ import annotations

import time

from astreg.tools.latency import LatencyProbe, _role, summary


def test_a_move_is_done_only_once_every_store_shows_its_new_node() -> None:
    probe = LatencyProbe(["sql", "redis"])
    probe.start("PJSIP/1001", "node2")
    probe.seen("sql", "PJSIP/1001", "node1")  # the old node: not the move
    probe.seen("registrations", "PJSIP/1001", "node2")  # a hop: not required to finish
    probe.seen("sql", "PJSIP/1001", "node2")
    assert probe.waiting("redis") == ["PJSIP/1001"] and probe.done == []
    probe.seen("redis", "PJSIP/1001", "node2")
    assert probe.pending == {} and [m.endpoint for m in probe.done] == ["PJSIP/1001"]
    assert set(probe.done[0].seen) == {"sql", "redis", "registrations"}


def test_what_was_there_before_the_move_does_not_count() -> None:
    probe = LatencyProbe(["sql"])
    before = time.perf_counter()
    probe.start("PJSIP/1002", "node3")
    probe.seen("sql", "PJSIP/1002", "node3", at=before - 1.0)
    probe.seen("sql", "PJSIP/1099", "node3")  # an endpoint nobody moved
    assert probe.waiting("sql") == ["PJSIP/1002"]


def test_summary_in_milliseconds() -> None:
    s = summary([0.001 * i for i in range(1, 101)])
    assert s["p50_ms"] == 51.0 and s["p99_ms"] == 99.0 and s["max_ms"] == 100.0
    assert summary([]) == {"p50_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}


def test_processes_are_grouped_by_role() -> None:
    assert [_role(n) for n in ("producer-node1", "worker2", "sink-astdb-node3", "sink-sql", "bench")] == [
        "producers", "workers", "sinks_astdb", "sink_sql", "bench"]
