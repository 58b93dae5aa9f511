"""Prometheus metrics of one producer process (served on ``--metrics-port`` when not 0).

Each :class:`ProducerMetrics` owns its own ``CollectorRegistry`` (:mod:`astreg.metrics`) so
several producers (tests, benchmarks) can live in one process; ``serve(port)`` exposes it.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from astreg.metrics import ComponentMetrics

__all__ = ["ProducerMetrics"]


class ProducerMetrics(ComponentMetrics):
    """Counters and gauges named ``astreg_producer_*``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__(registry)
        r = self.registry
        self.events_in = Counter("astreg_producer_ami_events", "AMI events consumed, by Event name", ["event"], registry=r)
        self.events_out = Counter("astreg_producer_records_sent", "Records acknowledged by Kafka, by kind", ["kind"], registry=r)
        self.malformed = Counter("astreg_producer_malformed", "Malformed AMI messages dead-lettered, by reason", ["reason"], registry=r)
        self.dropped = Counter("astreg_producer_dropped", "Records dropped because the buffer was full", registry=r)
        self.coalesced = Counter("astreg_producer_coalesced", "Superseded records coalesced away in a full buffer", registry=r)
        self.buffer_depth = Gauge("astreg_producer_buffer_depth", "Records waiting for Kafka", registry=r)
        self.kafka_up = Gauge("astreg_producer_kafka_up", "1 when the last send to Kafka succeeded", registry=r)
        self.waiting_since = Gauge(
            "astreg_producer_waiting_since_seconds", "Unix time the batch being sent was first handed to Kafka "
            "(0: nothing waiting); with the buffer depth, what waits for Kafka and since when", registry=r)
        self.send_errors = Counter("astreg_producer_kafka_send_errors", "Failed send attempts", registry=r)
        self.send_latency = Histogram(
            "astreg_producer_kafka_send_seconds", "Time for one batch to be acknowledged", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.ami_up = Gauge("astreg_producer_ami_up", "1 while logged in to the AMI", registry=r)
        self.ami_reconnects = Counter("astreg_producer_ami_reconnects", "AMI connection attempts after a loss", registry=r)
        self.snapshot_size = Gauge("astreg_producer_last_snapshot_rows", "Rows of the last completed snapshot", registry=r)
        self.snapshot_seconds = Gauge("astreg_producer_last_snapshot_seconds", "Duration of the last completed snapshot", registry=r)
        self.snapshots = Counter("astreg_producer_snapshots", "Snapshots, by outcome", ["outcome"], registry=r)
        self.kafka_up.set(1)
