"""The one partition rule of astreg: Kafka's default partitioner, murmur2 of the key.

Every component that must agree on where an endpoint lives uses :func:`partition_for`: the
producer's publisher (which partition it writes), the stream worker (which partition a synthetic
event or a published row goes to), the web layer (which worker owns a key) and the sinks (which
keys a rebuilt partition covers). It is what the Java client and aiokafka's ``DefaultPartitioner``
choose for a non-null key, so records written by other clients land where astreg looks for them.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

__all__ = ["partition_for"]


def partition_for(key: bytes | str, partitions: int) -> int:
    """Partition of ``key`` among ``partitions`` (``str`` keys are UTF-8 encoded)."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return (murmur2(raw) & 0x7FFFFFFF) % partitions
