"""Frozen dataclass mirrors of ``quality_sample.avsc`` and ``alert.avsc``.

Kept beside :mod:`schemas.models` in the same style: the ``.avsc`` files are the truth and
``tests/unit/test_quality_schemas.py`` asserts the field lists are equal. Times are UTC epoch
milliseconds. Encode and decode with ``Codec.for_model(QualitySample)`` /
``Codec.for_model(Alert)`` like every other record of the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .models import _AvroEnum

__all__ = [
    "QualityKind",
    "ReportDirection",
    "AlertKind",
    "AlertState",
    "AlertSeverity",
    "QualitySample",
    "Alert",
]


class QualityKind(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    RTCP = "RTCP"
    QUALIFY = "QUALIFY"


class ReportDirection(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    SENT = "SENT"
    RECEIVED = "RECEIVED"


class AlertKind(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    NODE_STALE = "NODE_STALE"
    NODE_DOWN = "NODE_DOWN"
    AMI_LINK_DOWN = "AMI_LINK_DOWN"
    REGISTRATION_STORM = "REGISTRATION_STORM"
    CONTACT_LOSS = "CONTACT_LOSS"
    ENDPOINT_FLAPPING = "ENDPOINT_FLAPPING"
    HIGH_JITTER = "HIGH_JITTER"
    HIGH_LOSS = "HIGH_LOSS"
    SNAPSHOT_HEALED = "SNAPSHOT_HEALED"
    DUPLICATE_PRODUCER = "DUPLICATE_PRODUCER"


class AlertState(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    RAISED = "RAISED"
    RESOLVED = "RESOLVED"


class AlertSeverity(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    INFO = "INFO"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"


@dataclass(frozen=True, slots=True)
class QualitySample:
    """One RTCP report block or qualify round trip of one endpoint (see quality_sample.avsc)."""

    endpoint: str
    node: str
    producer_epoch: int
    seq: int
    event_time_ms: int
    kind: QualityKind = QualityKind.UNKNOWN
    direction: ReportDirection = ReportDirection.UNKNOWN
    channel: str | None = None
    ssrc: int | None = None
    source_ssrc: int | None = None
    payload_type: int | None = None
    clock_rate: int | None = None
    clock_rate_assumed: bool = False
    jitter_ms: float | None = None
    fraction_lost: float | None = None
    cumulative_lost: int | None = None
    rtt_ms: float | None = None
    mes: float | None = None
    remote_address: str | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert raised or resolved by the alerter (see alert.avsc)."""

    alert_id: str
    summary: str
    raised_at_ms: int
    kind: AlertKind = AlertKind.UNKNOWN
    state: AlertState = AlertState.UNKNOWN
    severity: AlertSeverity = AlertSeverity.UNKNOWN
    node: str | None = None
    endpoint: str | None = None
    figures: Mapping[str, float] = field(default_factory=dict)
    resolved_at_ms: int | None = None
