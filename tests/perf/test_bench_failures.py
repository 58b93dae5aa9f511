"""`astreg bench` fails (exit 1) when a section measured a failure, not only when one raised."""

from __future__ import annotations

from astreg.tools.bench.cli import failures


def test_a_run_with_good_figures_passes() -> None:
    results = {"storm": {"converged": True, "converged_after_last_event_s": 0.3},
               "e2e": {"lost": 0, "p50_ms": 46.5}, "stream": {"astreg_events_per_s": 9956}}
    assert failures(results) == []


def test_raised_unconverged_and_lost_are_failures() -> None:
    results = {"storm": {"converged": False, "converged_after_last_event_s": None},
               "e2e": {"lost": 3, "p50_ms": 46.5}, "recovery": {"error": "RuntimeError: probe never answered"}}
    assert failures(results) == [
        "storm: did not converge", "e2e: 3 lost", "recovery: RuntimeError: probe never answered"]


def test_moves_lost_at_a_lower_rate_fail_the_run() -> None:
    results = {"e2e": {"lost": 0, "at_200_lost": 2, "every_store_p50_ms": 12.0}}
    assert failures(results) == ["e2e: 2 lost (at_200_lost)"]
