"""Byte-level access to a Faust table's store: what ``table[key]`` does underneath, one step.

``table[key] = value`` and ``table.get(key)`` go through sensors, the key index and Faust's
serializer registry per key; the batched table of the worker (``streams.tables.LocationsTable``)
encodes a batch once and reads or writes the store's bytes directly. Faust keeps those steps
private: :class:`RawStore` holds them bound to one store, :func:`partition_db` gives the RocksDB
store's database of one partition, :func:`set_current_event` tells the store which event (hence
which partition) the next plain access belongs to.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from faust.streams import _current_event

__all__ = ["INTERNALS", "RawStore", "partition_db", "set_current_event"]

INTERNALS = [
    "faust.stores.base:Store._encode_key(self, key)",
    "faust.stores.base:Store._encode_value(self, value)",
    "faust.stores.base:Store._decode_value(self, value)",
    "faust.stores.base:SerializedStore._get(self, key)",
    "faust.stores.base:SerializedStore._set(self, key, value)",
    "faust.stores.rocksdb:Store._db_for_partition(self, partition)",
    "faust.stores.rocksdb:Store._get(self, key)",
    "faust.stores.rocksdb:Store._set(self, key, value)",
    # the store finds the partition of a plain access from the current event (a weakref)
    "faust.streams:_current_event is contextvars.ContextVar",
    "faust.stores.rocksdb:Store._get uses current_event()",
    "faust.stores.rocksdb:Store._set uses current_event()",
]

PartitionDb = Callable[[int], Any]  # partition -> rocksdict.Rdict


class RawStore:
    """The encode/decode and raw get/set steps of one Faust store, bound once.

    ``get``/``set`` act in the partition of the current event (:func:`set_current_event`);
    ``db_for`` is the RocksDB store's database of a partition (None for other stores)."""

    __slots__ = ("store", "encode_key", "encode_value", "decode_value", "get", "set", "db_for")

    def __init__(self, store: Any) -> None:
        self.store = store
        self.encode_key: Callable[[Any], bytes] = store._encode_key
        self.encode_value: Callable[[Any], bytes | None] = store._encode_value
        self.decode_value: Callable[[bytes | None], Any] = store._decode_value
        self.get: Callable[[bytes], bytes | None] = store._get
        self.set: Callable[[bytes, bytes | None], None] = store._set
        self.db_for: PartitionDb | None = partition_db(store)


def partition_db(store: Any) -> PartitionDb | None:
    """The RocksDB store's ``partition -> database`` (None: not a RocksDB store)."""
    return getattr(store, "_db_for_partition", None)


def set_current_event(event: Any) -> None:
    """Make ``event`` the current one: the store reads and writes in its partition."""
    _current_event.set(weakref.ref(event))
