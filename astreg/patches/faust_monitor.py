"""Faust's Prometheus sensor with the labelled children of its per-event metrics cached.

Faust's ``PrometheusMonitor`` calls ``labels(...)`` on every message and event (topic,
partition, stream label); each call costs a lock, a tuple and a dict lookup, several per event.
:func:`lean_prometheus_monitor` does what those hooks do, with the same metrics and values, and
looks each child up once per topic/partition/stream. It replays the hooks' bodies and reaches
the sensor's private metrics tuple and label helper, hence a patch; the cache is emptied where
Faust clears its partition metrics (a rebalance).
"""

from __future__ import annotations

from typing import Any

__all__ = ["INTERNALS", "lean_prometheus_monitor"]

INTERNALS = [
    "faust.sensors.prometheus:PrometheusMonitor._metrics",
    "faust.sensors.prometheus:PrometheusMonitor._stream_label(self, stream)",
    "faust.sensors.prometheus:PrometheusMonitor._clear_partition_related_metrics(self)",
    "faust.sensors.prometheus:PrometheusMonitor.KEYS_RETRIEVED",
    "faust.sensors.prometheus:PrometheusMonitor.KEYS_UPDATED",
    # the hooks replayed here, with what their bodies label
    "faust.sensors.prometheus:PrometheusMonitor.on_message_in(self, tp, offset, message)",
    "faust.sensors.prometheus:PrometheusMonitor.on_message_in uses messages_received_per_topics_partition.labels(",
    "faust.sensors.prometheus:PrometheusMonitor.on_stream_event_in(self, tp, offset, stream, event)",
    "faust.sensors.prometheus:PrometheusMonitor.on_stream_event_in uses total_events_per_stream.labels(",
    "faust.sensors.prometheus:PrometheusMonitor.track_tp_end_offset(self, tp, offset)",
    "faust.sensors.prometheus:PrometheusMonitor.track_tp_end_offset uses topic_partition_end_offset.labels(",
    "faust.sensors.prometheus:PrometheusMonitor.on_table_get(self, table, key)",
    "faust.sensors.prometheus:PrometheusMonitor.on_table_get uses table_operations.labels(",
    "faust.sensors.prometheus:PrometheusMonitor.on_table_set(self, table, key, value)",
    "faust.sensors.prometheus:PrometheusMonitor.on_table_set uses table_operations.labels(",
    "faust.sensors.prometheus:FaustMetrics.messages_received",
    "faust.sensors.prometheus:FaustMetrics.active_messages",
    "faust.sensors.prometheus:FaustMetrics.messages_received_per_topics",
    "faust.sensors.prometheus:FaustMetrics.messages_received_per_topics_partition",
    "faust.sensors.prometheus:FaustMetrics.total_events",
    "faust.sensors.prometheus:FaustMetrics.total_active_events",
    "faust.sensors.prometheus:FaustMetrics.total_events_per_stream",
    "faust.sensors.prometheus:FaustMetrics.topic_partition_end_offset",
    "faust.sensors.prometheus:FaustMetrics.table_operations",
]


def lean_prometheus_monitor(metrics: Any) -> Any:
    """A ``PrometheusMonitor`` on ``metrics`` (a ``FaustMetrics``) that caches labelled children."""
    from faust.sensors.monitor import Monitor  # Faust only where a worker's sensor is made
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

    return LeanPrometheusMonitor(metrics=metrics)
