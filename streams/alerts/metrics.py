"""Prometheus metrics of the alerter (``astreg_alert*``, ``astreg_quality_*``).

:class:`AlerterMetrics` owns the alerter's registry (:mod:`astreg.metrics`); the
:class:`~streams.alerts.runner.Alerter` makes one (or takes the caller's), hands it to the
webhook sender and serves it on ``--alert-metrics-port``. The quality gauges are set from the
engine's windows when scraped, and an endpoint without samples in the window loses its series.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge

from astreg.metrics import ComponentMetrics
from streams.alerts.engine import AlertEngine

__all__ = ["AlerterMetrics"]


class AlerterMetrics(ComponentMetrics):
    """The alerter's series: records read, alerts, the webhook and the quality figures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.records = Counter("astreg_alerter_records_total", "Records consumed.", ["topic"], registry=r)
        self.undecodable = Counter(
            "astreg_alerter_undecodable_total", "Records that could not be decoded.", ["topic"], registry=r
        )
        self.refused = Counter(
            "astreg_alerter_refused_total", "Records not believed (unsigned or not signed by their node).",
            ["topic", "reason"], registry=r)
        self.transitions = Counter(
            "astreg_alerts_total", "Alert transitions published.", ["kind", "state"], registry=r
        )
        self.active = Gauge("astreg_alerts_active", "Active alerts.", ["kind"], registry=r)
        self.webhook_sent = Counter(
            "astreg_alert_webhook_sent_total", "Alerts the webhook accepted.", registry=r
        )
        self.webhook_failures = Counter(
            "astreg_alert_webhook_failures_total", "Failed webhook POSTs.", registry=r
        )
        self.webhook_dropped = Counter(
            "astreg_alert_webhook_dropped_total", "Alerts never delivered.", registry=r
        )
        self.webhook_queue = Gauge(
            "astreg_alert_webhook_queue", "Alerts waiting for the webhook.", registry=r
        )
        self.jitter = Gauge(
            "astreg_quality_jitter_ms",
            "RTCP interarrival jitter over the window (ms).",
            ["node", "endpoint", "stat"],
            registry=r,
        )
        self.loss = Gauge(
            "astreg_quality_loss_ratio",
            "RTCP fraction lost over the window (0..1).",
            ["node", "endpoint", "stat"],
            registry=r,
        )
        self.rtt = Gauge(
            "astreg_quality_rtt_ms", "RTCP round trip (last, ms).", ["node", "endpoint"], registry=r
        )
        self._quality_labels: set[tuple[str, str]] = set()

    def set_quality(self, engine: AlertEngine, now_ms: int) -> None:
        """The quality gauges from the engine's windows now (called before each scrape)."""
        seen: set[tuple[str, str]] = set()
        for s in engine.summaries(now_ms):
            if s.samples == 0 or s.node is None:
                continue
            key = (s.node, s.endpoint)
            seen.add(key)
            for stat, value in (
                ("last", s.jitter_last_ms),
                ("mean", s.jitter_mean_ms),
                ("p95", s.jitter_p95_ms),
            ):
                if value is not None:
                    self.jitter.labels(*key, stat).set(value)
            for stat, value in (("last", s.loss_last), ("mean", s.loss_mean), ("p95", s.loss_p95)):
                if value is not None:
                    self.loss.labels(*key, stat).set(value)
            if s.rtt_last_ms is not None:
                self.rtt.labels(*key).set(s.rtt_last_ms)
        for key in self._quality_labels - seen:  # endpoints without samples in the window: no stale series
            for stat in ("last", "mean", "p95"):
                with contextlib.suppress(KeyError):
                    self.jitter.remove(*key, stat)
                with contextlib.suppress(KeyError):
                    self.loss.remove(*key, stat)
            with contextlib.suppress(KeyError):
                self.rtt.remove(*key)
        self._quality_labels = seen
