"""Prometheus counters of the stream worker (exposed on /metrics by the web views).

One registry per app (tests build several apps in one process); the web part renders it with
``prometheus_client.generate_latest(metrics.registry)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["StreamMetrics", "lean_prometheus_monitor"]


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


def lean_prometheus_monitor(metrics: Any) -> Any:
    """Faust's PrometheusMonitor with the labelled children of its per-event metrics cached.

    Faust calls ``labels(...)`` on every message and event (topic, partition, stream label);
    each call costs a lock, a tuple and a dict lookup, several per event. The metrics and
    their values are the same; only the lookups happen once per topic/partition/stream.
    """
    from faust.sensors.prometheus import PrometheusMonitor

    class LeanPrometheusMonitor(PrometheusMonitor):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._label_cache: dict[tuple[Any, ...], Any] = {}

        def _child(self, key: tuple[Any, ...], make: Any) -> Any:
            child = self._label_cache.get(key)
            if child is None:
                child = self._label_cache[key] = make()
            return child

        def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
            Monitor.on_message_in(self, tp, offset, message)
            m = self._metrics
            m.messages_received.inc()
            m.active_messages.inc()
            self._child(("in", tp.topic), lambda: m.messages_received_per_topics.labels(topic=tp.topic)).inc()
            self._child(("in", tp), lambda: m.messages_received_per_topics_partition.labels(
                topic=tp.topic, partition=tp.partition)).set(offset)

        def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> Any:
            state = Monitor.on_stream_event_in(self, tp, offset, stream, event)
            m = self._metrics
            m.total_events.inc()
            m.total_active_events.inc()
            self._child(("stream", id(stream)), lambda: m.total_events_per_stream.labels(
                stream=f"stream.{self._stream_label(stream)}.events")).inc()
            return state

        def track_tp_end_offset(self, tp: Any, offset: int) -> None:
            Monitor.track_tp_end_offset(self, tp, offset)
            self._child(("end", tp), lambda: self._metrics.topic_partition_end_offset.labels(
                topic=tp.topic, partition=tp.partition)).set(offset)

        def on_table_get(self, table: Any, key: Any) -> None:
            Monitor.on_table_get(self, table, key)
            self._child(("get", table.name), lambda: self._metrics.table_operations.labels(
                table=f"table.{table.name}", operation=self.KEYS_RETRIEVED)).inc()

        def on_table_set(self, table: Any, key: Any, value: Any) -> None:
            Monitor.on_table_set(self, table, key, value)
            self._child(("set", table.name), lambda: self._metrics.table_operations.labels(
                table=f"table.{table.name}", operation=self.KEYS_UPDATED)).inc()

        def _clear_partition_related_metrics(self) -> None:
            self._label_cache.clear()  # partitions moved: children are built again on use
            super()._clear_partition_related_metrics()

    from faust.sensors.monitor import Monitor

    return LeanPrometheusMonitor(metrics=metrics)
