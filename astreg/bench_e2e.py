"""Bench sections that need the whole pipeline: steady-rate latency and storm convergence."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from .e2e import measure_latency, pipeline, primaries, sql_nodes, wait_converged

__all__ = ["run_latency", "run_storm"]


async def _start_sim(nodes: int, phones: int) -> Any:
    from producers.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(nodes=nodes, phones=phones, ami_port=0, initial="spread"))
    await sim.start()
    return sim


async def run_latency(quick: bool, work: Path) -> dict[str, Any]:
    """AMI event emitted by the simulator → row visible in the SQLite sink, p50/p99."""
    phones = 300 if quick else 3000
    moves, rate = (150, 20.0) if quick else (2000, 50.0)
    sim = await _start_sim(3, phones)
    try:
        with pipeline(work, dict(sim.ports)) as pipe:
            t0 = time.monotonic()
            ready = await wait_converged(pipe.sqlite_path, primaries(sim.truth()), timeout=120)
            if ready is None:
                have = sql_nodes(pipe.sqlite_path)
                raise RuntimeError(f"initial snapshot never reached the SQL sink ({len(have)}/{phones} rows)")
            figures = await measure_latency(sim, pipe, moves=moves, rate=rate)
            figures["phones"] = phones
            figures["initial_load_s"] = round(time.monotonic() - t0, 2)
            return figures
    finally:
        await sim.stop()


async def run_storm(quick: bool, work: Path) -> dict[str, Any]:
    """A node dies; all its phones re-register on the other nodes. Seconds from the last
    registration until the SQL store equals the truth."""
    phones = 3000 if quick else 100_000
    nodes = 3
    sim = await _start_sim(nodes, phones)
    try:
        with pipeline(work, dict(sim.ports)) as pipe:
            ready = await wait_converged(pipe.sqlite_path, primaries(sim.truth()), timeout=300)
            if ready is None:
                raise RuntimeError("initial snapshot never reached the SQL sink")
            victim = "node1"
            moved = sum(1 for c in sim.truth()["nodes"][victim]["contacts"])
            t0 = time.monotonic()
            await sim.run_scenario("storm", node=victim)
            t_last = time.monotonic()
            want = primaries(sim.truth(), live_only=True)
            took = await wait_converged(pipe.sqlite_path, want, timeout=600 if not quick else 120, poll=0.2)
            return {
                "phones": phones,
                "moved": moved,
                "storm_emit_s": round(t_last - t0, 2),
                "converged_after_last_event_s": round(took, 2) if took is not None else None,
                "converged": took is not None,
            }
    finally:
        await sim.stop()


if __name__ == "__main__":  # pragma: no cover
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        fn = run_storm if "storm" in sys.argv else run_latency
        print(asyncio.run(fn(quick="--quick" in sys.argv, work=Path(d))))
