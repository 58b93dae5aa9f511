"""Settings of a stream worker (``astreg worker``): web port, state store, timers.

Read once by ``streams/cli.py`` from options and ``ASTREG_*`` variables, then passed down to
:func:`streams.app.create_app`. Kafka and topic names come from ``astreg.settings``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field

from astreg.settings import AuthSettings

__all__ = ["WorkerSettings"]


class WorkerSettings(AuthSettings):
    """How one stream worker runs."""

    web_port: int = Field(6066, description="Port of the worker's web server (table views, API).")
    web_host: str = Field("127.0.0.1", description="Address the worker's web server binds to.")
    data_dir: Path = Field(Path("./astreg-data"), description="Directory of the RocksDB table state.")
    store: Literal["rocksdb", "memory"] = Field("rocksdb", description="Table store (memory: tests).")
    node_timeout: float = Field(15.0, gt=0, description="Seconds without heartbeat before a node is stale.")
    node_grace: float = Field(120.0, gt=0, description="Seconds a stale node's contacts are kept.")
    expiry_grace: float = Field(35.0, ge=0, description="Grace (s) after expires_at for a stale node's contacts.")
    worker_id: str = Field(socket.gethostname(), description="Name of this worker in logs and metrics.")
    app_id: str | None = Field(None, description="Faust app id / group (default: astreg-<registrations topic>).")
    batch_size: int = Field(2000, ge=1, description="Events taken per batch by the agent.")
    batch_within: float = Field(0.05, gt=0, description="Seconds to wait filling a batch.")
    ingest: Literal["agent", "bulk"] = Field(
        "bulk", description="How registrations reach the table: bulk (one batch per fetch, no Faust "
        "per-message stream path) or agent (the Faust agent's stream, take_events).")
    row_cache: int = Field(
        100_000, ge=0, description="Decoded table rows kept in memory (~650 B each with one contact; 0: none). Rows "
        "of endpoints seen recently are not read and decoded from RocksDB again; size it to the "
        "endpoints this worker owns when memory allows (docs/stream.md).")
    bulk_restore: bool = Field(
        True, description="Cold restart (RocksDB store): read the table's changelog in big batches "
        "instead of Faust's record-by-record replay.")
    tick: float = Field(1.0, gt=0, description="Seconds between timer runs (stale, expiry, reconcile).")
    max_clock_skew: float = Field(
        2.0, ge=0, description="Largest difference (s) between two nodes' clocks not trusted to order "
        "registrations learned late (from a snapshot after an outage); within it, partition order decides.")
