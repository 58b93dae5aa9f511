"""RTP/RTCP of simulated calls: the ``RTCPSent`` / ``RTCPReceived`` events of each call leg.

A :class:`Leg` is one channel of a call on one node (``PJSIP/1001-0000000a`` for a phone,
``PJSIP/node2-0000000b`` for the trunk to another node), with the channel block Asterisk puts
on every channel event and the counters of its RTP stream. :func:`rtcp_events` renders one
report interval of a leg byte-for-byte like transcript 14 (header names, order, value formats):
``RTCPSent`` (the node's report on the stream it receives) then ``RTCPReceived`` (the peer's
report on the stream the node sends, with the RTT). Jitter is given in ms and reported in RTP
timestamp units of an 8 kHz codec (PCMU), loss as a fraction (reported as FractionLost/256).
Pure apart from the random generator passed in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .state import REPORTING, Ev

__all__ = ["Leg", "rtcp_events", "mes"]

_SENT_HEAD = b"Event: RTCPSent\r\nPrivilege: reporting,all\r\n"
_RECEIVED_HEAD = b"Event: RTCPReceived\r\nPrivilege: reporting,all\r\n"
_PACKETS_PER_S = 50  # 20 ms packets
_OCTETS = 160  # PCMU payload of 20 ms


@dataclass
class Leg:
    """One channel of a call on one node and its RTP counters."""

    channel: str
    caller_num: str
    caller_name: str
    connected_num: str
    connected_name: str
    context: str
    exten: str
    priority: int
    uniqueid: str
    linkedid: str
    local: str  # ip:port of the node's RTP
    remote: str  # ip:port of the peer's RTP
    jitter_ms: float
    loss: float
    rng: random.Random
    ssrc: int = 0
    peer_ssrc: int = 0
    base_seq: int = 0
    peer_base_seq: int = 0
    packets: float = 0.0
    lost: int = 0
    lost_exact: float = 0.0
    peer_lost: int = 0
    reports: int = 0
    lsr: int = 0

    def __post_init__(self) -> None:
        self.ssrc = self.ssrc or self.rng.getrandbits(32)
        self.peer_ssrc = self.peer_ssrc or self.rng.getrandbits(32)
        self.base_seq = self.base_seq or self.rng.randrange(1, 60000)
        self.peer_base_seq = self.peer_base_seq or self.rng.randrange(1, 60000)

    def channel_block(self) -> str:
        return (f"Channel: {self.channel}\r\nChannelState: 6\r\nChannelStateDesc: Up\r\n"
                f"CallerIDNum: {self.caller_num}\r\nCallerIDName: {self.caller_name}\r\n"
                f"ConnectedLineNum: {self.connected_num}\r\nConnectedLineName: {self.connected_name}\r\n"
                f"Language: en\r\nAccountCode: \r\nContext: {self.context}\r\nExten: {self.exten}\r\n"
                f"Priority: {self.priority}\r\nUniqueid: {self.uniqueid}\r\nLinkedid: {self.linkedid}\r\n")


def mes(jitter_ms: float, loss: float) -> float:
    """A media experience score in the spirit of Asterisk's (88.1 for a clean PCMU stream)."""
    return max(0.0, min(88.1, 88.1 - 0.4 * jitter_ms - 250.0 * loss))


def _jitter_units(leg: Leg) -> int:
    if leg.jitter_ms <= 0:
        return 0
    return max(0, round(leg.jitter_ms * 8 * leg.rng.uniform(0.85, 1.15)))  # 8 units per ms at 8 kHz


def rtcp_events(leg: Leg, now: float, interval: float) -> list[Ev]:
    """One report interval of a leg: RTCPSent, then RTCPReceived (as transcript 14)."""
    new = _PACKETS_PER_S * interval
    leg.packets += new
    packets = int(leg.packets)
    leg.lost_exact += leg.loss * new
    leg.lost = leg.peer_lost = int(leg.lost_exact)
    fraction = min(255, round(leg.loss * 256))
    first = leg.reports == 0
    leg.reports += 1
    lsr = 0 if first else leg.lsr
    dlsr = "0.0000" if first else f"{interval * 0.9998:.4f}"
    leg.lsr = int(now * 65536) & 0xFFFFFFFF  # middle 32 bits of the NTP time of this SR
    score = f"{mes(leg.jitter_ms, leg.loss):.1f}"
    sent_common = (f"SentNTP: {now:.6f}\r\nSentRTP: {packets * _OCTETS}\r\nSentPackets: {packets}\r\n"
                   f"SentOctets: {packets * _OCTETS}\r\n")
    sent = (leg.channel_block() + f"To: {leg.remote}\r\nFrom: {leg.local}\r\nMES: {score}\r\n"
            f"SSRC: 0x{leg.ssrc:08x}\r\nPT: 200(SR)\r\nReportCount: 1\r\n" + sent_common
            + f"Report0SourceSSRC: 0x{leg.peer_ssrc:08x}\r\nReport0FractionLost: {fraction}\r\n"
            f"Report0CumulativeLost: {leg.lost}\r\nReport0HighestSequence: {(leg.peer_base_seq + packets) % 65536}\r\n"
            f"Report0SequenceNumberCycles: 0\r\nReport0IAJitter: {_jitter_units(leg)}\r\n"
            f"Report0LSR: {lsr}\r\nReport0DLSR: {dlsr}\r\n\r\n")
    rtt = "0.0000" if first else f"{leg.rng.uniform(0.0004, 0.0016):.4f}"
    received = (leg.channel_block() + f"To: {leg.local}\r\nFrom: {leg.remote}\r\nRTT: {rtt}\r\nMES: {score}\r\n"
                f"SSRC: 0x{leg.peer_ssrc:08x}\r\nPT: 200(SR)\r\nReportCount: 1\r\n" + sent_common
                + f"Report0SourceSSRC: 0x{leg.ssrc:08x}\r\nReport0FractionLost: {fraction}\r\n"
                f"Report0CumulativeLost: {leg.peer_lost}\r\nReport0HighestSequence: {(leg.base_seq + packets) % 65536}\r\n"
                f"Report0SequenceNumberCycles: 0\r\nReport0IAJitter: {_jitter_units(leg)}\r\n"
                f"Report0LSR: {lsr}\r\nReport0DLSR: {dlsr}\r\n\r\n")
    return [(REPORTING, _SENT_HEAD, sent.encode()), (REPORTING, _RECEIVED_HEAD, received.encode())]
