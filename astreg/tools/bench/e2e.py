"""Bench sections that need the whole pipeline: steady-rate latency and storm convergence.

Standalone, on a pipeline of its own (embedded broker)::

    astreg bench e2e [--quick] [--storm]
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from astreg.settings import KafkaSettings
from astreg.tools.e2e import (
    astdb_nodes,
    astdb_want,
    measure_latency,
    pipeline,
    primaries,
    sql_nodes,
    wait_converged,
    wait_stores,
)
from producers.simulator.scenarios import run_scenario

logger = logging.getLogger(__name__)

__all__ = ["run_latency", "run_storm", "run_latency_and_storm", "main"]


async def _start_sim(nodes: int, phones: int) -> Any:
    from producers.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(nodes=nodes, phones=phones, ami_port=0, initial="spread"))
    await sim.start()
    return sim


STOP_GRACE = 2.0  # the pipeline is thrown away after a measurement: no need to wait for a clean stop


def _suffix(name: str) -> str:
    return f"{name}{int(time.time() * 1000)}"


E2E_QUICK = {"phones": 300, "moves": 120, "rate": 30.0}
E2E_FULL = {"phones": 3000, "moves": 2000, "rate": 50.0}
STORM_PHONES = {True: 900, False: 100_000}


async def _latency_on(sim: Any, pipe: Any, quick: bool, phones: int) -> dict[str, Any]:
    sizes = E2E_QUICK if quick else E2E_FULL
    t0 = time.monotonic()
    ready = await wait_converged(pipe.sqlite_path, primaries(sim.truth()), timeout=120)
    if ready is None:
        have = sql_nodes(pipe.sqlite_path)
        raise RuntimeError(f"initial snapshot never reached the SQL sink ({len(have)}/{phones} rows)")
    initial = time.monotonic() - t0
    figures = await measure_latency(sim, pipe, moves=int(sizes["moves"]), rate=sizes["rate"])
    figures["phones"] = phones
    figures["initial_load_s"] = round(initial, 2)
    return figures


async def run_latency(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """AMI event emitted by the simulator → row visible in the SQLite sink, p50/p99."""
    phones = int((E2E_QUICK if quick else E2E_FULL)["phones"])
    sim = await _start_sim(3, phones)
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=_suffix("e2e"), stop_grace=STOP_GRACE) as pipe:
            return await _latency_on(sim, pipe, quick, phones)
    finally:
        await sim.stop()


async def run_latency_and_storm(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """``--quick`` with both sections: one pipeline (SQLite + one AstDB sink per node) and one
    simulator (the storm's phones) serve the latency measurement, then the storm; start-up is
    most of a small run's time. Returns ``{"e2e": ..., "storm": ...}``."""
    phones = STORM_PHONES[quick]
    t_start = time.monotonic()
    sim = await _start_sim(3, phones)
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=_suffix("e2estorm"), sinks=("sql", "astdb"),
                      stop_grace=STOP_GRACE) as pipe:
            # Every store loaded first, so that no sink is still replaying while latency is measured.
            loaded = await _initial(sim, pipe, quick)
            e2e = await _latency_on(sim, pipe, quick, phones)
            e2e["shared_with_storm"] = True
            e2e["elapsed_s"] = round(time.monotonic() - t_start, 1)
            t1 = time.monotonic()
            storm = await _storm_on(sim, pipe, quick, phones, loaded)
            storm["shared_with_e2e"] = True
            storm["elapsed_s"] = round(time.monotonic() - t1, 1)
            return {"e2e": e2e, "storm": storm}
    finally:
        await sim.stop()


def _stores(sim: Any, pipe: Any, nodes: list[str]) -> dict[str, Callable[[], dict[str, Any]]]:
    stores: dict[str, Callable[[], dict[str, Any]]] = {"sql": lambda: sql_nodes(pipe.sqlite_path)}
    for node in nodes:
        stores[f"astdb_{node}"] = (lambda db: lambda: astdb_nodes(db))(sim.nodes[node].astdb)
    return stores


def _wants(stores: dict[str, Any], want: dict[str, str]) -> dict[str, dict[str, str]]:
    astdb = astdb_want(want)
    return {name: want if name == "sql" else astdb for name in stores}


async def run_storm(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """A node dies; all its phones re-register on the other nodes. Seconds from the last
    registration until every store the pipeline writes equals the simulator's truth: the SQLite
    sink and the AstDB (key ``node/<resource>``) of every live node, each written by its own
    AstDB sink. The dead node's AstDB cannot be written (its sink waits for it to come back).
    Every store is read and compared in a thread, less often during the initial load, so that
    the in-process simulator keeps answering the AstDB sinks while 100,000 keys are compared."""
    phones = STORM_PHONES[quick]
    t_start = time.monotonic()
    sim = await _start_sim(3, phones)
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=_suffix("storm"), sinks=("sql", "astdb"),
                      stop_grace=STOP_GRACE) as pipe:
            figures = await _storm_on(sim, pipe, quick, phones)
            figures["pipeline_s"] = round(time.monotonic() - t_start, 1)
            return figures
    finally:
        await sim.stop()


class _Progress:
    """Wrong keys per store over time (JSON ``timeline``), logged every 10 s at full size."""

    def __init__(self, quick: bool, phase: str):
        self.quick, self.phase, self.logged = quick, phase, 0.0
        self.timeline: list[tuple[str, float, dict[str, int]]] = []

    def __call__(self, t: float, wrong: dict[str, int]) -> None:
        self.timeline.append((self.phase, round(t, 1), wrong))
        if t - self.logged >= 10 and not self.quick:
            self.logged = t
            logger.warning("storm %s: %.0f s, keys still wrong per store: %s", self.phase, t, wrong)


async def _initial(sim: Any, pipe: Any, quick: bool) -> dict[str, Any]:
    """Wait until every store holds the initial truth; seconds per store and in all."""
    stores = _stores(sim, pipe, pipe.astdb_sinks)
    progress = _Progress(quick, "initial")
    t0 = time.monotonic()
    loaded = await wait_stores(stores, _wants(stores, primaries(sim.truth())),
                               timeout=120 if quick else 600, poll=0.1 if quick else 3.0,
                               progress=progress, progress_every=1.0 if quick else 10.0)
    if any(v is None for v in loaded.values()):
        raise RuntimeError(f"initial snapshot never reached every store: {loaded}")
    return {"initial_load_s": round(time.monotonic() - t0, 1),
            **{f"initial_load_{k}_s": round(v, 1) for k, v in loaded.items() if v is not None},
            "timeline": progress.timeline}


async def _storm_on(sim: Any, pipe: Any, quick: bool, phones: int,
                    loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Initial load (unless ``loaded`` already), then the storm and per-store convergence."""
    victim = "node1"
    poll = 0.1 if quick else 0.5
    if loaded is None:
        loaded = await _initial(sim, pipe, quick)
    timeline = loaded.pop("timeline")
    moved = len(sim.truth()["nodes"][victim]["contacts"])
    t1 = time.monotonic()
    await run_scenario(sim, "storm", node=victim)
    t_last = time.monotonic()
    live = [n for n in pipe.astdb_sinks if n != victim]
    stores = _stores(sim, pipe, live)
    progress = _Progress(quick, "storm")
    took = await wait_stores(stores, _wants(stores, primaries(sim.truth(), live_only=True)),
                             timeout=120 if quick else 300, poll=poll, progress=progress,
                             progress_every=1.0 if quick else 5.0)
    figures: dict[str, Any] = {
        "phones": phones,
        "moved": moved,
        "stores": ", ".join(stores),
        **loaded,
        "storm_emit_s": round(t_last - t1, 2),
    }
    for name, t in took.items():
        figures[f"converged_{name}_s"] = round(t, 2) if t is not None else None
    done = [t for t in took.values() if t is not None]
    figures["converged"] = len(done) == len(took)
    figures["converged_after_last_event_s"] = round(max(done), 2) if figures["converged"] else None
    figures["timeline"] = timeline + progress.timeline
    return figures


@click.command()
@click.option("--quick", is_flag=True, show_envvar=True, help="The sizes of `astreg bench --quick`.")
@click.option("--storm", is_flag=True, show_envvar=True,
              help="Measure storm convergence instead of the steady-rate latency.")
def main(quick: bool, storm: bool) -> None:
    """AMI event to SQL row latency, or storm convergence, as JSON."""
    fn = run_storm if storm else run_latency
    with tempfile.TemporaryDirectory(prefix="astreg-bench-") as tmp:
        click.echo(json.dumps(asyncio.run(fn(quick=quick, work=Path(tmp))), indent=2, default=str))
