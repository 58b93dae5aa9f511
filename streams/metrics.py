"""Prometheus counters of the stream worker (exposed on /metrics by the web views).

One registry per app (tests build several apps in one process); the web part renders it with
``prometheus_client.generate_latest(metrics.registry)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["StreamMetrics"]


@dataclass
class StreamMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.events = Counter("astreg_stream_events", "Registration events by outcome.", ["outcome"], registry=r)
        self.deadletters = Counter("astreg_stream_deadletters", "Records sent to the dead-letter topic.",
                                   ["topic", "reason"], registry=r)
        self.table_writes = Counter("astreg_stream_table_writes", "Rows written to the table.", registry=r)
        self.published = Counter("astreg_stream_published", "Records published to the locations topic.",
                                 ["kind"], registry=r)
        self.synthetic = Counter("astreg_stream_synthetic", "Synthetic events sent by the timers.",
                                 ["kind", "cause"], registry=r)
        self.table_size = Gauge("astreg_stream_table_rows", "Rows with a contact, as counted by this worker process's writes.", registry=r)
        self.stale_nodes = Gauge("astreg_stream_stale_nodes", "Nodes currently stale.", registry=r)
        self.nodes = Gauge("astreg_stream_nodes", "Nodes known.", registry=r)
