"""The quality and alert records of the contract: model mirrors, round trips, evolution rules."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astreg.settings import TopicSettings
from astreg.topics import topic_specs
from schemas.codec import Codec, load_schema
from schemas.quality import (
    Alert,
    AlertKind,
    AlertSeverity,
    AlertState,
    QualityKind,
    QualitySample,
    ReportDirection,
)

MODELS = {"quality_sample.avsc": QualitySample, "alert.avsc": Alert}


@pytest.mark.parametrize("avsc, model", MODELS.items())
def test_dataclass_fields_equal_avsc_fields(avsc: str, model: type) -> None:
    schema = load_schema(avsc)
    assert [f["name"] for f in schema["fields"]] and sorted(f["name"] for f in schema["fields"]) == sorted(
        f.name for f in dataclasses.fields(model)
    )


@pytest.mark.parametrize("avsc", MODELS)
def test_enums_have_defaults_and_optional_fields_default_to_null(avsc: str) -> None:
    schema = load_schema(avsc)
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") == "enum":
            assert t["default"] in t["symbols"] and f["default"] == t["default"], f["name"]
        if isinstance(t, list) and t[0] == "null":
            assert f["default"] is None, f["name"]


def test_enum_symbols_equal_python_enums() -> None:
    sample = {f["name"]: f["type"] for f in load_schema("quality_sample.avsc")["fields"]}
    alert = {f["name"]: f["type"] for f in load_schema("alert.avsc")["fields"]}
    assert sample["kind"]["symbols"] == [m.value for m in QualityKind]
    assert sample["direction"]["symbols"] == [m.value for m in ReportDirection]
    assert alert["kind"]["symbols"] == [m.value for m in AlertKind]
    assert alert["state"]["symbols"] == [m.value for m in AlertState]
    assert alert["severity"]["symbols"] == [m.value for m in AlertSeverity]


opt = st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64)
samples = st.builds(
    QualitySample,
    endpoint=st.text(min_size=1, max_size=20),
    node=st.text(min_size=1, max_size=10),
    producer_epoch=st.integers(0, 2**62),
    seq=st.integers(0, 2**62),
    event_time_ms=st.integers(0, 2**45),
    kind=st.sampled_from(QualityKind),
    direction=st.sampled_from(ReportDirection),
    channel=st.none() | st.text(max_size=30),
    ssrc=st.none() | st.integers(0, 2**32 - 1),
    source_ssrc=st.none() | st.integers(0, 2**32 - 1),
    payload_type=st.none() | st.integers(0, 127),
    clock_rate=st.none() | st.sampled_from([8000, 16000, 48000]),
    clock_rate_assumed=st.booleans(),
    jitter_ms=opt,
    fraction_lost=opt,
    cumulative_lost=st.none() | st.integers(-(2**23), 2**31),
    rtt_ms=opt,
    mes=opt,
    remote_address=st.none() | st.text(max_size=25),
)
alerts = st.builds(
    Alert,
    alert_id=st.text(min_size=1, max_size=40),
    summary=st.text(max_size=80),
    raised_at_ms=st.integers(0, 2**45),
    kind=st.sampled_from(AlertKind),
    state=st.sampled_from(AlertState),
    severity=st.sampled_from(AlertSeverity),
    node=st.none() | st.text(max_size=10),
    endpoint=st.none() | st.text(max_size=20),
    figures=st.dictionaries(st.text(max_size=10), st.floats(allow_nan=False, width=64), max_size=5),
    resolved_at_ms=st.none() | st.integers(0, 2**45),
)


@settings(max_examples=100, deadline=None)
@given(samples)
def test_quality_sample_round_trip(sample: QualitySample) -> None:
    codec = Codec.for_model(QualitySample)
    data = codec.encode(sample)
    assert data[:2] == b"\xc3\x01"
    assert codec.decode(data) == sample


@settings(max_examples=100, deadline=None)
@given(alerts)
def test_alert_round_trip(alert: Alert) -> None:
    codec = Codec.for_model(Alert)
    assert codec.decode(codec.encode(alert)) == alert


def test_topics_of_issue_9_are_part_of_the_layout() -> None:
    t = TopicSettings(partitions=3).with_suffix("x")
    assert (t.topic_quality, t.topic_alerts) == ("asterisk.quality.v1.x", "asterisk.alerts.v1.x")
    specs = {s.name: s for s in topic_specs(t)}
    assert specs[t.topic_quality].cleanup_policy == "delete"
    assert specs[t.topic_quality].partitions == 3
    assert specs[t.topic_alerts].cleanup_policy == "compact"


@settings(max_examples=100, deadline=None)
@given(samples, alerts)
def test_fast_writer_is_byte_identical_to_fastavro(sample: QualitySample, alert: Alert) -> None:
    # The compiled writer (doubles, maps) must write exactly what the reference writer writes.
    for obj in (sample, alert):
        codec = Codec.for_model(type(obj))
        assert codec.encode(obj) == codec.encode_fastavro(obj)
