"""Adapters from ``astreg bench`` sections to the benchmark functions of this package.

Each benchmark keeps its measuring code in its own module (``simulator.py``, ``producer.py``,
``stream.py``...); this module only picks the sizes (``quick`` or full), names the figures and
runs synchronous benchmarks in a thread so that their own ``asyncio.run`` does not nest in the
bench's event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from astreg.settings import KafkaSettings

__all__ = ["simulator", "producer", "stream", "recovery", "sinks", "flatten_sinks", "web", "alerting"]


async def simulator(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.simulator import bench_events, bench_memory

    events = await asyncio.to_thread(bench_events, 3, 10_000, 2.0 if quick else 10.0)
    memory = await asyncio.to_thread(bench_memory, 100_000 if quick else 1_000_000, 3)
    return {"events_per_s": events["events_per_s"], "events": events["events"],
            "phones_for_memory": memory["phones"], "rss_bytes_per_phone": memory["rss_bytes_per_phone"],
            "target_events_per_s": 50_000, "ratio_vs_target": round(events["events_per_s"] / 50_000, 2)}


async def producer(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.producer import bench_producer

    figures = await bench_producer(events=20_000 if quick else 200_000, phones=2000, kafka=kafka)
    figures["ratio_vs_target"] = round(figures["ami_events_per_s"] / 20_000, 2)
    return figures


async def stream(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.stream import run

    return await run(quick=quick, work=work, kafka=kafka)  # type: ignore[no-any-return]


async def recovery(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.stream import RECOVERY_FULL_ROWS, bench_recovery, run_recovery

    if kafka is None:
        return await run_recovery(quick=quick, work=work)  # type: ignore[no-any-return]
    # On the run's broker; quick: 2,000 rows (the time is the three worker start-ups, not the
    # rows: see docs/stream.md for the large tables), full: RECOVERY_FULL_ROWS as run_recovery.
    return await bench_recovery(kafka, 2_000 if quick else RECOVERY_FULL_ROWS, work=work)  # type: ignore[no-any-return]


async def sinks(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.sinks import run_all

    return flatten_sinks(await run_all(rows=4_000 if quick else 50_000, kafka=kafka))


def flatten_sinks(nested: dict[str, Any]) -> dict[str, Any]:
    """``{kind: {part: figures}}`` of :func:`~astreg.tools.bench.sinks.run_all` as the section's
    flat figures ``<kind>_<part>_<figure>``, numbers only, plus PostgreSQL's ratio to its target."""
    flat: dict[str, Any] = {}
    for kind, parts in nested.items():
        for part, figures in parts.items():
            for key, value in figures.items():
                if isinstance(value, (int, float)) and key != "rows":
                    flat[f"{kind}_{part}_{key}"] = value
    pg = flat.get("postgresql_store_insert_rows_per_s") or flat.get("postgresql_store_rows_per_s")
    if pg:
        flat["postgresql_ratio_vs_target_20k"] = round(pg / 20_000, 2)
    return flat


async def web(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.web import run

    return await asyncio.to_thread(
        run, endpoints=2000 if quick else 10_000, clients=50, requests=2000 if quick else 20_000,
        max_seconds=20 if quick else 60, kafka=kafka)


async def alerting(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    from astreg.tools.bench.alerts import bench_alerting, bench_rtcp_mapping

    n = 10_000 if quick else 100_000
    engine = await asyncio.to_thread(bench_alerting, n, 10_000)
    rtcp = await asyncio.to_thread(bench_rtcp_mapping, n)
    return {**{f"engine_{k}": v for k, v in engine.items()}, **{f"rtcp_{k}": v for k, v in rtcp.items()}}
