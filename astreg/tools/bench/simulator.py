"""Benchmarks of the AMI simulator: events/s delivered to one raw reader per node, RSS per phone.

    astreg bench simulator [--phones 1000000] [--seconds 5]

Functions return dicts of figures (section "simulator" of ``astreg bench``); numbers go to
docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from typing import Any

import click
import psutil

from producers.simulator.config import SimConfig
from producers.simulator.core import Simulator

__all__ = ["bench_events", "bench_memory", "main"]


class _Counter(asyncio.Protocol):
    """A raw-socket AMI reader that only counts bytes and message ends (no parsing cost)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"Action: Login\r\nUsername: astreg\r\nSecret: astreg\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        self.bytes += len(data)


async def _bench_events(nodes: int, phones: int, seconds: float) -> dict[str, Any]:
    cfg = SimConfig(nodes=nodes, phones=phones, ami_port=0, initial="none", security_events=True,
                    client_buffer_limit=1 << 30)
    async with Simulator(cfg) as sim:
        loop = asyncio.get_running_loop()
        readers = []
        for port in sim.ports.values():
            _t, proto = await loop.create_connection(_Counter, "127.0.0.1", port)
            readers.append(proto)
        while any(len(n.sessions) == 0 or not all(s.mask for s in n.sessions) for n in sim.nodes.values()):
            await asyncio.sleep(0.01)
        names = sim.node_names
        start_events = sum(n.stats_events for n in sim.nodes.values())
        start_bytes = sum(r.bytes for r in readers)
        t0 = time.perf_counter()
        phone = 0
        while time.perf_counter() - t0 < seconds:
            for _ in range(500):  # one batch: register + unregister = 6 status + 4 security events
                phone = phone % phones + 1
                node = names[phone % len(names)]
                await sim.register(phone, node, qualify=True)
                await sim.unregister(phone, node)
            await asyncio.sleep(0)  # flush: one write per client per batch
        for n in sim.nodes.values():
            n.flush()
        produced = sum(n.stats_events for n in sim.nodes.values()) - start_events
        sent = sum(n.stats_bytes for n in sim.nodes.values())
        while sum(r.bytes for r in readers) - start_bytes < sent - 4096:
            await asyncio.sleep(0.01)  # wait until the readers got (nearly) everything
        elapsed = time.perf_counter() - t0
        for r in readers:
            if r.transport is not None:
                r.transport.close()
    return {"nodes": nodes, "events": produced, "seconds": round(elapsed, 3),
            "events_per_s": round(produced / elapsed), "bytes_per_s": round(sent / elapsed)}


def bench_events(nodes: int = 2, phones: int = 10_000, seconds: float = 5.0) -> dict[str, Any]:
    """Events/s generated and delivered to one raw-socket reader per node."""
    return asyncio.run(_bench_events(nodes, phones, seconds))


async def _bench_memory(phones: int, nodes: int) -> dict[str, Any]:
    gc.collect()
    proc = psutil.Process()
    before = proc.memory_info().rss
    t0 = time.perf_counter()
    sim = Simulator(SimConfig(nodes=nodes, phones=phones, ami_port=0, initial="spread"))
    await sim.start()
    start_s = time.perf_counter() - t0
    gc.collect()
    after = proc.memory_info().rss
    contacts = sum(len(n.contacts) for n in sim.nodes.values())
    await sim.stop()
    return {"phones": phones, "contacts": contacts, "rss_bytes_per_phone": round((after - before) / phones),
            "rss_mb_total": round(after / 2**20), "start_seconds": round(start_s, 2)}


def bench_memory(phones: int = 1_000_000, nodes: int = 3) -> dict[str, Any]:
    """RSS bytes per registered phone (contact + device state), all phones registered."""
    return asyncio.run(_bench_memory(phones, nodes))


@click.command()
@click.option("--phones", type=int, default=1_000_000, show_default=True, show_envvar=True,
              help="Phones registered for the RSS figure (on 3 nodes).")
@click.option("--nodes", type=int, default=2, show_default=True, show_envvar=True,
              help="Nodes generating events (10,000 phones).")
@click.option("--seconds", type=float, default=5.0, show_default=True, show_envvar=True,
              help="Seconds of event generation.")
def main(phones: int, nodes: int, seconds: float) -> None:
    """Simulator events/s and RSS per phone, as JSON."""
    click.echo(json.dumps({"events": bench_events(nodes, 10_000, seconds),
                           "memory": bench_memory(phones, 3)}, indent=2))
