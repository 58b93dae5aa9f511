"""astreg.proc: what a ProcessGroup starts never outlives the process that started it.

A tiny tree of ``python -c`` processes stands in for the demo: a starter process starts a
child through a ProcessGroup, and that child starts a grandchild the same way. Killing the
starter with SIGKILL (no chance to stop anything) must take the whole tree with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from astreg.proc import ProcessGroup
from tests.support.procs import wait_gone

pytestmark = pytest.mark.timeout(60)

# argv[1]: log dir; argv[2]: depth. Starts one child one level deeper (none at depth 0) and
# then sleeps: the test decides when it dies.
LEVEL = """
import sys, time
from pathlib import Path
from astreg.proc import ProcessGroup
log_dir, depth = Path(sys.argv[1]), int(sys.argv[2])
if depth:
    ProcessGroup(log_dir=log_dir / str(depth)).start("level", [sys.executable, "-c", sys.argv[3], sys.argv[1], str(depth - 1), sys.argv[3]])
time.sleep(120)
"""


def reap(procs: list[psutil.Process | subprocess.Popen[bytes]]) -> None:
    """SIGKILL to what this test started and nothing else (the session's broker is a child of
    this process too)."""
    for p in procs:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    for p in procs:
        if isinstance(p, subprocess.Popen):
            p.wait(10)


def tree(pid: int, size: int, timeout: float = 20.0) -> list[psutil.Process]:
    """The descendants of ``pid`` once there are ``size`` of them (each has started its own child)."""
    deadline = time.monotonic() + timeout
    found: list[psutil.Process] = []
    while time.monotonic() < deadline:
        found = psutil.Process(pid).children(recursive=True)
        if len(found) == size:
            return found
        time.sleep(0.05)  # poll interval of this bounded wait
    raise AssertionError(f"expected {size} descendants of {pid}, found {found}")


def test_a_killed_starter_takes_its_children_and_grandchildren_with_it(tmp_path: Path) -> None:
    starter = subprocess.Popen([sys.executable, "-c", LEVEL, str(tmp_path), "2", LEVEL],
                               stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    descendants: list[psutil.Process] = []
    try:
        descendants = tree(starter.pid, 2)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(10)
        alive = wait_gone(descendants, 10)
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        reap([starter, *descendants])


def test_children_run_in_their_own_process_group_and_stop_all_kills_a_child_ignoring_sigterm(tmp_path: Path) -> None:
    """TERM first, SIGKILL for whatever still runs when the grace is over (not later)."""
    group = ProcessGroup(log_dir=tmp_path)
    stubborn = group.start("stubborn", [
        sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)",
    ])
    polite = group.start("polite", [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"])
    deadline = time.monotonic() + 20
    while not all("ready" in c.log() for c in (stubborn, polite)) and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval of this bounded wait
    assert all("ready" in c.log() for c in (stubborn, polite))
    assert os.getpgid(stubborn.pid) == stubborn.pid != os.getpgid(0)
    began = time.monotonic()
    group.stop_all(grace=0.5)
    took = time.monotonic() - began
    assert stubborn.proc.returncode == -signal.SIGKILL
    assert polite.proc.returncode == -signal.SIGTERM
    assert took < 5, took
    assert group.children == []


def test_the_death_signal_is_the_one_asked_for(tmp_path: Path) -> None:
    """die_with_parent(SIGTERM): a child that handles SIGTERM sees it when its starter is killed."""
    ready, marker = tmp_path / "ready", tmp_path / "got-sigterm"
    child_code = (
        "import pathlib, signal, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(marker)!r}).write_text('yes'), sys.exit(0)))\n"
        f"pathlib.Path({str(ready)!r}).write_text('yes')\n"
        "time.sleep(120)\n"
    )
    starter_code = (
        "import subprocess, sys, signal, time\n"
        "from astreg.proc import die_with_parent\n"
        f"subprocess.Popen([sys.executable, '-c', {child_code!r}], preexec_fn=die_with_parent(signal.SIGTERM))\n"
        "time.sleep(120)\n"
    )
    starter = subprocess.Popen([sys.executable, "-c", starter_code], stdin=subprocess.DEVNULL)
    found: list[psutil.Process] = []
    try:
        found = tree(starter.pid, 1)
        (child,) = found
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # poll interval of this bounded wait
        assert ready.exists(), "the child never installed its SIGTERM handler"
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(10)
        assert wait_gone([child], 10) == []
        assert marker.read_text() == "yes"
    finally:
        reap([starter, *found])


def test_a_restarted_child_gets_the_environment_it_was_started_with(tmp_path: Path) -> None:
    """A secret handed to one child in its environment (never on its command line) must survive
    a restart of that child."""
    group = ProcessGroup(log_dir=tmp_path)
    argv = [sys.executable, "-c", "import os, time; print('secret=' + os.environ.get('ASTREG_X', '-'), flush=True); "
            "time.sleep(60)"]
    try:
        child = group.start("c", argv, env={"ASTREG_X": "s3"})
        _wait_lines(child, 1)
        again = group.restart(child)
        _wait_lines(again, 2)
        assert again.log().count("secret=s3") == 2, again.log()
    finally:
        group.stop_all()


def _wait_lines(child: object, n: int) -> None:
    deadline = time.monotonic() + 10
    while child.log().count("secret=") < n and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.05)  # poll the log file (bounded)
