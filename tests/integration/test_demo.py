"""`astreg demo` (the README's run command) brings the whole pipeline up: within a minute the
page's API shows endpoints on all three simulated nodes and the SQLite file has their rows; Ctrl-C
(SIGINT) stops every process it started, and so do SIGTERM and even SIGKILL of the demo itself
(its children, the embedded broker included, die with it)."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from astreg.broker import free_port
from astreg.proc import Child, ProcessGroup, astreg_argv
from tests.support.procs import wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_demo_shows_endpoints_on_all_three_nodes_and_stops_cleanly(procs: ProcessGroup, tmp_path: Path) -> None:
    port = free_port()
    demo = procs.start("demo", astreg_argv("demo", "--phones", "300", "--no-live", "--data-dir", str(tmp_path / "d"),
                                           "--web-port", str(port)))
    counts: dict[str, int] = {}
    deadline = time.monotonic() + 90  # a minute once running; start-up includes two Faust workers
    while time.monotonic() < deadline:
        assert demo.alive(), demo.log()[-3000:]
        try:
            nodes = httpx.get(f"http://127.0.0.1:{port}/api/v1/nodes", timeout=2).json()["nodes"]
            counts = {n["node"]: n["table"]["primary"] for n in nodes}
            if len(counts) == 3 and all(v > 0 for v in counts.values()):
                break
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(1)
    assert sorted(counts) == ["node1", "node2", "node3"] and all(v > 0 for v in counts.values()), counts
    page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert page.status_code == 200 and "astreg" in page.text
    db = tmp_path / "d" / "astreg.sqlite"
    deadline = time.monotonic() + 30
    rows: dict[str, int] = {}
    while time.monotonic() < deadline:
        try:
            rows = dict(sqlite3.connect(db).execute("SELECT node, count(*) FROM astreg_locations GROUP BY node"))
        except sqlite3.Error:
            rows = {}
        if len(rows) == 3:
            break
        time.sleep(1)
    assert sorted(rows) == ["node1", "node2", "node3"], rows
    children = psutil.Process(demo.pid).children(recursive=True)
    assert len(children) >= 8  # simulator, 3 producers, 2 workers, 2 sinks (+ the broker)
    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(60) == 0, demo.log()[-3000:]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]


def _describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            out.append(str(p.pid))
    return out


def _started_demo(procs: ProcessGroup, tmp_path: Path) -> tuple[Child, list[psutil.Process]]:
    """`astreg demo` once it serves (it printed its page URL), and every process under it."""
    demo = procs.start("demo", astreg_argv("demo", "--phones", "300", "--no-live", "--data-dir", str(tmp_path / "d")))
    deadline = time.monotonic() + 120
    while not re.search(r"^page: http://", demo.log(), re.M):
        assert demo.alive(), demo.log()[-3000:]
        assert time.monotonic() < deadline, demo.log()[-3000:]
        time.sleep(0.2)  # poll interval of this bounded wait
    children = psutil.Process(demo.pid).children(recursive=True)
    names = [" ".join(p.cmdline()) for p in children]
    # simulator, 3 producers, 2 workers, the SQL sink, 3 AstDB sinks, the broker
    assert len(children) >= 11, names
    assert any("tansu" in n for n in names), names
    return demo, children


def test_children_die_with_a_demo_killed_by_sigkill(procs: ProcessGroup, tmp_path: Path) -> None:
    demo, children = _started_demo(procs, tmp_path)
    os.kill(demo.pid, signal.SIGKILL)
    assert demo.proc.wait(10) == -signal.SIGKILL
    alive = wait_gone(children, 15)
    assert not alive, _describe(alive)


def test_children_die_with_a_demo_given_sigterm_and_one_second(procs: ProcessGroup, tmp_path: Path) -> None:
    """A supervisor's stop: SIGTERM, one second, SIGKILL. The demo stops its children within
    that second (TERM, then KILL); whatever a slow stop leaves dies with the demo's SIGKILL."""
    demo, children = _started_demo(procs, tmp_path)
    os.kill(demo.pid, signal.SIGTERM)
    try:
        demo.proc.wait(1.0)
    except subprocess.TimeoutExpired:
        os.kill(demo.pid, signal.SIGKILL)
        demo.proc.wait(10)
    alive = wait_gone(children, 15)
    assert not alive, (demo.proc.returncode, _describe(alive), demo.log()[-2000:])
    assert "stopping …" in demo.log(), demo.log()[-2000:]  # it began its own stop at once
