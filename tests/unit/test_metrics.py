"""One metrics pattern: a registry per component, nothing on prometheus_client's global one.

Two components of each kind made in one process (as tests, benchmarks and the demo's helpers
do) neither collide nor share counts, and every metric name the docs promise is exposed by a
component. A worker's ``/metrics`` serving the stream, web and Faust series together is
checked on running workers in tests/web/test_api_workers.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

from astreg.metrics import ComponentMetrics
from producers.metrics import ProducerMetrics
from sinks.metrics import SinkMetrics
from streams.alerts.metrics import AlerterMetrics
from streams.metrics import StreamMetrics
from tests.support.modules import ROOT, import_all, subclasses

COMPONENTS: list[type[ComponentMetrics]] = [ProducerMetrics, StreamMetrics, AlerterMetrics, SinkMetrics]


def _value(metrics: ComponentMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_component_metrics_class_derives_from_the_one_base() -> None:
    import_all()
    assert set(subclasses(ComponentMetrics)) == set(COMPONENTS)


def test_two_components_in_one_process_do_not_collide() -> None:
    first = [cls() for cls in COMPONENTS]
    second = [cls() for cls in COMPONENTS]  # a shared registry would raise "Duplicated timeseries"
    for a, b in zip(first, second, strict=True):
        assert a.registry is not b.registry
    producer_a, stream_a, alerter_a, sink_a = first
    producer_b, stream_b, alerter_b, sink_b = second
    producer_a.dropped.inc(3)
    stream_a.events.labels("applied").inc()
    stream_a.web.requests.labels("EndpointView", "200").inc()
    alerter_a.records.labels("t").inc(2)
    sink_a.unavailable.labels("sql").inc()
    assert _value(producer_a, "astreg_producer_dropped_total") == 3
    assert _value(producer_b, "astreg_producer_dropped_total") == 0
    assert _value(stream_a, "astreg_stream_events_total", outcome="applied") == 1
    assert _value(stream_b, "astreg_stream_events_total", outcome="applied") is None
    assert _value(stream_a, "astreg_web_requests_total", view="EndpointView", status="200") == 1
    assert _value(stream_b, "astreg_web_requests_total", view="EndpointView", status="200") is None
    assert _value(alerter_a, "astreg_alerter_records_total", topic="t") == 2
    assert _value(alerter_b, "astreg_alerter_records_total", topic="t") is None
    assert _value(sink_a, "astreg_sink_unavailable_total", sink="sql") == 1
    assert _value(sink_b, "astreg_sink_unavailable_total", sink="sql") is None
    # Each component's exposition has its own series only.
    assert b"astreg_sink_" not in stream_a.exposition() and b"astreg_stream_" not in sink_a.exposition()


def test_faust_s_sensor_goes_into_each_worker_s_registry() -> None:
    a, b = StreamMetrics(), StreamMetrics()
    monitor_a, monitor_b = a.faust_monitor(), b.faust_monitor()  # no clash on the second worker
    assert monitor_a is not monitor_b and a.faust_monitor() is monitor_a
    monitor_a._metrics.messages_received.inc()
    assert _value(a, "astreg_faust_messages_received_total") == 1
    assert _value(b, "astreg_faust_messages_received_total") == 0
    text = a.exposition().decode()
    assert "astreg_stream_events" in text and "astreg_web_requests_total" in text and "astreg_faust_" in text


def test_nothing_lands_on_the_global_registry() -> None:
    """Importing every module and making every component's metrics (and a worker's Faust
    sensor) registers no astreg series on prometheus_client's global REGISTRY."""
    code = (
        "from prometheus_client import REGISTRY; from tests.support.modules import import_all; import_all(); "
        "from producers.metrics import ProducerMetrics; from sinks.metrics import SinkMetrics; "
        "from streams.alerts.metrics import AlerterMetrics; from streams.metrics import StreamMetrics; "
        "[c() for c in (ProducerMetrics, SinkMetrics, AlerterMetrics)]; StreamMetrics().faust_monitor(); "
        "print(sorted(m.name for m in REGISTRY.collect() if m.name.startswith('astreg')))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]"


def test_every_metric_the_docs_name_is_exposed() -> None:
    """Metric names are a contract: each one docs/*.md lists is a series of some component."""
    stream = StreamMetrics()
    stream.faust_monitor()
    exposed = b"".join(m.exposition() for m in (ProducerMetrics(), stream, AlerterMetrics(), SinkMetrics())).decode()
    # The SQL sink's table, index, view and offsets table.
    not_metrics = {"astreg_locations", "astreg_locations_resource", "astreg_routes", "astreg_sink_offsets"}
    named = set()
    for doc in sorted((ROOT / "docs").glob("*.md")):
        named |= set(re.findall(r"\bastreg_[a-z0-9_]*[a-z0-9]", doc.read_text()))
    named -= not_metrics
    assert len(named) > 20  # the docs' metric lists are where this test looks
    assert sorted(name for name in named if name not in exposed) == []
