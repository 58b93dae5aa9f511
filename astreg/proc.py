"""Start and always stop child processes (``astreg ...`` subcommands) for demo, bench and tests.

Everything started through a :class:`ProcessGroup` is stopped by ``stop_all()``: SIGTERM, a
bounded grace period, then SIGKILL of the whole process group (a worker stuck in recovery, or
the broker, may ignore SIGTERM).

When the starting process dies without stopping them (SIGKILL, a crash, a supervisor that gives
up waiting), its children die too: each gets a parent-death signal (:func:`die_with_parent`),
which every process astreg starts uses (these children, the embedded broker, the Apache Kafka
JVMs).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "ProcessGroup", "astreg_argv", "die_with_parent"]

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl(2), looked up in the parent: the child between fork and exec loads nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return None


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when its starter dies.

    Linux sends the parent-death signal when the *thread* that forked the child ends, not the
    process: start children from the main thread, or from a thread that lives at least as long
    as they do (asyncio's default executor keeps its threads until the event loop closes). A
    child whose parent died between fork and this call signals itself at once. On systems
    without prctl(2) this is ``None`` (no parent-death signal; ``Popen`` accepts ``None``).
    """
    prctl = _prctl()
    if prctl is None:  # pragma: no cover - not Linux
        return None
    parent = os.getpid()
    arg = ctypes.c_ulong(sig)

    def preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
        prctl(PR_SET_PDEATHSIG, arg)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def astreg_argv(*args: str) -> list[str]:
    """argv running ``astreg ARGS`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "astreg.tools.cli", *args]


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)  # given to start(): a restart gets it again

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill9(self) -> None:
        """SIGKILL the child and everything it started (fault injection)."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def stop(self, grace: float = 8.0) -> int | None:
        if not self.alive():
            return self.proc.returncode
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return self.proc.poll()
        try:
            return self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %d) ignored SIGTERM for %.0fs: killing it", self.name, self.pid, grace)
            self.kill9()
            return self.proc.returncode


@dataclass
class ProcessGroup:
    log_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **(env or {})}
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, start_new_session=True, preexec_fn=die_with_parent(),
        )
        out.close()
        child = Child(name, argv, log_path, proc, dict(env or {}))
        self.children.append(child)
        logger.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def restart(self, child: Child) -> Child:
        child.stop()
        self.children.remove(child)
        return self.start(child.name, child.argv, child.env)

    def stop_all(self, grace: float = 8.0) -> None:
        """SIGTERM to every child at once; SIGKILL to all still running ``grace`` seconds later."""
        # Reverse start order: sinks and workers before the broker they talk to.
        children = list(reversed(self.children))
        deadline = time.monotonic() + grace
        for child in children:
            if child.alive():
                try:
                    os.killpg(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
        stubborn = [child for child in children if child.alive()]
        for child in stubborn:  # all at once: the grace is over for every one of them
            logger.warning("%s (pid %d) still running %.1fs after SIGTERM: killing it", child.name, child.pid, grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.proc.pid, signal.SIGKILL)
        for child in stubborn:
            child.proc.wait(10)
        self.children.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
