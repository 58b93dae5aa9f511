"""Process-wide settings for astreg's long-running processes."""

from __future__ import annotations

import gc

__all__ = ["tune_gc", "GC_THRESHOLDS"]

# Python's default (700, 10, 10) runs a young collection every 700 new container objects and
# a full one whenever the survivors reach a quarter of the long-lived objects. A worker keeps
# ~100,000 decoded rows (about a million objects) and replaces thousands per second, so with
# the defaults it collects about once per hundred events, each time walking the cached rows:
# a sizeable share of its CPU per event (docs/benchmarks.md, section "Stream worker").
# astreg's own objects hold no reference cycles (frozen dataclasses of strings, ints and
# tuples), so the cyclic collector only has the libraries' occasional cycles to find; 50,000
# is still a small bound on what can wait for it. The producer, which allocates a record per
# AMI event, gains from the same settings (docs/benchmarks.md, section "Producer").
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Call once start-up is done: freeze what exists, collect less often."""
    gc.collect()
    gc.freeze()  # modules, app, settings: never garbage, never scanned again
    gc.set_threshold(*GC_THRESHOLDS)
