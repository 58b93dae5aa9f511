"""What each AMI session was sent (``--journal``): the registration events, for accounting.

A fault suite must show that every AMI event the simulator emitted reached the registrations topic
(or the dead letters). The simulator knows what it wrote to each client connection and when, and
when it last heard from that client: :class:`SessionJournal` keeps that per session, and
``GET /journal`` on the control server returns it. Only the events a producer turns into
registration records are kept (ContactStatus, PeerStatus, DeviceStateChange of an endpoint),
reduced to what identifies them in the topic: endpoint, status, contact URI and the event time
in ms as the producer computes it from ``Timestamp`` (so run with ``--timestamps``); and the
client's silences longer than a second (a producer pings every heartbeat interval: a longer
silence is a link cut or a stalled client, and what was sent meanwhile may never have been read,
even if the client's bytes arrive later).

It grows with every event sent, so it is off by default (tests and fault runs only).
"""

from __future__ import annotations

import time
from typing import Any

from astreg.amiwire import header_map

__all__ = ["SessionJournal", "entry_of", "TRACKED"]

TRACKED = (b"Event: ContactStatus\r\n", b"Event: PeerStatus\r\n", b"Event: DeviceStateChange\r\n")
ENDPOINT_TECHS = ("PJSIP/", "SIP/", "IAX2/")

# One journal entry: (event name, endpoint, status text, contact URI or "", event time ms or None)
Entry = tuple[str, str, str, str, int | None]


def _ms(ts: str) -> int | None:
    """``Timestamp: sec.usec`` in ms, the producer's way (``producers.ami.event_time_ms``)."""
    sec, _, frac = ts.partition(".")
    if sec.isdigit() and (not frac or frac.isdigit()):
        return int(sec) * 1000 + int((frac + "000")[:3])
    return None


def entry_of(rendered: bytes) -> Entry | None:
    """The journal entry of one rendered event, or None when it is not a registration event."""
    if not rendered.startswith(TRACKED):
        return None
    f = header_map(rendered.decode("utf-8", "replace"))
    event = f.get("Event", "")
    ts = _ms(f.get("Timestamp", ""))
    if event == "ContactStatus":
        resource = f.get("EndpointName") or f.get("AOR") or ""
        return (event, f"PJSIP/{resource}", f.get("ContactStatus", ""), f.get("URI", ""), ts)
    if event == "PeerStatus":
        return (event, f.get("Peer", ""), f.get("PeerStatus", ""), "", ts)
    device = f.get("Device", "")
    if not device.startswith(ENDPOINT_TECHS):
        return None  # Queue:, Custom: ... are no registrations
    return (event, device, f.get("State", ""), "", ts)


class SessionJournal:
    """The registration events sent to one AMI session, and when the client was last heard."""

    __slots__ = ("session", "peer", "opened_at", "closed_at", "last_rx", "gaps", "sent")

    GAP_S = 1.0  # a longer silence of the client is kept in ``gaps``

    def __init__(self, session: str, peer: Any):
        self.session = session
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self.opened_at = time.time()
        self.closed_at: float | None = None
        self.last_rx = self.opened_at
        self.gaps: list[tuple[float, float]] = []  # (from, to): the client sent nothing for over GAP_S
        self.sent: list[tuple[float, Entry]] = []

    def heard(self, now: float) -> None:
        """Bytes arrived from the client at ``now``."""
        if now - self.last_rx > self.GAP_S:
            self.gaps.append((self.last_rx, now))
        self.last_rx = now

    def as_json(self) -> dict[str, Any]:
        return {"session": self.session, "peer": self.peer, "opened_at": self.opened_at,
                "closed_at": self.closed_at, "last_rx": self.last_rx, "gaps": [list(g) for g in self.gaps],
                "events": [[at, *entry] for at, entry in self.sent]}
