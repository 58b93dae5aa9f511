"""Prometheus metrics of the stream worker: one registry holds the stream's, the web's and Faust's.

The worker is one component, so it has one registry (:mod:`astreg.metrics`): :class:`StreamMetrics`
owns it (one per app; tests build several apps in one process) with the agent's and timers'
series and the page's and API's (:class:`WebMetrics`), and :meth:`StreamMetrics.faust_monitor`
puts Faust's own sensor (``astreg_faust_*``) in it. The web views serve it on ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from astreg.metrics import ComponentMetrics
from astreg.patches.faust_monitor import lean_prometheus_monitor

__all__ = ["StreamMetrics", "WebMetrics", "FAUST_PREFIX"]

#: Name prefix of Faust's sensor series (``astreg_faust_messages_received`` ...).
FAUST_PREFIX = "astreg_faust"


class WebMetrics:
    """The page's and API's series (``astreg_web_*``), in the worker's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.requests = Counter("astreg_web_requests_total", "HTTP requests answered by the API",
                                ["view", "status"], registry=r)
        self.forwarded = Counter("astreg_web_forwarded_total", "Requests this worker sent to other workers",
                                 ["kind", "outcome"], registry=r)
        self.local_rows = Gauge("astreg_web_local_rows",
                                "Rows of the locations table in this worker's active partitions", registry=r)


class StreamMetrics(ComponentMetrics):
    """The worker's registry and the agent's and timers' series (``astreg_stream_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
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
        self.node_records_refused = Counter(
            "astreg_stream_node_records_refused", "Nodes-topic records not believed (unsigned, bad signature, "
            "out of range), by reason.", ["reason"], registry=r)
        self.unheard_nodes = Gauge(
            "astreg_stream_unheard_nodes", "Nodes with contacts in the table that never sent a heartbeat.", registry=r)
        self.outputs_failed = Counter(
            "astreg_stream_outputs_failed", "Batches whose outputs the cluster refused (the worker stopped).", registry=r)
        self.outputs_pending = Gauge(
            "astreg_stream_outputs_pending", "Applied batches waiting for the cluster to acknowledge their outputs "
            "(their offsets are not committed meanwhile).", registry=r)
        self.outputs_pending_since = Gauge(
            "astreg_stream_outputs_pending_since_seconds", "Unix time of the oldest batch still waiting for its "
            "outputs to be acknowledged (0: none waiting).", registry=r)
        self.cluster_write_wait = Gauge(
            "astreg_stream_cluster_write_wait_seconds", "How long the worker's write probe has waited for the cluster "
            "to acknowledge it (0: acknowledged); node silence is not counted while it waits.", registry=r)
        self.cluster_writable_at = Gauge(
            "astreg_stream_cluster_writable_at_seconds", "Unix time the last write probe the cluster acknowledged was "
            "sent: node silence is judged up to then (0: none yet, or no probe topic).", registry=r)
        self.web = WebMetrics(r)
        self._faust_monitor: Any = None

    def faust_monitor(self) -> Any:
        """Faust's Prometheus sensor writing into this registry (one per worker, made on first use)."""
        if self._faust_monitor is None:
            from faust.sensors.prometheus import FaustMetrics  # Faust only where it's used

            self._faust_monitor = lean_prometheus_monitor(FaustMetrics.create(self.registry, FAUST_PREFIX))
        return self._faust_monitor

