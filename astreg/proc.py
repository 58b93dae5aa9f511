"""Start and always stop child processes (``astreg ...`` subcommands) for demo, bench and tests.

Everything started through a :class:`ProcessGroup` is stopped by ``stop_all()``: SIGTERM, a
bounded grace period, then SIGKILL of the whole process group (a worker stuck in recovery, or
the broker, may ignore SIGTERM).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "ProcessGroup", "astreg_argv"]

logger = logging.getLogger(__name__)


def astreg_argv(*args: str) -> list[str]:
    """argv running ``astreg ARGS`` with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "astreg.tools.cli", *args]


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes]

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
            env=full_env, start_new_session=True,
        )
        out.close()
        child = Child(name, argv, log_path, proc)
        self.children.append(child)
        logger.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def restart(self, child: Child) -> Child:
        child.stop()
        self.children.remove(child)
        return self.start(child.name, child.argv)

    def stop_all(self, grace: float = 8.0) -> None:
        # Reverse start order: sinks and workers before the broker they talk to.
        deadline = time.monotonic() + grace
        for child in reversed(self.children):
            if child.alive():
                try:
                    os.killpg(child.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.proc.wait(remaining)
            except subprocess.TimeoutExpired:
                child.kill9()
        self.children.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
