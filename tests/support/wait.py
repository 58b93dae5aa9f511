"""Wait for a condition instead of sleeping for a guessed time.

A fixed sleep either wastes time (the condition held long before) or makes a test flaky (on a busy
machine it did not hold yet). These helpers poll a predicate until it returns something truthy and
fail with an ``AssertionError`` naming what was awaited (and the last value seen) once the deadline
passes, so a condition that never comes true is a clear failure rather than a hang.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["until", "until_sync"]

T = TypeVar("T")


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    shown = repr(last)
    if len(shown) > 500:
        shown = shown[:500] + "..."
    return AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {shown})")


@overload
async def until(predicate: Callable[[], Awaitable[T]], timeout: float, interval: float = ...,
                what: str = ...) -> T: ...


@overload
async def until(predicate: Callable[[], T], timeout: float, interval: float = ..., what: str = ...) -> T: ...


async def until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05,
                what: str = "a condition") -> Any:
    """Poll ``predicate`` (plain or async) until it returns something truthy, which is returned.

    The predicate is always evaluated at least once and once more at the deadline, so a short
    ``timeout`` on a slow machine still sees the final state.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value: Any = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, value)
        # The poll interval of this loop, not a guess at how long the condition takes.
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))


def until_sync(predicate: Callable[[], T], timeout: float, interval: float = 0.05,
               what: str = "a condition") -> T:
    """Blocking twin of :func:`until` for threads and plain (non-async) tests."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, value)
        # The poll interval of this loop, not a guess at how long the condition takes.
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
