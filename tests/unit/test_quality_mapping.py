"""RTCP and qualify events → QualitySample, checked on the recorded transcript 14 by hand."""

from __future__ import annotations

import pytest

from astreg.errors import MalformedAmiEvent
from producers.quality import (
    QualifyState,
    channel_endpoint,
    clock_rate,
    qualify_sample,
    rtcp_samples,
    rtt_jitter,
)
from schemas.quality import QualityKind, QualitySample, ReportDirection
from tests.support.transcripts import FIXTURES, load_transcript


def _rtcp(node: str) -> list[dict[str, str]]:
    frames = load_transcript(FIXTURES / f"14_rtcp.{node}.txt")
    return [dict(f.headers) for f in frames if f.direction == "RX" and f.get("Event").startswith("RTCP")]


def _samples(node: str) -> list[QualitySample]:
    out: list[QualitySample] = []
    for msg in _rtcp(node):
        out += rtcp_samples(msg, node=node, now_ms=1_000, epoch=7, seq=len(out) + 1)
    return out


def test_every_rtcp_event_of_transcript_14_gives_one_sample() -> None:
    # 15 RTCP events on node1, 12 on node2, each with ReportCount: 1.
    assert [len(_rtcp(n)) for n in ("node1", "node2")] == [15, 12]
    s1 = _samples("node1")
    assert len(s1) == 15
    assert [s.seq for s in s1] == list(range(1, 16))
    assert {s.node for s in s1} == {"node1"} and {s.producer_epoch for s in s1} == {7}
    assert all(s.kind is QualityKind.RTCP and s.clock_rate == 8000 and s.clock_rate_assumed for s in s1)


def test_jitter_of_the_phone_call_checked_by_hand() -> None:
    # Call B: sipp (PJSIP/1006) plays PCMU with +-12 ms irregular send times. node1's RTCPSent
    # reports about the stream it receives from 1006 carry Report0IAJitter 65, 54, 55 (RTP
    # timestamp units). PCMU's RTP clock is 8000 Hz, so one unit is 1/8000 s = 0.125 ms:
    #   65 * 0.125 = 8.125 ms,  54 * 0.125 = 6.75 ms,  55 * 0.125 = 6.875 ms.
    # Asterisk's own end-of-call summary agrees: RTPAUDIOQOS of PJSIP/1006-00000005 says
    # txjitter=0.006875 s (= the last report, 55 units).
    phone = [s for s in _samples("node1") if s.endpoint == "PJSIP/1006"]
    assert [s.direction for s in phone] == [ReportDirection.SENT] * 3
    assert [s.jitter_ms for s in phone] == [8.125, 6.75, 6.875]
    assert {s.channel for s in phone} == {"PJSIP/1006-00000005"}
    assert {s.remote_address for s in phone} == {"127.0.0.1:20425"}
    assert {s.fraction_lost for s in phone} == {0.0} and {s.cumulative_lost for s in phone} == {0}
    assert {s.mes for s in phone} == {88.1}
    # SSRC 0x6f260e95 is node1's own stream; the block describes sipp's stream 0x12345678
    # (themssrc=305419896 in RTPAUDIOQOS).
    assert {(s.ssrc, s.source_ssrc) for s in phone} == {(0x6F260E95, 0x12345678)}


def test_trunk_leg_jitter_and_rtt_checked_by_hand() -> None:
    # node1's trunk leg to node2 during call B (PJSIP/node2-00000006): the RTCPReceived reports
    # are node2's view of what node1 sends: IAJitter 65, 51, 55 -> 8.125, 6.375, 6.875 ms;
    # RTT: 0.0000 with Report0LSR 0 (no SR echoed yet: unknown, not zero), then
    # RTT: 0.0011 s = 1.1 ms and RTT: 0.0009 s = 0.9 ms.
    trunk = [s for s in _samples("node1") if s.channel == "PJSIP/node2-00000006"]
    received = [s for s in trunk if s.direction is ReportDirection.RECEIVED]
    assert [s.jitter_ms for s in received] == [8.125, 6.375, 6.875]
    assert [s.rtt_ms for s in received] == [None, pytest.approx(1.1), pytest.approx(0.9)]
    assert {s.endpoint for s in trunk} == {"PJSIP/node2"}
    sent = [s for s in trunk if s.direction is ReportDirection.SENT]
    # 65, 52, 55 units -> 8.125, 6.5, 6.875 ms; RTCPSent carries no RTT.
    assert [(s.jitter_ms, s.rtt_ms) for s in sent] == [(8.125, None), (6.5, None), (6.875, None)]


def test_call_a_milliwatt_has_zero_jitter_and_rtt_once_echoed() -> None:
    # Call A (Milliwatt, perfectly regular): IAJitter 0 throughout; node2's RTCPReceived carry
    # RTT 0.0000 (LSR 0 -> None), 0.0015 s, 0.0016 s.
    a = [s for s in _samples("node2") if s.channel == "PJSIP/node1-00000002"]
    assert {s.jitter_ms for s in a} == {0.0}
    assert [s.rtt_ms for s in a if s.direction is ReportDirection.RECEIVED] == [
        None, pytest.approx(1.5), pytest.approx(1.6)]


def _msg(**over: str) -> dict[str, str]:
    base = dict(_rtcp("node1")[10])  # an RTCPSent of PJSIP/1006 with IAJitter 54
    base.update(over)
    return base


def test_fraction_lost_is_the_8_bit_field_over_256() -> None:
    [s] = rtcp_samples(_msg(Report0FractionLost="64", Report0CumulativeLost="120"), node="n", now_ms=0,
                       epoch=1, seq=1)
    assert s.fraction_lost == 0.25 and s.cumulative_lost == 120
    with pytest.raises(MalformedAmiEvent, match="8 bits"):
        rtcp_samples(_msg(Report0FractionLost="256"), node="n", now_ms=0, epoch=1, seq=1)


def test_known_codec_sets_the_clock_rate() -> None:
    [s] = rtcp_samples(_msg(), node="n", now_ms=0, epoch=1, seq=1, codec="opus")
    assert (s.clock_rate, s.clock_rate_assumed, s.jitter_ms) == (48000, False, 54 * 1000 / 48000)
    [s] = rtcp_samples(_msg(), node="n", now_ms=0, epoch=1, seq=1, payload_type=0)
    assert (s.clock_rate, s.clock_rate_assumed, s.payload_type, s.jitter_ms) == (8000, False, 0, 6.75)


@pytest.mark.parametrize(
    "pt, codec, expected",
    [(0, None, (8000, False)), (8, None, (8000, False)), (9, None, (8000, False)), (18, None, (8000, False)),
     (111, "opus", (48000, False)), (111, None, (8000, True)), (None, "nonsense", (8000, True)),
     (None, None, (8000, True))],
)
def test_clock_rate_table(pt: int | None, codec: str | None, expected: tuple[int, bool]) -> None:
    assert clock_rate(pt, codec) == expected


@pytest.mark.parametrize(
    "channel, endpoint",
    [("PJSIP/1001-0000000a", "PJSIP/1001"), ("PJSIP/node2-00000004", "PJSIP/node2"),
     ("SIP/alice-bob-0000abcd", "SIP/alice-bob"), ("Local/100@ctx-00000001;1", "Local/100@ctx")],
)
def test_channel_to_endpoint(channel: str, endpoint: str) -> None:
    assert channel_endpoint(channel) == endpoint


@pytest.mark.parametrize(
    "over, reason",
    [({"Channel": ""}, "missing Channel"), ({"Channel": "garbage"}, "not TECH/name"),
     ({"Report0IAJitter": "abc"}, "not a number"), ({"Report0IAJitter": ""}, "missing"),
     ({"ReportCount": "99"}, "out of range"), ({"SSRC": "0xZZ"}, "not a number")],
)
def test_bad_rtcp_events_raise_a_clear_error(over: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedAmiEvent, match=reason):
        rtcp_samples(_msg(**over), node="n", now_ms=0, epoch=1, seq=1)


def test_no_report_block_and_other_events_give_nothing() -> None:
    assert rtcp_samples(_msg(ReportCount="0"), node="n", now_ms=0, epoch=1, seq=1) == []
    assert rtcp_samples({"Event": "Hangup"}, node="n", now_ms=0, epoch=1, seq=1) == []


def test_timestamp_header_is_the_event_time() -> None:
    [s] = rtcp_samples(_msg(Timestamp="1795742157.500"), node="n", now_ms=5, epoch=1, seq=1)
    assert s.event_time_ms == 1795742157500


def test_rtt_jitter_is_rfc3550_smoothing_of_consecutive_differences() -> None:
    # RTTs 10, 14, 12 ms: D = 4 then 2. J1 = 0 + (4 - 0)/16 = 0.25; J2 = 0.25 + (2 - 0.25)/16 = 0.359375
    s = rtt_jitter(None, 10.0)
    assert s == QualifyState(10.0, 0.0)
    s = rtt_jitter(s, 14.0)
    assert s.jitter_ms == 0.25
    s = rtt_jitter(s, 12.0)
    assert s.jitter_ms == 0.359375 and s.last_rtt_ms == 12.0


def _contact(status: str, usec: str) -> dict[str, str]:
    return {"Event": "ContactStatus", "URI": "sip:1005@127.0.0.1:6105", "ContactStatus": status,
            "AOR": "1005", "EndpointName": "1005", "RoundtripUsec": usec}


def test_qualify_samples_carry_rtt_and_its_jitter_per_contact() -> None:
    s1, st = qualify_sample(_contact("Reachable", "10000"), None, node="node1", now_ms=1, epoch=1, seq=5)
    assert s1 is not None and (s1.endpoint, s1.rtt_ms, s1.jitter_ms, s1.kind) == (
        "PJSIP/1005", 10.0, 0.0, QualityKind.QUALIFY)
    s2, st = qualify_sample(_contact("Reachable", "14000"), st, node="node1", now_ms=2, epoch=1, seq=6)
    assert s2 is not None and s2.jitter_ms == 0.25 and s2.channel == "sip:1005@127.0.0.1:6105"
    none, st2 = qualify_sample(_contact("Unreachable", "0"), st, node="node1", now_ms=3, epoch=1, seq=7)
    assert none is None and st2 == st
    none, gone = qualify_sample(_contact("Removed", "0"), st, node="node1", now_ms=3, epoch=1, seq=7)
    assert none is None and gone is None
    assert qualify_sample({"Event": "PeerStatus"}, st, node="n", now_ms=0, epoch=1, seq=1) == (None, st)


def test_qualify_transcript_06_reachable_has_a_round_trip() -> None:
    frames = load_transcript(FIXTURES / "06_qualify_reachable_unreachable.node1.txt")
    state = None
    samples = []
    for f in frames:
        if f.direction == "RX" and f.get("Event") == "ContactStatus":
            s, state = qualify_sample(dict(f.headers), state, node="node1", now_ms=0, epoch=1, seq=1)
            if s:
                samples.append(s)
    assert samples and all(s.rtt_ms and s.rtt_ms > 0 for s in samples)


def test_quality_tap_gives_keyed_records_and_keeps_rtt_state_per_contact() -> None:
    from producers.quality_tap import QualityTap
    from schemas.codec import Codec

    tap = QualityTap("asterisk.quality.v1.t")
    codec = Codec.for_model(QualitySample)
    [rec] = tap.rtcp(_msg(), node="node1", now_ms=5, epoch=3, seq=10)
    sample = codec.decode(rec.value)
    assert (rec.topic, rec.key, sample.seq, sample.jitter_ms) == ("asterisk.quality.v1.t", b"PJSIP/1006", 10, 6.75)
    assert rec.coalesce == ("quality", "PJSIP/1006", "PJSIP/1006-00000005", ReportDirection.SENT)
    tap.contact(_contact("Reachable", "10000"), node="node1", now_ms=6, epoch=3, seq=11)
    [rec] = tap.contact(_contact("Reachable", "14000"), node="node1", now_ms=7, epoch=3, seq=12)
    assert codec.decode(rec.value).jitter_ms == 0.25  # smoothed against the previous round trip
    assert tap.contact(_contact("Removed", "0"), node="node1", now_ms=8, epoch=3, seq=13) == []
    [rec] = tap.contact(_contact("Reachable", "9000"), node="node1", now_ms=9, epoch=3, seq=13)
    assert codec.decode(rec.value).jitter_ms == 0.0  # forgotten on Removed: starts afresh
    assert tap.samples == 4
