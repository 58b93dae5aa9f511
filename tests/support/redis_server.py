"""A Redis server of one test alone: restarted, snapshotted, made read-only or out of memory.

The machine's shared Redis serves every other test; faults that change a server's configuration
or its data file run against this one (``redis-server`` from the Debian package, a free port,
its own directory, no persistence unless the test saves).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import redis

from tests.support.wait import until_sync

__all__ = ["PrivateRedis"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """``redis-server`` on 127.0.0.1:<free port> with its files in ``directory``."""

    def __init__(self, directory: Path, *, password: str | None = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def dump(self) -> Path:
        return self.dir / "dump.rdb"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def start(self) -> PrivateRedis:
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        until_sync(self._answers, 15, what=f"redis-server on port {self.port} to answer")
        return self

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def save_snapshot(self, to: Path) -> None:
        """SAVE now and keep a copy of the data file (an operator's backup)."""
        self.client().save()
        shutil.copyfile(self.dump, to)

    def stop(self) -> None:
        """Stop without saving (what a crash of a server without persistence loses)."""
        if self.proc is None:
            return
        try:
            self.client().shutdown(nosave=True)
        except redis.RedisError:
            pass  # the connection drops as the server exits
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart_from(self, snapshot: Path) -> None:
        """Stop, put an older data file in place, start again on the same port (a restore)."""
        self.stop()
        shutil.copyfile(snapshot, self.dump)
        self.start()
