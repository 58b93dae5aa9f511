"""Compact per-contact state and the AMI event encoders of one change (pure, no I/O).

A ``Contact`` uses ``__slots__`` and derives its IP/URI from the phone number unless set, so a
million registrations fit in a few hundred MB. Events are ``(class_bit, head, body)`` triples:
``head`` is ``Event``+``Privilege``, ``body`` the fields after the optional Timestamp/SystemName
lines, so the node can add those per its configuration without re-encoding.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "Contact", "Ev", "SYSTEM", "CALL", "SECURITY", "REPORTING", "ALL_CLASSES", "class_mask",
    "NONQUALIFIED", "REACHABLE", "UNREACHABLE", "STATUS_NAMES", "contact_status", "peer_status",
    "device_state", "challenge_sent", "successful_auth", "phone_ip", "DEVICE_STATES", "HUMAN_STATE",
    "event_tv",
]

SYSTEM, CALL, SECURITY, REPORTING, OTHER = 1, 2, 4, 8, 16
ALL_CLASSES = 0xFFFF
_CLASS_BITS = {
    "system": SYSTEM, "call": CALL, "security": SECURITY, "reporting": REPORTING, "log": OTHER,
    "verbose": OTHER, "command": OTHER, "agent": OTHER, "user": OTHER, "config": OTHER, "dtmf": OTHER,
    "cdr": OTHER, "dialplan": OTHER, "originate": OTHER, "agi": OTHER, "cc": OTHER, "aoc": OTHER,
    "test": OTHER, "message": OTHER, "all": ALL_CLASSES,
}

Ev = tuple[int, bytes, bytes]

NONQUALIFIED, REACHABLE, UNREACHABLE = 0, 1, 2
STATUS_NAMES = ("NonQualified", "Reachable", "Unreachable")
DEVICE_STATES = ("UNKNOWN", "NOT_INUSE", "INUSE", "BUSY", "INVALID", "UNAVAILABLE", "RINGING", "RINGINUSE", "ONHOLD")
HUMAN_STATE = {
    "UNKNOWN": "Unknown", "NOT_INUSE": "Not in use", "INUSE": "In use", "BUSY": "Busy", "INVALID": "Invalid",
    "UNAVAILABLE": "Unavailable", "RINGING": "Ringing", "RINGINUSE": "Ring+Inuse", "ONHOLD": "On Hold",
}


def class_mask(value: str) -> int:
    """Event mask of a Login ``Events:`` / ``EventMask:`` value (on, off, or a class list)."""
    v = value.strip().lower()
    if v in ("", "on", "yes", "true", "1", "all"):
        return ALL_CLASSES
    if v in ("off", "no", "false", "0", "none"):
        return 0
    mask = 0
    for part in v.split(","):
        mask |= _CLASS_BITS.get(part.strip(), 0)
    return mask


def phone_ip(phone: int) -> str:
    """Documentation-style private address of a phone (data only: nothing ever connects to it)."""
    return f"10.{(phone >> 16) & 255}.{(phone >> 8) & 255}.{phone & 255}"


class Contact:
    """One registered contact of one phone on one node."""

    __slots__ = ("phone", "ip", "port", "transport", "user_agent", "status", "rtt", "qualify",
                 "expires", "reg_time", "alive", "reg_seq", "call_id")

    def __init__(self, phone: int, ip: str | None, port: int, transport: str, user_agent: str | None,
                 qualify: bool, expires: int, reg_time: float, reg_seq: int, call_id: int):
        self.phone = phone
        self.ip = ip
        self.port = port
        self.transport = transport
        self.user_agent = user_agent
        self.status = NONQUALIFIED
        self.rtt = 0
        self.qualify = qualify
        self.expires = expires
        self.reg_time = reg_time  # time of the last REGISTER (refresh) seen
        self.alive = True  # the phone keeps refreshing on its own
        self.reg_seq = reg_seq
        self.call_id = call_id

    def address(self) -> str:
        return self.ip if self.ip is not None else phone_ip(self.phone)

    def uri(self, endpoint: str) -> str:
        base = f"sip:{endpoint}@{self.address()}:{self.port}"
        return base if self.transport == "udp" else f"{base};transport={self.transport}"

    def expires_at(self, now: float) -> int:
        """Unix time the registration runs out; live phones refresh just in time (no AMI event)."""
        if not self.alive or now < self.reg_time + self.expires:
            return int(self.reg_time + self.expires)
        periods = int((now - self.reg_time) // self.expires) + 1
        return int(self.reg_time + periods * self.expires)

    def object_name(self, endpoint: str) -> str:
        return f"{endpoint};@{hashlib.md5(self.uri(endpoint).encode()).hexdigest()}"  # noqa: S324 - Asterisk's id


_CS_HEAD = b"Event: ContactStatus\r\nPrivilege: system,all\r\n"
_PS_HEAD = b"Event: PeerStatus\r\nPrivilege: system,all\r\n"
_DS_HEAD = b"Event: DeviceStateChange\r\nPrivilege: call,all\r\n"
_CH_HEAD = b"Event: ChallengeSent\r\nPrivilege: security,all\r\n"
_SA_HEAD = b"Event: SuccessfulAuth\r\nPrivilege: security,all\r\n"


def contact_status(endpoint: str, uri: str, status: str, rtt: int) -> Ev:
    body = (f"URI: {uri}\r\nContactStatus: {status}\r\nAOR: {endpoint}\r\nEndpointName: {endpoint}\r\n"
            f"RoundtripUsec: {rtt}\r\n\r\n")
    return SYSTEM, _CS_HEAD, body.encode()


def peer_status(endpoint: str, status: str) -> Ev:
    return SYSTEM, _PS_HEAD, f"ChannelType: PJSIP\r\nPeer: PJSIP/{endpoint}\r\nPeerStatus: {status}\r\n\r\n".encode()


def device_state(device: str, state: str) -> Ev:
    return CALL, _DS_HEAD, f"Device: {device}\r\nState: {state}\r\n\r\n".encode()


def _event_tv(now: float) -> str:
    import time

    t = time.gmtime(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(now * 1000) % 1000:03d}+0000"


def _sip_common(endpoint: str, call_id: str, local: str, remote: str, now: float) -> str:
    return (f"EventTV: {_event_tv(now)}\r\nSeverity: Informational\r\nService: PJSIP\r\nEventVersion: 1\r\n"
            f"AccountID: {endpoint}\r\nSessionID: {call_id}\r\nLocalAddress: IPV4/UDP/{local}\r\n"
            f"RemoteAddress: IPV4/UDP/{remote}\r\n")


def challenge_sent(endpoint: str, call_id: str, local: str, remote: str, now: float) -> Ev:
    return SECURITY, _CH_HEAD, (_sip_common(endpoint, call_id, local, remote, now) + "Challenge: \r\n\r\n").encode()


def successful_auth(endpoint: str, call_id: str, local: str, remote: str, now: float) -> Ev:
    return SECURITY, _SA_HEAD, (_sip_common(endpoint, call_id, local, remote, now) + "UsingPassword: 1\r\n\r\n").encode()


def event_tv(now: float) -> str:
    return _event_tv(now)
