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
    astdb_nodes_of,
    astdb_want,
    pipeline,
    primaries,
    redis_nodes_of,
    redis_nodes_sync,
    sql_nodes,
    sql_nodes_of,
    wait_stores,
)
from producers.simulator.scenarios import run_scenario

logger = logging.getLogger(__name__)

__all__ = ["run_latency", "run_storm", "run_latency_and_storm", "run_scale", "main"]


async def _start_sim(nodes: int, phones: int) -> Any:
    from producers.simulator import SimConfig, Simulator

    sim = Simulator(SimConfig(nodes=nodes, phones=phones, ami_port=0, initial="spread"))
    await sim.start()
    return sim


STOP_GRACE = 2.0  # the pipeline is thrown away after a measurement: no need to wait for a clean stop


def _suffix(name: str) -> str:
    return f"{name}{int(time.time() * 1000)}"


# Seconds of moves at each rate of AMI events/s (the simulator's count); the last rate is the
# section's headline, the others show the floor on a machine that is not saturated.
E2E_QUICK: dict[str, Any] = {"phones": 900, "rates": (2000.0,), "seconds": 3.0, "broker_seconds": 3.0}
E2E_FULL: dict[str, Any] = {"phones": 3000, "rates": (200.0, 2000.0), "seconds": 20.0, "broker_seconds": 10.0}
AT_RATE = ("ami_events_per_s", "every_store_p50_ms", "every_store_p99_ms", "hop_registrations_created_p50_ms",
           "hop_locations_created_p50_ms", "cpu_machine_busy_pct", "lost")
STORM_PHONES = {True: 900, False: 100_000}
SINKS = ("sql", "redis", "astdb")


def _redis_prefix(suffix: str) -> str:
    return f"astreg-bench-{suffix}:"


async def _latency_on(sim: Any, pipe: Any, quick: bool, phones: int) -> dict[str, Any]:
    """Every store loaded; the broker's own latency at the rate; then the moves."""
    from astreg.tools.latency import broker_latency, measure_store_latency

    sizes = E2E_QUICK if quick else E2E_FULL
    want = primaries(sim.truth())
    stores = _stores(sim, pipe, pipe.astdb_sinks)
    t0 = time.monotonic()
    loaded = await wait_stores(stores, _wants(stores, want), timeout=120,
                               partial=_partials(sim, pipe, pipe.astdb_sinks))
    if any(v is None for v in loaded.values()):
        raise RuntimeError(f"the initial snapshot never reached every store: {loaded}")
    initial = time.monotonic() - t0
    *lower, rate = sizes["rates"]
    broker = await broker_latency(pipe.kafka, f"astreg-bench-latency-{int(time.time() * 1000)}",
                                  rate=rate, seconds=sizes["broker_seconds"], partitions=pipe.topics.partitions)
    extra: dict[str, Any] = {}
    for r in lower:
        at = await measure_store_latency(sim, pipe, rate=r, seconds=sizes["seconds"], current=want)
        extra.update({f"at_{int(r)}_{k}": at[k] for k in AT_RATE})
    figures = await measure_store_latency(sim, pipe, rate=rate, seconds=sizes["seconds"], current=want)
    figures.update(extra)
    figures["broker_p50_ms"], figures["broker_p99_ms"] = broker["p50_ms"], broker["p99_ms"]
    if broker["p50_ms"] and figures.get("every_store_p50_ms") is not None:
        # The pipeline crosses the broker twice (registrations, then locations).
        figures["every_store_p50_vs_two_broker_hops"] = round(figures["every_store_p50_ms"] / (2 * broker["p50_ms"]), 2)
    figures["phones"] = phones
    figures["initial_load_s"] = round(initial, 2)
    return figures


async def run_latency(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """AMI event emitted by the simulator → row in every store (SQL, Redis, AstDB of each node)."""
    phones = int((E2E_QUICK if quick else E2E_FULL)["phones"])
    sim = await _start_sim(3, phones)
    suffix = _suffix("e2e")
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=suffix, stop_grace=STOP_GRACE, sinks=SINKS,
                      redis_prefix=_redis_prefix(suffix)) as pipe:
            try:
                return await _latency_on(sim, pipe, quick, phones)
            finally:
                await _drop_redis(pipe)
    finally:
        await sim.stop()


async def run_latency_and_storm(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """``--quick`` with both sections: one pipeline (every sink) and one simulator (the storm's
    phones) serve the latency measurement, then the storm; start-up is most of a small run's
    time. Returns ``{"e2e": ..., "storm": ...}``."""
    phones = STORM_PHONES[quick]
    t_start = time.monotonic()
    sim = await _start_sim(3, phones)
    suffix = _suffix("e2estorm")
    try:
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=suffix, sinks=SINKS, stop_grace=STOP_GRACE,
                      redis_prefix=_redis_prefix(suffix)) as pipe:
            try:
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
                await _drop_redis(pipe)
    finally:
        await sim.stop()


# One, two, then three workers on 12 partitions, each on a fresh pipeline, the same moves.
SCALE: dict[bool, dict[str, Any]] = {True: {"phones": 900, "rate": 500.0, "seconds": 3.0},
                                     False: {"phones": 3000, "rate": 1000.0, "seconds": 15.0}}
SCALE_FIGURES = ("every_store_p50_ms", "every_store_p99_ms", "workers_cpu_us_per_record", "cpu_cores_used_workers",
                 "cpu_machine_busy_pct", "registration_records", "lost")


async def _wait_ready(urls: list[str], partitions: int, timeout: float) -> None:
    """Until every worker is ready and together they own each partition exactly once."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            owned: list[int] = []
            try:
                for url in urls:
                    async with session.get(f"{url}/readyz") as resp:
                        if resp.status != 200:
                            break
                        owned += (await resp.json())["partitions"]
                else:
                    if sorted(owned) == list(range(partitions)):
                        return
            except (aiohttp.ClientError, KeyError, ValueError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"the {len(urls)} workers did not share the {partitions} partitions within {timeout:.0f} s")


async def run_scale(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """The same moves through one, two and three workers on 12 partitions: every store's latency
    and the workers' CPU per registration record, side by side (the one-worker run is the
    baseline of the ratios)."""
    from astreg.tools.latency import measure_store_latency

    sizes = SCALE[quick]
    out: dict[str, Any] = {"partitions": 12, "rate_per_s": sizes["rate"], "seconds": sizes["seconds"]}
    for n in (1, 2, 3):
        sim = await _start_sim(3, sizes["phones"])
        suffix = _suffix(f"scale{n}w")
        try:
            with pipeline(work / f"workers{n}", dict(sim.ports), kafka=kafka, workers=n, partitions=12, suffix=suffix,
                          sinks=SINKS, stop_grace=STOP_GRACE, redis_prefix=_redis_prefix(suffix)) as pipe:
                try:
                    await _wait_ready(pipe.web_urls, 12, timeout=120)
                    await _initial(sim, pipe, quick)
                    want = primaries(sim.truth())
                    fig = await measure_store_latency(sim, pipe, rate=sizes["rate"], seconds=sizes["seconds"],
                                                      current=want)
                finally:
                    await _drop_redis(pipe)
        finally:
            await sim.stop()
        out.update({f"workers_{n}_{k}": fig.get(k) for k in SCALE_FIGURES})
    for n in (2, 3):
        for k in ("workers_cpu_us_per_record", "every_store_p50_ms"):
            one, many = out.get(f"workers_1_{k}"), out.get(f"workers_{n}_{k}")
            if one and many:
                out[f"{k}_{n}_vs_1"] = round(many / one, 2)
    return out


async def _drop_redis(pipe: Any) -> None:
    """Remove the run's keys from Redis (each run has its own prefix)."""
    if "redis" not in pipe.sinks:
        return
    import redis.asyncio as aioredis

    client = aioredis.from_url(pipe.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{pipe.redis_prefix}*", count=5000)]
        for i in range(0, len(keys), 5000):
            await client.unlink(*keys[i:i + 5000])
    finally:
        await client.aclose()


def _stores(sim: Any, pipe: Any, nodes: list[str]) -> dict[str, Callable[[], dict[str, Any]]]:
    stores: dict[str, Callable[[], dict[str, Any]]] = {"sql": lambda: sql_nodes(pipe.sqlite_path)}
    if "redis" in pipe.sinks:
        stores["redis"] = lambda: redis_nodes_sync(pipe.redis_url, pipe.redis_prefix)
    for node in nodes:
        stores[f"astdb_{node}"] = (lambda db: lambda: astdb_nodes(db))(sim.nodes[node].astdb)
    return stores


def _partials(sim: Any, pipe: Any, nodes: list[str]) -> dict[str, Callable[[list[str]], dict[str, Any]]]:
    """Readers of some keys of each store (see ``wait_stores``)."""
    out: dict[str, Callable[[list[str]], dict[str, Any]]] = {"sql": lambda keys: sql_nodes_of(pipe.sqlite_path, keys)}
    if "redis" in pipe.sinks:
        out["redis"] = lambda keys: redis_nodes_of(pipe.redis_url, pipe.redis_prefix, keys)
    for node in nodes:
        out[f"astdb_{node}"] = (lambda db: lambda keys: astdb_nodes_of(db, keys))(sim.nodes[node].astdb)
    return out


def _wants(stores: dict[str, Any], want: dict[str, str]) -> dict[str, dict[str, str]]:
    astdb = astdb_want(want)
    redis = {ep.partition("/")[2] or ep: node for ep, node in want.items()}
    return {name: want if name == "sql" else redis if name == "redis" else astdb for name in stores}


async def run_storm(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    """A node dies; all its phones re-register on the other nodes. Seconds from the last
    registration until every store the pipeline writes equals the simulator's truth: the SQLite
    sink, Redis and the AstDB (key ``node/<resource>``) of every live node, each written by its
    own AstDB sink. The dead node's AstDB cannot be written (its sink waits for it to come back).
    Each store is read whole once, then only its wrong keys, in a thread (``wait_stores``), so
    that the in-process simulator keeps answering the AstDB sinks while 100,000 keys are compared."""
    phones = STORM_PHONES[quick]
    t_start = time.monotonic()
    sim = await _start_sim(3, phones)
    try:
        suffix = _suffix("storm")
        with pipeline(work, dict(sim.ports), kafka=kafka, suffix=suffix, sinks=SINKS, stop_grace=STOP_GRACE,
                      redis_prefix=_redis_prefix(suffix)) as pipe:
            try:
                figures = await _storm_on(sim, pipe, quick, phones)
            finally:
                await _drop_redis(pipe)
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
                               timeout=120 if quick else 600, poll=0.1 if quick else 0.5,
                               progress=progress, progress_every=1.0 if quick else 10.0,
                               partial=_partials(sim, pipe, pipe.astdb_sinks))
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
                             progress_every=1.0 if quick else 5.0, partial=_partials(sim, pipe, live))
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
@click.option("--kafka", "broker", type=click.Choice(["apache", "embedded"]), default="embedded", show_default=True,
              show_envvar=True, help="Broker of the run, started here: Apache Kafka or the embedded one.")
@click.option("--rate", "rates", type=float, multiple=True, show_envvar=True,
              help="AMI events/s of the moves, once per rate given (default: the section's rates).")
@click.option("--seconds", type=float, default=None, show_envvar=True,
              help="Seconds of moves at each rate (default: the section's).")
def main(quick: bool, storm: bool, broker: str, rates: tuple[float, ...], seconds: float | None) -> None:
    """AMI event to every store's row latency, or storm convergence, as JSON."""
    sizes = E2E_QUICK if quick else E2E_FULL
    if rates:
        sizes["rates"] = tuple(rates)
    if seconds is not None:
        sizes["seconds"] = seconds
    fn = run_storm if storm else run_latency

    async def run(work: Path) -> dict[str, Any]:
        if broker == "embedded":
            return await fn(quick=quick, work=work)
        from astreg.tools.bench.broker import apache_broker

        cluster = apache_broker(work)
        await asyncio.to_thread(cluster.start)
        try:
            return await fn(quick=quick, work=work / "run", kafka=cluster.client_settings(embedded=False))
        finally:
            await asyncio.to_thread(cluster.stop)

    with tempfile.TemporaryDirectory(prefix="astreg-bench-") as tmp:
        figures = asyncio.run(run(Path(tmp)))
    figures.pop("timeline", None)
    click.echo(json.dumps(figures, indent=2, default=str))
