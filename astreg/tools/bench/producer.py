"""Producer throughput benchmark: AMI events/s parsed, mapped, encoded and sent by one
``astreg producer`` process, and its RSS, against the simulator and the embedded broker.

    astreg bench producer [--events 200000] [--phones 2000]

The producer runs as its own process (the real CLI), so its RSS and CPU are its own; the
simulator runs in this process and floods one node with device-state changes plus a share of
registrations/unregistrations; the rate is read from the producer's Prometheus counters
(records acknowledged by Kafka), from the first flooded event to the last acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from astreg.broker import EmbeddedBroker, free_port
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics

__all__ = ["bench_producer", "bench", "main"]


def _scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "astreg_producer_records_sent_total":
                out["sent"] = out.get("sent", 0.0) + s.value
            elif s.name == "astreg_producer_snapshots_total" and s.labels.get("outcome") == "complete":
                out["snapshots"] = s.value
            elif s.name == "astreg_producer_ami_events_total":
                out["ami_in"] = out.get("ami_in", 0.0) + s.value
    return out


async def _wait(port: int, key: str, at_least: float, timeout: float, proc: psutil.Process) -> tuple[dict[str, float], int]:
    deadline = time.monotonic() + timeout
    peak = 0
    while True:
        try:
            m = await asyncio.to_thread(_scrape, port)
        except httpx.HTTPError:
            m = {}
        peak = max(peak, proc.memory_info().rss)
        if m.get(key, 0) >= at_least:
            return m, peak
        if time.monotonic() > deadline:
            raise TimeoutError(f"producer did not reach {key} >= {at_least} (have {m})")
        await asyncio.sleep(0.05)


async def bench_producer(
    events: int = 200_000, phones: int = 2000, bootstrap: str | None = None, compression: str = "lz4",
    kafka: KafkaSettings | None = None,
) -> dict[str, Any]:
    """Flood one simulated node and measure the producer process (see module docstring).
    The broker: ``kafka``, else ``bootstrap``, else an embedded one started here."""
    from producers.simulator import SimConfig, Simulator  # the simulator is a dev/bench tool

    broker = None
    if kafka is None:
        if bootstrap is None:
            broker = EmbeddedBroker().start()
            bootstrap = broker.bootstrap
        kafka = KafkaSettings(bootstrap=bootstrap, embedded=broker is not None)
    bootstrap = kafka.bootstrap
    topics = TopicSettings(partitions=12).with_suffix(f"bench{int(time.time())}")
    await ensure_topics(kafka, topics)
    sim = Simulator(SimConfig(nodes=1, phones=phones, ami_port=0, initial="spread", security_events=True,
                              client_buffer_limit=1 << 30, trunks=False))
    await sim.start()
    metrics_port = free_port()
    logs = Path(tempfile.mkdtemp(prefix="astreg-bench-"))
    group = ProcessGroup(log_dir=logs)
    try:
        child = group.start("producer", astreg_argv(
            "--log-level", "WARNING", "producer", "--ami", f"127.0.0.1:{sim.ports['node1']}", "--ami-user", "astreg",
            "--bootstrap", bootstrap, *(["--embedded"] if kafka.embedded else []),
            "--metrics-port", str(metrics_port), "--compression", compression, "--resync-interval", "3600",
            "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
            "--topic-deadletter", topics.topic_deadletter, "--topic-locations", topics.topic_locations,
        ), env={"ASTREG_AMI_SECRET": "astreg"})
        proc = psutil.Process(child.pid)
        base, _ = await _wait(metrics_port, "snapshots", 1, 60, proc)
        await asyncio.sleep(0.5)
        base = await asyncio.to_thread(_scrape, metrics_port)
        ami_before = sim.stats()["node1"]["events"]
        cpu_before = sum(proc.cpu_times()[:2])
        states = ("INUSE", "NOT_INUSE", "RINGING", "ONHOLD")
        records = 0
        started = time.monotonic()
        for i in range(events):
            phone = i % phones + 1
            if i % 20 == 0:
                # a registration cycle: ContactStatus + PeerStatus + DeviceStateChange + security noise
                if i % 40 == 0:
                    await sim.unregister(phone, "node1")
                else:
                    await sim.register(phone, "node1", qualify=False)
            else:
                await sim.device_state(phone, "node1", states[(i // phones) % 4])
            if i % 2000 == 0:
                await asyncio.sleep(0)  # let the simulator flush to the socket
        ami_events = sim.stats()["node1"]["events"] - ami_before
        # Every endpoint event becomes one record: wait until the acknowledged count stops moving.
        peak = proc.memory_info().rss
        last, last_change = base.get("sent", 0.0), time.monotonic()
        while time.monotonic() - last_change < 1.5:
            m = await asyncio.to_thread(_scrape, metrics_port)
            peak = max(peak, proc.memory_info().rss)
            if m.get("sent", 0.0) != last:
                last, last_change = m["sent"], time.monotonic()
            if time.monotonic() - started > 300:
                raise TimeoutError("producer did not catch up within 300 s")
            await asyncio.sleep(0.1)
        records = int(last - base.get("sent", 0))
        elapsed = last_change - started
        rss = proc.memory_info().rss
        cpu = sum(proc.cpu_times()[:2]) - cpu_before - 1.5 * 0.01  # minus ~idle heartbeat cost
        return {
            "ami_events": ami_events,
            "records_sent": records,
            "seconds": round(elapsed, 2),
            "ami_events_per_s": round(ami_events / elapsed),
            "records_per_s": round(records / elapsed),
            "producer_cpu_seconds": round(cpu, 2),
            "ami_events_per_cpu_s": round(ami_events / cpu),
            "records_per_cpu_s": round(records / cpu),
            "rss_mb": round(rss / 2**20, 1),
            "peak_rss_mb": round(peak / 2**20, 1),
            "compression": compression,
            "broker": "embedded" if kafka.embedded else bootstrap,
        }
    finally:
        group.stop_all()
        await sim.stop()
        if broker is not None:
            broker.stop()


def bench(**kw: Any) -> dict[str, Any]:
    """Synchronous entry for ``astreg bench``: ``bench(events=..., phones=..., bootstrap=...)``."""
    return asyncio.run(bench_producer(**kw))


@click.command()
@click.option("--events", type=int, default=200_000, show_default=True, show_envvar=True,
              help="AMI events flooded into the simulated node.")
@click.option("--phones", type=int, default=2000, show_default=True, show_envvar=True,
              help="Phones of the simulated node.")
@click.option("--bootstrap", default=None, show_envvar=True, help="External Kafka (default: an embedded broker).")
@click.option("--compression", type=click.Choice(["none", "gzip", "lz4", "zstd"]), default="lz4",
              show_default=True, show_envvar=True, help="The producer's compression.")
def main(events: int, phones: int, bootstrap: str | None, compression: str) -> None:
    """Producer AMI events/s and RSS, as JSON."""
    click.echo(json.dumps(asyncio.run(bench_producer(events, phones, bootstrap, compression)), indent=2))
