"""Bench sections that need the whole pipeline: steady-rate latency and storm convergence."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .e2e import (
    astdb_nodes,
    astdb_want,
    measure_latency,
    pipeline,
    primaries,
    sql_nodes,
    wait_converged,
    wait_stores,
)
from .settings import KafkaSettings

logger = logging.getLogger(__name__)

__all__ = ["run_latency", "run_storm"]


async def _start_sim(nodes: int, phones: int) -> Any:
    from producers.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(nodes=nodes, phones=phones, ami_port=0, initial="spread"))
    await sim.start()
    return sim


STOP_GRACE = 2.0  # the pipeline is thrown away after a measurement: no need to wait for a clean stop


def _suffix(name: str) -> str:
    return f"{name}{int(time.time() * 1000)}"


async def run_latency(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """AMI event emitted by the simulator → row visible in the SQLite sink, p50/p99."""
    phones = 300 if quick else 3000
    moves, rate = (150, 20.0) if quick else (2000, 50.0)
    sim = await _start_sim(3, phones)
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=_suffix("e2e"), stop_grace=STOP_GRACE) as pipe:
            t0 = time.monotonic()
            ready = await wait_converged(pipe.sqlite_path, primaries(sim.truth()), timeout=120)
            if ready is None:
                have = sql_nodes(pipe.sqlite_path)
                raise RuntimeError(f"initial snapshot never reached the SQL sink ({len(have)}/{phones} rows)")
            initial = time.monotonic() - t0
            figures = await measure_latency(sim, pipe, moves=moves, rate=rate)
            figures["phones"] = phones
            figures["initial_load_s"] = round(initial, 2)
            return figures
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
    Every store is read in a thread (the simulator's AstDB connection allows it) so that the
    simulator keeps answering the AstDB sinks while 100,000 keys are compared."""
    phones = 1500 if quick else 100_000
    nodes = 3
    victim = "node1"
    poll = 0.1 if quick else 0.5
    t_start = time.monotonic()
    sim = await _start_sim(nodes, phones)
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=_suffix("storm"), sinks=("sql", "astdb"),
                      stop_grace=STOP_GRACE) as pipe:
            stores = _stores(sim, pipe, pipe.astdb_sinks)
            t0 = time.monotonic()
            last_log = [0.0]
            timeline: list[tuple[str, float, dict[str, int]]] = []  # (phase, s, wrong keys per store)
            phase = ["initial"]

            def progress(t: float, wrong: dict[str, int]) -> None:
                timeline.append((phase[0], round(t, 1), wrong))
                if t - last_log[0] >= 10 and not quick:
                    last_log[0] = t
                    logger.warning("storm %s: %.0f s, keys still wrong per store: %s", phase[0], t, wrong)

            loaded = await wait_stores(stores, _wants(stores, primaries(sim.truth())),
                                       timeout=120 if quick else 600, poll=poll if quick else 3.0,
                                       progress=progress, progress_every=1.0 if quick else 10.0)
            if any(v is None for v in loaded.values()):
                raise RuntimeError(f"initial snapshot never reached every store: {loaded}")
            initial = {f"initial_load_{k}_s": round(v, 1) for k, v in loaded.items() if v is not None}
            initial_s = time.monotonic() - t0
            moved = len(sim.truth()["nodes"][victim]["contacts"])
            t1 = time.monotonic()
            await sim.run_scenario("storm", node=victim)
            t_last = time.monotonic()
            live = [n for n in pipe.astdb_sinks if n != victim]
            stores = _stores(sim, pipe, live)
            last_log[0] = 0.0
            phase[0] = "storm"
            took = await wait_stores(stores, _wants(stores, primaries(sim.truth(), live_only=True)),
                                     timeout=120 if quick else 300, poll=poll, progress=progress,
                                     progress_every=1.0 if quick else 5.0)
            figures: dict[str, Any] = {
                "phones": phones,
                "moved": moved,
                "stores": ", ".join(stores),
                "initial_load_s": round(initial_s, 1),
                **initial,
                "storm_emit_s": round(t_last - t1, 2),
            }
            for name, t in took.items():
                figures[f"converged_{name}_s"] = round(t, 2) if t is not None else None
            done = [t for t in took.values() if t is not None]
            figures["converged"] = len(done) == len(took)
            figures["converged_after_last_event_s"] = round(max(done), 2) if figures["converged"] else None
            figures["pipeline_s"] = round(time.monotonic() - t_start, 1)
            figures["timeline"] = timeline
            return figures
    finally:
        await sim.stop()


if __name__ == "__main__":  # pragma: no cover
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fn = run_storm if "storm" in sys.argv else run_latency
        print(asyncio.run(fn(quick="--quick" in sys.argv, work=Path(d))))
