"""``astreg demo``: the whole pipeline on one machine, with a live status screen.

Starts the embedded broker, creates the topics, a simulator with 3 nodes (or points at real
Asterisk nodes with ``--ami``), one producer per node, two Faust workers, the SQLite sink and an
AstDB sink per node; prints the page URL and the SQLite file; shows a live status
(events/s, table size, per-node counts, lag) until Ctrl-C, then stops everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from pydantic import Field, SecretStr
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import Progress, SpinnerColumn, TextColumn
from rich.table import Table

from astreg.auth import ensure_cluster_key
from astreg.broker import EmbeddedBroker, free_port
from astreg.errors import ConfigError
from astreg.options import build, settings_options
from astreg.proc import Child, ProcessGroup, astreg_argv
from astreg.settings import AstregSettings, KafkaSettings, TopicSettings
from astreg.topics import ensure_topics

__all__ = ["demo", "DemoSettings", "Stack", "start_stack", "status_view"]

SCENARIOS = "steady,churn,move,calls"
# Ctrl-C or --duration: every part gets this long to stop cleanly before it is killed.
STOP_GRACE = 8.0
# SIGTERM: a supervisor's budget may be a second (docker stop -t 1), so everything is stopped
# (SIGTERM, then SIGKILL) within this. The children also get a parent-death signal
# (astreg.proc.die_with_parent), for when the demo itself is killed first.
TERM_GRACE = 0.5


class DemoSettings(AstregSettings):
    """Options of ``astreg demo``."""

    phones: int = Field(3000, ge=1, description="Simulated phones (spread over the simulated nodes).")
    nodes: int = Field(3, ge=1, description="Simulated Asterisk nodes.")
    scenario: str = Field(SCENARIOS, description="Simulator scenarios to run (comma separated).")
    rate: int = Field(200, ge=0, description="Scenario events per second across the simulator.")
    ami: str | None = Field(
        None, description="Real Asterisk AMI addresses HOST:PORT,... instead of the simulator."
    )
    ami_user: str = Field("astreg", description="AMI user (simulator default: astreg).")
    ami_secret: SecretStr = Field(SecretStr("astreg"), description="AMI secret.")
    data_dir: Path = Field(Path("astreg-data"), description="Where the SQLite file, worker state and logs go.")
    web_port: int = Field(0, ge=0, description="Page/API port of the first worker (0: a free port).")
    duration: float = Field(0, ge=0, description="Stop after this many seconds (0: until Ctrl-C).")
    live: bool = Field(True, description="Show the live status screen (off: one status line every 5 s).")


@dataclass
class Stack:
    """What the demo started, for the status screen and for tests."""

    broker: EmbeddedBroker | None
    kafka: KafkaSettings
    topics: TopicSettings
    procs: ProcessGroup
    ami: dict[str, str] = field(default_factory=dict)  # node -> host:port
    web_urls: list[str] = field(default_factory=list)
    sqlite_path: Path | None = None
    control_url: str | None = None

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Children, then the broker they talk to, all within ``grace`` seconds (then SIGKILL)."""
        deadline = time.monotonic() + grace
        self.procs.stop_all(grace)
        if self.broker is not None:
            self.broker.stop(max(0.1, deadline - time.monotonic()))


class _Terminated(Exception):  # private control flow: raised by the SIGTERM handler, caught in demo()
    """SIGTERM reached the demo: stop everything within TERM_GRACE."""


def _wait_lines(child: Child, pattern: str, count: int, timeout: float) -> list[re.Match[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(re.finditer(pattern, child.log(), re.M))
        if len(found) >= count:
            return found
        if not child.alive():
            raise click.ClickException(f"{child.name} exited early:\n{child.log()[-2000:]}")
        time.sleep(0.1)
    raise click.ClickException(f"{child.name} did not print {pattern!r} within {timeout:.0f}s:\n{child.log()[-2000:]}")


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return True
        time.sleep(0.3)
    return False


def start_stack(cfg: DemoSettings, progress: Progress | None = None) -> Stack:
    """Start every part; on any failure stop what was started and raise."""
    data = cfg.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    # The embedded broker starts empty: worker state from an earlier run would hold offsets and
    # rows of a log that no longer exists.
    for old in data.glob("worker*"):
        shutil.rmtree(old, ignore_errors=True)
    logs = data / "logs"
    # The demo stands in for a whole cluster: one cluster secret signs for every simulated node
    # (a real deployment gives each producer only its node's key: docs/security.md).
    key = ensure_cluster_key(data / "keys")

    def step(msg: str) -> None:
        if progress is not None:
            progress.console.log(msg)

    broker = EmbeddedBroker(log_file=logs / "broker.log")
    logs.mkdir(parents=True, exist_ok=True)
    kafka = KafkaSettings(bootstrap=broker.bootstrap, embedded=True)
    topics = TopicSettings()
    stack = Stack(broker, kafka, topics, ProcessGroup(log_dir=logs, env={
        "ASTREG_BOOTSTRAP": broker.bootstrap, "ASTREG_EMBEDDED": "1", "ASTREG_CLUSTER_KEY_FILE": str(key)}))
    try:
        broker.start()
        step(f"broker up at {broker.bootstrap}")
        asyncio.run(ensure_topics(kafka, topics))
        step("topics created")
        secret = cfg.ami_secret.get_secret_value()
        # The simulator, the producers and the AstDB sinks: never on a command line.
        stack.procs.env.update({"ASTREG_AMI_SECRET": secret, "ASTREG_ASTDB_AMI_SECRET": secret})
        if cfg.ami:
            for i, addr in enumerate(a.strip() for a in cfg.ami.split(",") if a.strip()):
                stack.ami[f"ami{i + 1}"] = addr
        else:
            sim = stack.procs.start("simulator", astreg_argv(
                "simulate", "--nodes", str(cfg.nodes), "--phones", str(cfg.phones), "--ami-port", "0",
                "--control-port", "0", "--scenario", cfg.scenario, "--rate", str(cfg.rate),
                "--ami-user", cfg.ami_user,
            ))
            for m in _wait_lines(sim, r"^ami=(\S+)@(\S+)$", cfg.nodes, 60):
                stack.ami[m.group(1)] = m.group(2)
            ctl = _wait_lines(sim, r"^control=(\S+)$", 1, 30)
            stack.control_url = ctl[0].group(1)
            step(f"simulator: {cfg.nodes} nodes, {cfg.phones} phones")
        for name, addr in stack.ami.items():
            args = ["producer", "--ami", addr, "--ami-user", cfg.ami_user]
            if not cfg.ami:
                args += ["--node", name]
            stack.procs.start(f"producer-{name}", astreg_argv(*args))
        step(f"{len(stack.ami)} producers started")
        for i in (1, 2):
            port = cfg.web_port if (i == 1 and cfg.web_port) else free_port()
            stack.procs.start(f"worker{i}", astreg_argv(
                "worker", "--web-port", str(port), "--data-dir", str(data / f"worker{i}"), "--store", "rocksdb",
            ))
            stack.web_urls.append(f"http://127.0.0.1:{port}")
        stack.sqlite_path = data / "astreg.sqlite"
        stack.procs.start("sink-sql", astreg_argv("sink", "sql", "--url", f"sqlite+aiosqlite:///{stack.sqlite_path}"))
        # One AstDB sink per node, each in its own consumer group (docs/operations.md): a single
        # sink for every node retries each batch while any one node is unreachable, so one node
        # down would stop the AstDB of all the others.
        for name, addr in stack.ami.items():
            stack.procs.start(f"sink-astdb-{name}", astreg_argv(
                "sink", "astdb", "--ami", addr, "--ami-user", cfg.ami_user,
                "--group", f"astreg-sink-astdb-{_group_safe(name)}",
            ))
        step(f"sinks started: SQLite and {len(stack.ami)} AstDB (one per node)")
        for url in stack.web_urls:
            if not _wait_http(f"{url}/healthz", 90):
                raise click.ClickException(f"worker at {url} did not come up; see {logs}")
        step("workers serving")
        return stack
    except BaseException as exc:
        stack.stop(TERM_GRACE if isinstance(exc, _Terminated) else STOP_GRACE)
        raise


def _group_safe(name: str) -> str:
    """A node name (or host:port) as part of a consumer group id."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def _get_json(client: httpx.Client, url: str) -> Any:
    try:
        resp = client.get(url, timeout=2.0)
        return resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, json.JSONDecodeError):
        return None


@dataclass
class _Rate:
    last: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def update(self, total: float) -> float:
        now = time.monotonic()
        rate = (total - self.last) / max(now - self.at, 1e-6) if self.last else 0.0
        self.last, self.at = total, now
        return rate


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            with contextlib.suppress(ValueError, IndexError):
                total += float(line.rsplit(" ", 1)[1])
    return total


def status_view(stack: Stack, client: httpx.Client, rate: _Rate) -> Table | Group:
    nodes = _get_json(client, f"{stack.web_urls[0]}/api/v1/nodes") or {}
    applied = 0.0
    for url in stack.web_urls:
        with contextlib.suppress(httpx.HTTPError):
            applied += _metric(client.get(f"{url}/metrics", timeout=2.0).text, "astreg_stream_events_total")
    listing = _get_json(client, f"{stack.web_urls[0]}/api/v1/endpoints?limit=1") or {}
    table = Table(title="astreg demo", expand=False)
    table.add_column("node")
    table.add_column("state")
    table.add_column("AMI")
    table.add_column("contacts", justify="right")
    table.add_column("primary for", justify="right")
    table.add_column("last heard")
    table.add_column("Asterisk")
    for n in (nodes.get("nodes") if isinstance(nodes, dict) else nodes) or []:
        counts = n.get("table") or {}
        seen = n.get("seen_ms_ago")
        table.add_row(str(n.get("node")), str(n.get("state")), str(n.get("ami_link")), str(counts.get("contacts", "")),
                      str(counts.get("primary", "")), f"{seen / 1000:.1f} s ago" if seen is not None else "",
                      str(n.get("asterisk_version") or ""))
    alive = sum(c.alive() for c in stack.procs.children)
    head = (f"page: {stack.web_urls[0]}/   SQLite: {stack.sqlite_path}\n"
            f"events processed/s: {rate.update(applied):,.0f}   table size: {listing.get('total', '?')}   "
            f"processes alive: {alive}/{len(stack.procs.children)}   (Ctrl-C stops everything)")
    return Group(Panel(head), table)


@click.command()
@settings_options(DemoSettings)
def demo(**kw: Any) -> None:
    """Run the whole pipeline on this machine, embedded broker included."""
    (cfg,) = build(kw, DemoSettings)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    console = Console()
    stopping = {"now": False}

    def on_signal(*_: object) -> None:
        # The first SIGTERM interrupts whatever runs (start-up, the status loop); once stopping,
        # a repeated one must not interrupt the stop itself.
        if not stopping["now"]:
            stopping["now"] = True
            raise _Terminated

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console, transient=True) as progress:
            progress.add_task("starting astreg demo …")
            stack = start_stack(cfg, progress)
    except _Terminated:
        console.print("stopped.")
        return
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    console.print(f"[bold]page:[/] {stack.web_urls[0]}/   [bold]API:[/] {stack.web_urls[0]}/api/v1/endpoints")
    console.print(f"[bold]SQLite:[/] {stack.sqlite_path}   [bold]Kafka:[/] {stack.kafka.bootstrap}   [bold]logs:[/] {stack.procs.log_dir}")
    sys.stdout.flush()
    deadline = time.monotonic() + cfg.duration if cfg.duration else None
    rate = _Rate()
    grace = STOP_GRACE
    try:
        with httpx.Client() as client:
            if cfg.live and console.is_terminal:
                with Live(status_view(stack, client, rate), console=console, refresh_per_second=1) as live:
                    while not stopping["now"] and (deadline is None or time.monotonic() < deadline):
                        time.sleep(1)
                        live.update(status_view(stack, client, rate))
            else:
                while not stopping["now"] and (deadline is None or time.monotonic() < deadline):
                    time.sleep(5)
                    console.print(status_view(stack, client, rate))
    except KeyboardInterrupt:
        pass
    except _Terminated:
        grace = TERM_GRACE
    finally:
        stopping["now"] = True
        console.print("stopping …")
        stack.stop(grace)
        console.print("stopped.")
