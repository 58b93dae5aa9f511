"""Prometheus metrics of one sink process (``astreg_sink_*``, served on ``--metrics-port``).

:class:`SinkMetrics` owns the sink's registry (:mod:`astreg.metrics`); the
:class:`~sinks.base.SinkRunner` makes one (or takes the caller's) and serves it. Every series is
labelled by the sink kind (``sql``, ``redis``, ``astdb``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from astreg.metrics import ComponentMetrics

__all__ = ["SinkMetrics"]


class SinkMetrics(ComponentMetrics):
    """Records, batches, store health and lag of a sink."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.records = Counter("astreg_sink_records", "Records handled by a sink", ["sink", "outcome"], registry=r)
        self.batches = Counter("astreg_sink_batches", "Batches written", ["sink"], registry=r)
        self.write_seconds = Histogram("astreg_sink_write_seconds", "Duration of one successful batch write",
                                       ["sink"], registry=r)
        self.unavailable = Counter("astreg_sink_unavailable", "Writes refused because the store was down or slow",
                                   ["sink"], registry=r)
        self.store_up = Gauge("astreg_sink_store_up", "1 when the last write succeeded, 0 while retrying",
                              ["sink"], registry=r)
        self.waiting_since = Gauge("astreg_sink_waiting_since_seconds", "Unix time of the first failed attempt of "
                                   "the current store outage (0: the store answers)", ["sink"], registry=r)
        self.lag = Gauge("astreg_sink_lag_records", "High watermark minus committed position, all partitions",
                         ["sink"], registry=r)
        self.reconciled = Counter("astreg_sink_reconciled_deletes", "Stale keys removed by a rebuild",
                                  ["sink"], registry=r)
        self.store_lost = Counter("astreg_sink_store_lost", "Times the store was found to have lost its data (rebuilt)",
                                  ["sink"], registry=r)
