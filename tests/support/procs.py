"""Waiting for processes to die, for the tests of process supervision."""

from __future__ import annotations

import time

import psutil

__all__ = ["gone", "wait_gone"]


def gone(p: psutil.Process) -> bool:
    """Dead: no such process any more, or a zombie waiting for whoever adopted it to reap it."""
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """The processes of ``procs`` still alive after ``timeout`` seconds (polled)."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval of this bounded wait
        alive = [p for p in alive if not gone(p)]
    return alive
