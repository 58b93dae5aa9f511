"""Pure translation of AMI quality events into :class:`~schemas.quality.QualitySample` records.

``rtcp_samples(msg, node=..., now_ms=..., epoch=..., seq=...)`` turns one ``RTCPSent`` or
``RTCPReceived`` message (any mapping with ``get``: panoramisk's ``Message`` or a dict) into one
sample per report block, numbered ``seq, seq+1, ...`` (the caller advances its counter by
``len(result)``). The channel (``PJSIP/1001-0000000a``) is mapped to its endpoint
(``PJSIP/1001``); the interarrival jitter, which Asterisk reports in RTP timestamp units, is
turned into milliseconds with the codec's clock rate; FractionLost (8 bits) becomes 0..1.

The RTCP event does not say which codec the stream uses (its ``PT`` header is the RTCP packet
type, 200 = SR, 201 = RR), so the caller passes the RTP payload type or codec name when it knows
them; otherwise 8000 Hz is assumed (right for every narrowband codec and for G.722, whose RTP
clock is 8000 by RFC 3551) and the sample says so (``clock_rate_assumed``).

``qualify_sample(msg, previous, ...)`` turns a ``ContactStatus`` with a round trip into a
signalling sample whose ``jitter_ms`` is the RFC 3550 smoothed variation of consecutive round
trips of that contact; the caller keeps the returned :class:`QualifyState` per contact.
No I/O, no clocks: exercised by ``tests/unit/test_quality_mapping.py`` on transcript 14.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from astreg.errors import MalformedAmiEvent
from schemas.quality import QualityKind, QualitySample, ReportDirection

__all__ = [
    "RTCP_EVENTS",
    "STATIC_CLOCK_RATES",
    "QualifyState",
    "clock_rate",
    "channel_endpoint",
    "rtcp_samples",
    "rtt_jitter",
    "qualify_sample",
]

RTCP_EVENTS = frozenset({"RTCPSent", "RTCPReceived"})

# RFC 3551 static payload types with their RTP clock rates (audio); G.722 is 8000 on the wire
# for historical reasons although it samples at 16 kHz.
STATIC_CLOCK_RATES: dict[int, int] = {
    0: 8000,
    3: 8000,
    4: 8000,
    5: 8000,
    7: 8000,
    8: 8000,
    9: 8000,
    15: 8000,
    18: 8000,
}
_CODEC_RATES = {
    "opus": 48000,
    "ulaw": 8000,
    "alaw": 8000,
    "pcmu": 8000,
    "pcma": 8000,
    "g722": 8000,
    "g729": 8000,
    "gsm": 8000,
    "ilbc": 8000,
    "speex16": 16000,
    "slin16": 16000,
}
ASSUMED_RATE = 8000

# Asterisk names a channel <endpoint>-<8 hex digits>[;n] (Local channels add ;1/;2).
_CHANNEL = re.compile(r"^(?P<endpoint>[^/\s]+/\S+?)-[0-9a-fA-F]{8}(?:;\d+)?$")
_MAX_FIELD = 8192


def clock_rate(payload_type: int | None = None, codec: str | None = None) -> tuple[int, bool]:
    """(RTP clock rate in Hz, assumed?) for a payload type and/or codec name."""
    if payload_type is not None and payload_type in STATIC_CLOCK_RATES:
        return STATIC_CLOCK_RATES[payload_type], False
    if codec:
        rate = _CODEC_RATES.get(codec.strip().lower())
        if rate is not None:
            return rate, False
    return ASSUMED_RATE, True


def channel_endpoint(channel: str) -> str:
    """``PJSIP/1001-0000000a`` → ``PJSIP/1001``; raises on anything that is not a channel name."""
    m = _CHANNEL.match(channel or "")
    if not m:
        raise MalformedAmiEvent(f"Channel {channel[:80]!r} is not TECH/name-XXXXXXXX", "RTCP")
    return m.group("endpoint")


def _headers(msg: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in msg.items()}


def _get(msg: Mapping[str, Any], name: str, event: str, required: bool = False) -> str | None:
    value = msg.get(name)
    if value is None or value == "":  # panoramisk returns '' for a missing header
        if required:
            raise MalformedAmiEvent(f"missing {name}", event, _headers(msg))
        return None
    text = str(value).strip()
    if len(text) > _MAX_FIELD:
        raise MalformedAmiEvent(f"{name} is oversize ({len(text)} characters)", event)
    return text


def _number(msg: Mapping[str, Any], name: str, event: str, kind: type, required: bool = False) -> Any:
    text = _get(msg, name, event, required)
    if text is None:
        return None
    try:
        if kind is int:
            return int(text, 16) if text[:2].lower() == "0x" else int(text)
        return float(text)
    except ValueError as exc:
        raise MalformedAmiEvent(f"{name} is not a number: {text[:40]!r}", event, _headers(msg)) from exc


def _event_time(msg: Mapping[str, Any], now_ms: int) -> int:
    # Asterisk adds Timestamp (epoch seconds) only with timestampevents=yes.
    text = msg.get("Timestamp") or ""
    try:
        return int(float(text) * 1000) if text else now_ms
    except ValueError:
        return now_ms


def rtcp_samples(
    msg: Mapping[str, Any],
    *,
    node: str,
    now_ms: int,
    epoch: int,
    seq: int,
    payload_type: int | None = None,
    codec: str | None = None,
) -> list[QualitySample]:
    """One sample per report block of an RTCPSent/RTCPReceived message; [] for other events."""
    event = msg.get("Event") or ""
    if event not in RTCP_EVENTS:
        return []
    channel = _get(msg, "Channel", event, required=True)
    assert channel is not None
    endpoint = channel_endpoint(channel)
    received = event == "RTCPReceived"
    rate, assumed = clock_rate(payload_type, codec)
    # RTT is only in RTCPReceived, and only meaningful once the peer echoed one of our SRs
    # (LSR 0 means "no SR received yet" per RFC 3550, and Asterisk then prints RTT 0.0000).
    rtt_s = _number(msg, "RTT", event, float) if received else None
    ssrc = _number(msg, "SSRC", event, int)
    mes = _number(msg, "MES", event, float)
    remote = _get(msg, "From" if received else "To", event)
    count = _number(msg, "ReportCount", event, int) or 0
    if count < 0 or count > 31:  # 5-bit field in RTCP
        raise MalformedAmiEvent(f"ReportCount {count} out of range", event, _headers(msg))
    t = _event_time(msg, now_ms)
    out = []
    for i in range(count):
        p = f"Report{i}"
        jitter_units = _number(msg, p + "IAJitter", event, int, required=True)
        fraction = _number(msg, p + "FractionLost", event, int, required=True)
        if not 0 <= fraction <= 255:
            raise MalformedAmiEvent(f"{p}FractionLost {fraction} is not 8 bits", event, _headers(msg))
        lsr = _number(msg, p + "LSR", event, int)
        rtt_ms = rtt_s * 1000.0 if rtt_s is not None and lsr else None
        out.append(
            QualitySample(
                endpoint=endpoint,
                node=node,
                producer_epoch=epoch,
                seq=seq + i,
                event_time_ms=t,
                kind=QualityKind.RTCP,
                direction=ReportDirection.RECEIVED if received else ReportDirection.SENT,
                channel=channel,
                ssrc=ssrc,
                source_ssrc=_number(msg, p + "SourceSSRC", event, int),
                payload_type=payload_type,
                clock_rate=rate,
                clock_rate_assumed=assumed,
                jitter_ms=jitter_units * 1000.0 / rate,
                fraction_lost=fraction / 256.0,
                cumulative_lost=_number(msg, p + "CumulativeLost", event, int),
                rtt_ms=rtt_ms,
                mes=mes,
                remote_address=remote,
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class QualifyState:
    """What the jitter of one contact's qualify round trips needs from the past."""

    last_rtt_ms: float
    jitter_ms: float


def rtt_jitter(previous: QualifyState | None, rtt_ms: float) -> QualifyState:
    """RFC 3550 §6.4.1 smoothing: J += (|D| - J) / 16, D = difference of consecutive RTTs."""
    if previous is None:
        return QualifyState(last_rtt_ms=rtt_ms, jitter_ms=0.0)
    d = abs(rtt_ms - previous.last_rtt_ms)
    return QualifyState(last_rtt_ms=rtt_ms, jitter_ms=previous.jitter_ms + (d - previous.jitter_ms) / 16.0)


def qualify_sample(
    msg: Mapping[str, Any],
    previous: QualifyState | None,
    *,
    node: str,
    now_ms: int,
    epoch: int,
    seq: int,
) -> tuple[QualitySample | None, QualifyState | None]:
    """A signalling sample from a ContactStatus Reachable with its round trip, and the new state.

    Any other ContactStatus gives no sample; ``Removed`` forgets the state (``None``) so a
    contact that comes back starts afresh.
    """
    if msg.get("Event") != "ContactStatus":
        return None, previous
    status = _get(msg, "ContactStatus", "ContactStatus", required=True)
    if status == "Removed":
        return None, None
    usec = msg.get("RoundtripUsec") or ""
    if status != "Reachable" or not usec.strip().isdigit() or int(usec) <= 0:
        return None, previous
    uri = _get(msg, "URI", "ContactStatus", required=True)
    name = _get(msg, "EndpointName", "ContactStatus", required=True)
    rtt_ms = int(usec) / 1000.0
    state = rtt_jitter(previous, rtt_ms)
    sample = QualitySample(
        endpoint=f"PJSIP/{name}",
        node=node,
        producer_epoch=epoch,
        seq=seq,
        event_time_ms=_event_time(msg, now_ms),
        kind=QualityKind.QUALIFY,
        channel=uri,
        jitter_ms=state.jitter_ms,
        rtt_ms=rtt_ms,
    )
    return sample, state
