"""Waiting for the cluster to acknowledge what a producer sent.

aiokafka's ``flush()`` waits for pending batches but never raises when one failed: the failure
sits in the batch's delivery future. Whoever must not move on before its records are on the
brokers (the worker committing a source offset) checks the futures with :func:`delivered`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["delivered"]


async def delivered(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Wait until every future is done; raise the first failure (a cancelled one included)."""
    futures = list(futures)
    pending = [f for f in futures if not f.done()]
    if pending:
        await asyncio.wait(pending)
    for fut in futures:
        if fut.cancelled():
            raise asyncio.CancelledError("a delivery was cancelled")
        exc = fut.exception()
        if exc is not None:
            raise exc
