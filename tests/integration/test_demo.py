"""`astreg demo` (the README's run command) brings the whole pipeline up: within a minute the
page's API shows endpoints on all three simulated nodes and the SQLite file has their rows; Ctrl-C
(SIGINT) stops every process it started."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path

import httpx
import psutil
import pytest

from astreg.broker import free_port
from astreg.proc import ProcessGroup, astreg_argv

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
