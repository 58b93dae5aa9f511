"""Load benchmark of the API's hot path: ``GET /api/v1/endpoints/{endpoint}/node`` (what every
call's ``CURL()`` asks), p50/p99 latency with N concurrent clients, loopback only.

:func:`measure_node_lookups` loads workers that are already running; :func:`run` sets up the
whole thing (embedded broker, topics, two ``astreg worker`` processes, N registrations) and
measures, so half the lookups are answered by the worker asked and half are forwarded to the
owner. Standalone::

    astreg bench web --endpoints 10000 --clients 50 --requests 20000

Both return a dict of figures (:func:`run` is section "web" of ``astreg bench``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import click

from astreg.auth import Keyring
from astreg.broker import free_port, wait_port
from astreg.tools.latency import percentile as _percentile

__all__ = ["measure_node_lookups", "measure_row_index", "run", "main"]

logger = logging.getLogger(__name__)


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the web benchmark only loads loopback addresses, not {host!r}")


async def measure_node_lookups(
    base_url: str,
    endpoints: list[str],
    *,
    clients: int = 50,
    requests: int = 20_000,
    max_seconds: float = 60.0,
    token: str | None = None,
    bare: bool = False,
    seed: int = 1,
) -> dict[str, Any]:
    """``clients`` concurrent loops asking ``base_url`` for random endpoints' node.

    Stops after ``requests`` answers or ``max_seconds``. Latencies are split by whether the
    worker asked answered itself or forwarded to the owner (``X-Astreg-Served-By``).
    """
    _require_loopback(base_url)
    base = base_url.rstrip("/")
    rng = random.Random(seed)
    names = [e.split("/", 1)[1] if bare else quote(e, safe="") for e in endpoints]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    local: list[float] = []
    routed: list[float] = []
    errors: dict[str, int] = {}
    issued = 0
    deadline = time.monotonic() + max_seconds
    connector = aiohttp.TCPConnector(limit=clients)

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def client() -> None:
            nonlocal issued
            while issued < requests and time.monotonic() < deadline:
                issued += 1
                url = f"{base}/api/v1/endpoints/{rng.choice(names)}/node"
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        body = await resp.read()
                        elapsed = time.perf_counter() - t0
                        if resp.status != 200 or not body:
                            errors[str(resp.status)] = errors.get(str(resp.status), 0) + 1
                            continue
                        served = resp.headers.get("X-Astreg-Served-By", "").rstrip("/")
                except aiohttp.ClientError as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                (local if _same_origin(served, base) else routed).append(elapsed)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started

    every = sorted(local + routed)
    local.sort()
    routed.sort()

    def ms(values: list[float], q: float) -> float | None:
        return round(_percentile(values, q) * 1000, 2) if values else None

    return {
        "clients": clients,
        "requests_ok": len(every),
        "errors": errors,
        "seconds": round(wall, 2),
        "requests_per_s": round(len(every) / wall, 1) if wall > 0 else 0.0,
        "p50_ms": ms(every, 0.50),
        "p99_ms": ms(every, 0.99),
        "mean_ms": round(statistics.fmean(every) * 1000, 2) if every else None,
        "local_p50_ms": ms(local, 0.50),
        "local_p99_ms": ms(local, 0.99),
        "routed_p50_ms": ms(routed, 0.50),
        "routed_p99_ms": ms(routed, 0.99),
        "routed_share": round(len(routed) / len(every), 3) if every else 0.0,
    }


def measure_row_index(rows: int = 50_000) -> dict[str, Any]:
    """CPU cost of one worker's list questions over ``rows`` rows (no HTTP): index build per
    snapshot (first question of a sort order / search) and the following cached questions."""
    from schemas.models import Contact, ContactStatus, EndpointLocation, LocationStatus
    from streams.web import api

    def row(i: int) -> EndpointLocation:
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        contact = Contact(node=f"node{i % 3}", uri=f"sip:{i}@{ip}:5060", registered_at_ms=i, updated_at_ms=i,
                          status=ContactStatus.REACHABLE, ip=ip, port=5060, user_agent=f"Yealink {i % 5}",
                          rtt_us=i % 900, primary=True)
        return EndpointLocation(endpoint=f"PJSIP/{100000 + i}", technology="PJSIP", resource=str(100000 + i),
                                updated_at_ms=i, primary_node=contact.node, status=LocationStatus.REGISTERED,
                                contact_uri=contact.uri, ip=ip, port=5060, user_agent=contact.user_agent,
                                rtt_us=contact.rtt_us, contacts=(contact,), nodes=(contact.node,))

    locs = [row(i) for i in range(rows)]
    out: dict[str, Any] = {"rows": rows}

    def timed(name: str, index: api.RowIndex, params: dict[str, str]) -> None:
        t0 = time.perf_counter()
        index.page(api.parse_query(params))
        out[name] = round((time.perf_counter() - t0) * 1000, 1)

    t0 = time.perf_counter()
    with api.paused_gc():
        api.count_by_node(locs)
    out["node_counts_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    index = api.RowIndex(locs)
    timed("first_page_by_endpoint_ms", index, {})
    timed("next_question_same_order_ms", index, {"limit": "100"})
    timed("first_search_ms", index, {"q": "1234"})
    timed("next_search_ms", index, {"q": "12345"})
    timed("first_sort_by_rtt_desc_ms", index, {"sort": "rtt", "order": "desc"})
    timed("filter_node_ms", index, {"node": "node1"})
    return out


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.port, pa.hostname in ("127.0.0.1", "localhost")) == (pb.port, pb.hostname in ("127.0.0.1", "localhost"))


async def _feed(kafka: Any, topics: Any, endpoints: list[str]) -> None:
    from aiokafka import AIOKafkaProducer

    from schemas.codec import registration_codec
    from schemas.models import ContactStatus, EventKind, RegistrationEvent, Source

    codec = registration_codec()
    keyring = Keyring.from_env()
    epoch = int(time.time() * 1000)
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=kafka.idempotent, linger_ms=5)
    await producer.start()
    try:
        for i, endpoint in enumerate(endpoints):
            node = f"node{i % 3}"
            ev = RegistrationEvent(
                endpoint=endpoint, node=node, producer_epoch=epoch, seq=i + 1, event_time_ms=epoch,
                kind=EventKind.CONTACT, source=Source.LIVE, contact_uri=f"sip:{i}@10.0.{i // 256 % 256}.{i % 256}",
                contact_status=ContactStatus.REACHABLE, ip=f"10.0.{i // 256 % 256}.{i % 256}", port=5060,
            )
            value = codec.encode(ev)
            await producer.send(topics.topic_registrations, value, key=endpoint.encode(),
                                headers=keyring.headers(b"registrations", node, endpoint.encode(), value) if keyring else None)
        await producer.flush()
    finally:
        await producer.stop()


async def _wait_rows(url: str, total: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/api/v1/endpoints", params={"limit": "1"}) as r:
                    last = (r.status, await r.text())
                    if r.status == 200 and json.loads(last[1])["total"] == total:
                        return
            except aiohttp.ClientError as exc:
                last = repr(exc)
            await asyncio.sleep(0.5)
    raise RuntimeError(f"workers never served {total} rows: {last}")


def run(endpoints: int = 10_000, clients: int = 50, requests: int = 20_000, max_seconds: float = 60.0,
        workers: int = 2, bare: bool = False, kafka: Any = None) -> dict[str, Any]:
    """Broker (``kafka``: a running one, else an embedded one) + topics + ``workers`` workers +
    ``endpoints`` registrations, then the load."""
    from astreg.broker import EmbeddedBroker
    from astreg.proc import ProcessGroup, astreg_argv
    from astreg.settings import KafkaSettings, TopicSettings
    from astreg.topics import ensure_topics

    ids = [f"PJSIP/{100000 + i}" for i in range(endpoints)]
    with tempfile.TemporaryDirectory(prefix="astreg-webbench-") as tmp:
        broker = EmbeddedBroker().start() if kafka is None else None
        try:
            if broker is not None:
                kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
            topics = TopicSettings(partitions=4).with_suffix(f"webbench{int(time.time())}")
            asyncio.run(ensure_topics(kafka, topics))
            with ProcessGroup(Path(tmp) / "logs") as procs:
                ports = [free_port() for _ in range(workers)]
                for n, port in enumerate(ports):
                    procs.start(f"w{n}", astreg_argv(
                        "worker", "--bootstrap", kafka.bootstrap, "--embedded" if kafka.embedded else "--no-embedded",
                        "--partitions", "4",
                        "--topic-registrations", topics.topic_registrations, "--topic-nodes", topics.topic_nodes,
                        "--topic-locations", topics.topic_locations, "--topic-deadletter", topics.topic_deadletter,
                        "--web-port", str(port), "--data-dir", str(Path(tmp) / f"w{n}"), "--store", "memory",
                        "--worker-id", f"w{n}",
                    ), env={"ASTREG_API_TOKEN": ""})
                url = f"http://127.0.0.1:{ports[0]}"
                asyncio.run(_feed(kafka, topics, ids))
                asyncio.run(_wait_rows(url, len(ids), timeout=120))
                figures = asyncio.run(measure_node_lookups(
                    url, ids, clients=clients, requests=requests, max_seconds=max_seconds, bare=bare))
                # The baseline, same load, same machine, same run: aiohttp serving a constant.
                port = free_port()
                procs.start("constant", [sys.executable, "-m", "astreg.tools.bench.constant", "--port", str(port)])
                if not wait_port("127.0.0.1", port, 30):
                    raise RuntimeError("the baseline HTTP server did not start")
                base = asyncio.run(measure_node_lookups(
                    f"http://127.0.0.1:{port}", ids, clients=clients, requests=requests, max_seconds=max_seconds,
                    bare=bare))
                figures.update({"baseline_p50_ms": base["p50_ms"], "baseline_p99_ms": base["p99_ms"],
                                "baseline_requests_per_s": base["requests_per_s"]})
                if base["p99_ms"]:
                    figures["p99_vs_baseline"] = round(figures["p99_ms"] / base["p99_ms"], 2)
        finally:
            if broker is not None:
                broker.stop()
    return {"endpoints": endpoints, "workers": workers, "bare_names": bare, **figures}


@click.command()
@click.option("--endpoints", type=int, default=10_000, show_default=True, show_envvar=True,
              help="Endpoints registered before the load.")
@click.option("--clients", type=int, default=50, show_default=True, show_envvar=True, help="Concurrent clients.")
@click.option("--requests", type=int, default=20_000, show_default=True, show_envvar=True,
              help="Lookups in all (or until --max-seconds).")
@click.option("--max-seconds", type=float, default=60.0, show_default=True, show_envvar=True,
              help="Longest load.")
@click.option("--workers", type=int, default=2, show_default=True, show_envvar=True, help="Worker processes.")
@click.option("--bare", is_flag=True, show_envvar=True, help="Ask for 1001 instead of PJSIP%2F1001.")
@click.option("--index-only", type=int, default=None, metavar="ROWS", show_envvar=True,
              help="Only the CPU cost of list questions over ROWS rows (no broker, no HTTP).")
def main(endpoints: int, clients: int, requests: int, max_seconds: float, workers: int, bare: bool,
         index_only: int | None) -> None:
    """Node lookup latency under concurrent clients, as JSON."""
    if index_only:
        click.echo(json.dumps(measure_row_index(index_only), indent=2))
        return
    click.echo(json.dumps(run(endpoints, clients, requests, max_seconds, workers, bare), indent=2))
