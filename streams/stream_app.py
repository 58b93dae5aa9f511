"""What a stream worker is made of: :class:`StreamApp`, built by ``streams.app.create_app``.

The agent and timers (``streams/agents.py``, ``streams/timers.py``) take a StreamApp and add
themselves to its Faust app; the web views read its table and node book; tests use
``stream.app`` in Faust's ``test_context``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from faust.types import AgentT

from astreg.auth import Verifier
from astreg.settings import KafkaSettings

from .metrics import StreamMetrics
from .outputs import Outputs
from .settings import WorkerSettings
from .tables import LocationsTable, NodeBook
from .topics import StreamTopics

__all__ = ["StreamApp", "ApplyBatch"]

# One batch of Faust events (or the bulk ingest's records wrapped alike: ``event.message``)
# applied to the table and published; returns the delivery futures of what it sent.
ApplyBatch = Callable[[list[Any]], Awaitable[list["asyncio.Future[Any]"]]]


@dataclass
class StreamApp:
    """A worker's Faust app with its table, node book, topics, settings, outputs and metrics.

    ``agent`` and ``apply_batch`` are the registrations agent and its batch step, set when
    ``streams.agents.attach`` declares the agent on ``app`` (``create_app`` does)."""

    app: faust.App
    locations: LocationsTable
    nodes: NodeBook
    topics: StreamTopics
    kafka: KafkaSettings
    settings: WorkerSettings
    outputs: Outputs
    metrics: StreamMetrics
    # Highest registrations offset this worker applied, per partition (timers: is a synthetic
    # event it sent applied yet?).
    applied: dict[int, int] = field(default_factory=dict)
    # Checks every record's signature (astreg/auth.py); passes everything with --insecure-no-auth.
    verifier: Verifier = field(default_factory=lambda: Verifier(None))
    # Nodes seen in applied events (or in owned rows) without a record on the nodes topic: a
    # node that never heartbeats goes stale like a silent one (streams/timers.py).
    table_nodes: set[str] = field(default_factory=set)
    agent: AgentT[int] = field(init=False)
    apply_batch: ApplyBatch = field(init=False)
