"""Send many records as one aiokafka record batch per partition (the worker's output path).

``producer.send()`` costs a future, a partitioner call, a debug log call and an accumulator
append per record; for the table changelog and the locations topic the worker already knows
every record of a batch, so it appends them to ``BatchBuilder`` objects and submits each with
``send_batch``. Used by :mod:`streams.agents` and :class:`streams.tables.LocationsTable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["send_batches"]


async def send_batches(
    producer: Any, topic: str, records: Iterable[tuple[int, bytes, bytes | None]]
) -> list[tuple[int, asyncio.Future[Any], int]]:
    """Queue ``(partition, key, value)`` records; returns ``(partition, delivery future, count)``
    per record batch (the future's offset is the batch's first offset)."""
    by_partition: dict[int, list[tuple[bytes, bytes | None]]] = {}
    for partition, key, value in records:
        by_partition.setdefault(partition, []).append((key, value))
    sent: list[tuple[int, asyncio.Future[Any], int]] = []
    for partition, items in by_partition.items():
        batch, count = producer.create_batch(), 0
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, start another
                sent.append((partition, await producer.send_batch(batch, topic, partition=partition), count))
                batch, count = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            count += 1
        sent.append((partition, await producer.send_batch(batch, topic, partition=partition), count))
    return sent

