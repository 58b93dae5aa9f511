"""Pure translation of AMI messages into astreg records: no I/O, no clocks, no globals.

``to_event(msg, node=..., now_ms=..., epoch=..., seq=...)`` turns one AMI message (any mapping
with case-insensitive ``get`` like panoramisk's ``Message``, or a plain dict with AMI's spelling)
into a :class:`~schemas.models.RegistrationEvent`, or ``None`` when the message is not about an
endpoint's registration (most AMI traffic). ``to_node_status`` does the same for
``FullyBooted``/``Shutdown``. Anything that *is* about an endpoint but cannot be trusted (missing
headers — panoramisk returns ``''`` —, unknown values, oversize fields, broken UTF-8) raises
:class:`~astreg.errors.MalformedAmiEvent` with a reason; the caller dead-letters it.

The connection, ordering and snapshots live in :mod:`producers.node`; this module is exercised
by ``tests/unit/test_ami.py`` against the recorded transcripts in ``tests/fixtures/ami/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from astreg.errors import InvalidSipUri, MalformedAmiEvent
from producers import sipuri
from schemas.models import (
    ContactStatus,
    DeviceState,
    EventKind,
    NodeEventKind,
    NodeStatus,
    PeerStatus,
    RegistrationEvent,
    Source,
)

__all__ = [
    "MAX_FIELD",
    "CONSUMED_EVENTS",
    "ContactInfo",
    "SipUri",
    "parse_uri",
    "parse_hostport",
    "event_time_ms",
    "to_event",
    "to_node_status",
    "contact_info",
    "contact_detail",
    "reason_kind",
]

MAX_FIELD = 8192  # bytes-ish (characters): no legitimate AMI value we read comes close

# Event names that to_event / to_node_status look at; everything else is dropped by the
# caller after one dict lookup of the Event header.
CONSUMED_EVENTS = frozenset(
    {
        "ContactStatus",
        "PeerStatus",
        "DeviceStateChange",
        "ContactList",
        "PeerEntry",
        "FullyBooted",
        "Shutdown",
    }
)

ENDPOINT_TECHS = ("PJSIP", "SIP", "IAX2")

_CONTACT_STATUS = {
    "nonqualified": ContactStatus.NON_QUALIFIED,
    "created": ContactStatus.NON_QUALIFIED,  # Asterisk <= 15 said Created for a new contact
    "unqualified": ContactStatus.NON_QUALIFIED,  # documented spelling, never seen on the wire
    "unknown": ContactStatus.NON_QUALIFIED,  # ContactList: qualify has not answered yet
    "reachable": ContactStatus.REACHABLE,
    "avail": ContactStatus.REACHABLE,  # Asterisk 13 labels
    "available": ContactStatus.REACHABLE,
    "unreachable": ContactStatus.UNREACHABLE,
    "unavail": ContactStatus.UNREACHABLE,
    "unavailable": ContactStatus.UNREACHABLE,
    "removed": ContactStatus.REMOVED,
}

_PEER_STATUS = {
    "reachable": PeerStatus.REACHABLE,
    "unreachable": PeerStatus.UNREACHABLE,
    "registered": PeerStatus.REGISTERED,
    "unregistered": PeerStatus.UNREGISTERED,
    "rejected": PeerStatus.REJECTED,
    "lagged": PeerStatus.LAGGED,
}

# What a chan_sip/IAX2 peer status means for its single contact (PJSIP PeerStatus is
# endpoint-level and never touches a contact).
_PEER_TO_CONTACT = {
    PeerStatus.REGISTERED: ContactStatus.NON_QUALIFIED,
    PeerStatus.REACHABLE: ContactStatus.REACHABLE,
    PeerStatus.LAGGED: ContactStatus.REACHABLE,
    PeerStatus.UNREACHABLE: ContactStatus.UNREACHABLE,
    PeerStatus.UNREGISTERED: ContactStatus.REMOVED,
}

_DEVICE_STATE = {s.value: s for s in DeviceState}

_CONTACT_SCHEMES = sipuri.SIP_SCHEMES | {"iax2"}

_SURROGATE = re.compile("[\udc80-\udcff\ufffd]")
_SIPPEER_OK = re.compile(r"OK \((\d+) ms\)")


@dataclass(frozen=True, slots=True)
class ContactInfo:
    """What the node last said about one contact in a ContactList row or its details
    (enriches live events; ``expires_at_ms`` moving forward is how a refresh shows)."""

    user_agent: str | None = None
    expires_at_ms: int | None = None
    reg_server: str | None = None
    aor: str | None = None
    qualify_s: int | None = None
    call_id: str | None = None


@dataclass(frozen=True, slots=True)
class SipUri:
    """What a record keeps of a contact URI (see :class:`producers.sipuri.SipUri` for all of it);
    all None when the text is not a SIP URI."""

    host: str | None
    port: int | None
    transport: str | None


def parse_hostport(text: str) -> tuple[str | None, int | None]:
    """``'1.2.3.4:5060'`` / ``'[::1]:5060'`` / ``'host'`` → (host, port); junk → (None, None)."""
    text = text.strip()
    if not text or text == "-none-" or text == "(null)":
        return None, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_s = text.partition(":")
    else:  # bare IPv6 without brackets, or a bare host
        host, port_s = text, ""
    port = int(port_s) if port_s.isdigit() and 0 < int(port_s) < 65536 else None
    return (host or None), port


def parse_uri(uri: str) -> SipUri:
    """Host, port and transport of a contact URI (``sip:1001@1.2.3.4:5060;transport=tcp``).

    Total: text that is not a SIP URI by RFC 3261 (:func:`producers.sipuri.parse`) gives no
    host, and the record keeps the URI without an address. Surrounding blanks and one pair of
    ``<...>`` are dropped; a display name is refused (Asterisk sends bare URIs). The producer
    writes IAX2 peers' contacts as ``iax2:<peer>@<host>:<port>``, read the same way.
    """
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    try:
        parsed = sipuri.parse(text, schemes=_CONTACT_SCHEMES)
    except InvalidSipUri:
        return SipUri(None, None, None)
    return SipUri(parsed.host, parsed.port or None, parsed.transport)  # port 0: none, as parse_hostport


def event_time_ms(msg: Mapping[str, Any], now_ms: int) -> int:
    """Asterisk's ``Timestamp: <sec>.<usec>`` header in ms, else the producer clock."""
    ts = msg.get("Timestamp") or ""
    if ts:
        sec, _, frac = ts.partition(".")
        if sec.isdigit() and (not frac or frac.isdigit()):
            return int(sec) * 1000 + int((frac + "000")[:3])
    return now_ms


def _field(msg: Mapping[str, Any], name: str, event: str, required: bool = True) -> str:
    value = msg.get(name) or ""
    if isinstance(value, list):  # panoramisk turns a repeated header into a list
        raise MalformedAmiEvent(f"header {name} repeated", event, _headers(msg))
    if not value:
        if required:
            raise MalformedAmiEvent(f"missing header {name}", event, _headers(msg))
        return ""
    if len(value) > MAX_FIELD:
        raise MalformedAmiEvent(f"header {name} longer than {MAX_FIELD} characters", event, _headers(msg))
    if not value.isascii() and _SURROGATE.search(value):
        raise MalformedAmiEvent(f"header {name} is not valid UTF-8", event, _headers(msg))
    return value.strip()


def _headers(msg: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v)[:256] for k, v in msg.items()}


def _int(value: str) -> int | None:
    value = value.strip()
    if value.isdigit():
        return int(value)
    return None


def _endpoint(tech: str, resource: str, event: str, msg: Mapping[str, Any]) -> str:
    if not resource or "/" in resource:
        raise MalformedAmiEvent(f"bad endpoint name {resource!r}", event, _headers(msg))
    return f"{tech}/{resource}"


def contact_info(msg: Mapping[str, Any], node: str) -> ContactInfo:
    """The cacheable part of a ContactList row or a ContactStatusDetail (their spellings differ:
    ExpirationTime/RegExpire, CallId/CallID, ObjectName/AOR)."""
    expires = _int(msg.get("ExpirationTime") or msg.get("RegExpire") or "")
    object_name = msg.get("ObjectName") or ""
    aor = object_name.split(";@", 1)[0] if object_name else (msg.get("AOR") or "")
    return ContactInfo(
        user_agent=(msg.get("UserAgent") or "").strip()[:MAX_FIELD] or None,
        expires_at_ms=expires * 1000 if expires else None,
        reg_server=(msg.get("RegServer") or "").strip() or None,
        aor=aor.strip()[:MAX_FIELD] or None,
        qualify_s=_int(msg.get("QualifyFrequency") or ""),
        call_id=(msg.get("CallId") or msg.get("CallID") or "").strip()[:MAX_FIELD] or None,
    )


def contact_detail(
    msg: Mapping[str, Any], *, node: str, now_ms: int, epoch: int, seq: int, refresh: bool,
    source: Source = Source.LIVE,
) -> RegistrationEvent:
    """A ``ContactStatusDetail`` (``PJSIPShowEndpoint``) → a REFRESH of that contact (``refresh``:
    its expiration moved forward: a REGISTER renewed it) or its details (``CONTACT`` without a
    status: user agent, expiry, Call-ID, qualify frequency; these never create a contact).
    ``source``: LIVE when asked right after the node announced the REGISTER (a security event),
    SNAPSHOT when read from the node's contact list by the periodic scan (the refresh happened
    some time since the last look: the worker places it by its expiration).

    ``ip``/``port`` are the contact URI's, as for every other event (what Asterisk sends requests
    to); the REGISTER's source address (``ViaAddress``) is not part of the contract."""
    ev = "ContactStatusDetail"
    uri = _field(msg, "URI", ev)
    resource = _field(msg, "EndpointName", ev, required=False) or _field(msg, "AOR", ev)
    _field(msg, "UserAgent", ev, required=False)  # validates size / UTF-8
    _field(msg, "CallID", ev, required=False)
    info = contact_info(msg, node)
    parsed = parse_uri(uri)
    return RegistrationEvent(
        endpoint=_endpoint("PJSIP", resource, ev, msg),
        node=node,
        producer_epoch=epoch,
        seq=seq,
        event_time_ms=event_time_ms(msg, now_ms),
        kind=EventKind.REFRESH if refresh else EventKind.CONTACT,
        source=source,
        contact_uri=uri,
        aor=info.aor,
        ip=parsed.host,
        port=parsed.port,
        transport=parsed.transport,
        user_agent=info.user_agent,
        expires_at_ms=info.expires_at_ms,
        cause="refresh" if refresh else "details",
        call_id=info.call_id,
        qualify_frequency_s=info.qualify_s,
    )


def to_event(
    msg: Mapping[str, Any],
    *,
    node: str,
    now_ms: int,
    epoch: int = 0,
    seq: int = 0,
    source: Source = Source.LIVE,
    snapshot_id: str | None = None,
    contacts: Mapping[str, ContactInfo] | None = None,
    peer_uris: Mapping[str, str] | None = None,
    system_name: str | None = None,
) -> RegistrationEvent | None:
    """One AMI message → one RegistrationEvent, or None when it is not about a registration.

    ``system_name`` is Asterisk's own SystemName (what ContactList's RegServer holds; defaults
    to ``node``, which may be overridden by configuration). ``contacts`` maps contact URI → the last ContactList data of this node (user agent, expiry),
    ``peer_uris`` maps a chan_sip/IAX2 endpoint → its last known contact URI. Raises
    MalformedAmiEvent when the message is about an endpoint but cannot be trusted.
    """
    name = msg.get("Event") or ""
    handler = _HANDLERS.get(name)
    if handler is None:
        return None
    if name == "ContactList":
        own = system_name or node
        reg_server = msg.get("RegServer") or ""
        if reg_server and reg_server.strip() != own:
            return None  # a shared realtime ps_contacts table lists every node's contacts
    return handler(
        msg,
        node,
        event_time_ms(msg, now_ms),
        epoch,
        seq,
        source,
        snapshot_id,
        contacts or {},
        peer_uris or {},
    )


def _contact_status(msg: Mapping[str, Any], node: str, t: int, epoch: int, seq: int, source: Source,
                    snapshot_id: str | None, contacts: Mapping[str, ContactInfo],
                    peer_uris: Mapping[str, str]) -> RegistrationEvent:
    ev = "ContactStatus"
    uri = _field(msg, "URI", ev)
    status_text = _field(msg, "ContactStatus", ev)
    resource = _field(msg, "EndpointName", ev, required=False) or _field(msg, "AOR", ev)
    status = _CONTACT_STATUS.get(status_text.lower())
    if status is None:
        raise MalformedAmiEvent(f"unknown ContactStatus {status_text!r}", ev, _headers(msg))
    parsed = parse_uri(uri)
    info = contacts.get(uri)
    rtt = _int(msg.get("RoundtripUsec") or "") if status is ContactStatus.REACHABLE else None
    return RegistrationEvent(
        endpoint=_endpoint("PJSIP", resource, ev, msg),
        node=node,
        producer_epoch=epoch,
        seq=seq,
        event_time_ms=t,
        kind=EventKind.CONTACT,
        source=source,
        contact_uri=uri,
        aor=_field(msg, "AOR", ev, required=False) or (info.aor if info else None),
        contact_status=status,
        ip=parsed.host,
        port=parsed.port,
        transport=parsed.transport,
        user_agent=info.user_agent if info else None,
        rtt_us=rtt,
        expires_at_ms=info.expires_at_ms if info else None,
        reg_server=info.reg_server if info else None,
        snapshot_id=snapshot_id,
        call_id=info.call_id if info else None,
        qualify_frequency_s=info.qualify_s if info else None,
    )


def _contact_list(msg: Mapping[str, Any], node: str, t: int, epoch: int, seq: int, source: Source,
                  snapshot_id: str | None, contacts: Mapping[str, ContactInfo],
                  peer_uris: Mapping[str, str]) -> RegistrationEvent | None:
    ev = "ContactList"
    _field(msg, "RegServer", ev, required=False)  # validates size / UTF-8 (filtered in to_event)
    uri = _field(msg, "Uri", ev)
    resource = _field(msg, "Endpoint", ev)
    status_text = _field(msg, "Status", ev, required=False) or "Unknown"
    status = _CONTACT_STATUS.get(status_text.lower())
    if status is None or status is ContactStatus.REMOVED:
        raise MalformedAmiEvent(f"unknown contact Status {status_text!r}", ev, _headers(msg))
    _field(msg, "UserAgent", ev, required=False)  # validates size / UTF-8
    info = contact_info(msg, node)
    parsed = parse_uri(uri)
    rtt = _int(msg.get("RoundtripUsec") or "") if status is ContactStatus.REACHABLE else None
    return RegistrationEvent(
        endpoint=_endpoint("PJSIP", resource, ev, msg),
        node=node,
        producer_epoch=epoch,
        seq=seq,
        event_time_ms=t,
        kind=EventKind.CONTACT,
        source=source,
        contact_uri=uri,
        aor=info.aor,
        contact_status=status,
        ip=parsed.host,
        port=parsed.port,
        transport=parsed.transport,
        user_agent=info.user_agent,
        rtt_us=rtt,
        expires_at_ms=info.expires_at_ms,
        reg_server=info.reg_server,
        snapshot_id=snapshot_id,
        call_id=info.call_id,
        qualify_frequency_s=info.qualify_s,
    )


def _peer_status(msg: Mapping[str, Any], node: str, t: int, epoch: int, seq: int, source: Source,
                 snapshot_id: str | None, contacts: Mapping[str, ContactInfo],
                 peer_uris: Mapping[str, str]) -> RegistrationEvent:
    ev = "PeerStatus"
    peer = _field(msg, "Peer", ev)
    status_text = _field(msg, "PeerStatus", ev)
    status = _PEER_STATUS.get(status_text.lower())
    if status is None:
        raise MalformedAmiEvent(f"unknown PeerStatus {status_text!r}", ev, _headers(msg))
    tech, sep, resource = peer.partition("/")
    if not sep:
        tech, resource = _field(msg, "ChannelType", ev), peer
    tech = tech.upper() if tech.upper() in ENDPOINT_TECHS else tech
    endpoint = _endpoint(tech, resource, ev, msg)
    cause = _field(msg, "Cause", ev, required=False) or None
    time_ms = _int(_field(msg, "Time", ev, required=False))
    rtt = time_ms * 1000 if time_ms is not None else None
    if tech == "PJSIP":
        # Endpoint-level: says nothing about which contact (PJSIP has ContactStatus for that).
        return RegistrationEvent(
            endpoint=endpoint, node=node, producer_epoch=epoch, seq=seq, event_time_ms=t,
            kind=EventKind.PEER, source=source, peer_status=status, rtt_us=rtt, cause=cause,
            snapshot_id=snapshot_id,
        )
    # chan_sip / IAX2: one contact per peer, its address only on Registered.
    host, port = parse_hostport(_field(msg, "Address", ev, required=False))
    port = _int(msg.get("Port") or "") or port
    scheme = "iax2" if tech == "IAX2" else "sip"
    uri: str | None
    if host is not None:
        hostpart = f"[{host}]" if ":" in host else host
        uri = f"{scheme}:{resource}@{hostpart}" + (f":{port}" if port else "")
    else:
        uri = peer_uris.get(endpoint)
    contact_status = _PEER_TO_CONTACT.get(status) if uri else None
    if uri and host is None:
        parsed = parse_uri(uri)
        host, port = parsed.host, parsed.port
    return RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=epoch, seq=seq, event_time_ms=t,
        kind=EventKind.CONTACT if contact_status else EventKind.PEER, source=source,
        contact_uri=uri if contact_status else None, aor=resource if contact_status else None,
        contact_status=contact_status, peer_status=status,
        ip=host if contact_status else None, port=port if contact_status else None,
        rtt_us=rtt, cause=cause, snapshot_id=snapshot_id,
    )


def _peer_entry(msg: Mapping[str, Any], node: str, t: int, epoch: int, seq: int, source: Source,
                snapshot_id: str | None, contacts: Mapping[str, ContactInfo],
                peer_uris: Mapping[str, str]) -> RegistrationEvent | None:
    ev = "PeerEntry"
    tech = (_field(msg, "Channeltype", ev, required=False) or "SIP").upper()
    resource = _field(msg, "ObjectName", ev)
    if (msg.get("Dynamic") or "").lower() not in ("yes", "true", "1"):
        return None  # a static peer is configuration, not a registration
    host, _ = parse_hostport(_field(msg, "IPaddress", ev, required=False))
    port = _int(msg.get("IPport") or "")
    if host is None or not port:
        return None  # not registered right now
    status_text = _field(msg, "Status", ev, required=False)
    m = _SIPPEER_OK.match(status_text)
    rtt = int(m.group(1)) * 1000 if m else None
    upper = status_text.upper()
    if m or upper.startswith("LAGGED"):
        cstatus = ContactStatus.REACHABLE
    elif upper.startswith("UNREACHABLE"):
        cstatus = ContactStatus.UNREACHABLE
    else:  # UNKNOWN, Unmonitored
        cstatus = ContactStatus.NON_QUALIFIED
    scheme = "iax2" if tech == "IAX2" else "sip"
    hostpart = f"[{host}]" if ":" in host else host
    return RegistrationEvent(
        endpoint=_endpoint(tech, resource, ev, msg), node=node, producer_epoch=epoch, seq=seq,
        event_time_ms=t, kind=EventKind.CONTACT, source=source,
        contact_uri=f"{scheme}:{resource}@{hostpart}:{port}", aor=resource, contact_status=cstatus,
        ip=host, port=port, rtt_us=rtt, snapshot_id=snapshot_id,
    )


def _device_state(msg: Mapping[str, Any], node: str, t: int, epoch: int, seq: int, source: Source,
                  snapshot_id: str | None, contacts: Mapping[str, ContactInfo],
                  peer_uris: Mapping[str, str]) -> RegistrationEvent | None:
    ev = "DeviceStateChange"
    device = msg.get("Device") or ""
    tech, sep, resource = device.partition("/") if isinstance(device, str) else ("", "", "")
    if tech not in ENDPOINT_TECHS:
        if device:
            return None  # Queue:, Custom:, Local/, DAHDI/ ... are not registrations
        _field(msg, "Device", ev)  # raises: missing Device
    device = _field(msg, "Device", ev)
    state_text = _field(msg, "State", ev)
    state = _DEVICE_STATE.get(state_text.upper())
    if state is None:
        raise MalformedAmiEvent(f"unknown device State {state_text!r}", ev, _headers(msg))
    return RegistrationEvent(
        endpoint=_endpoint(tech, resource, ev, msg), node=node, producer_epoch=epoch, seq=seq,
        event_time_ms=t, kind=EventKind.DEVICE, source=source, device_state=state,
        snapshot_id=snapshot_id,
    )


_HANDLERS: dict[str, Any] = {
    "ContactStatus": _contact_status,
    "ContactList": _contact_list,
    "PeerStatus": _peer_status,
    "PeerEntry": _peer_entry,
    "DeviceStateChange": _device_state,
}


def to_node_status(
    msg: Mapping[str, Any], *, node: str, now_ms: int, epoch: int = 0, seq: int = 0
) -> NodeStatus | None:
    """``FullyBooted`` → BOOTED (boot time from Uptime), ``Shutdown`` → SHUTDOWN, else None."""
    name = msg.get("Event") or ""
    t = event_time_ms(msg, now_ms)
    if name == "FullyBooted":
        uptime = _int(msg.get("Uptime") or "")
        reload_ = _int(msg.get("LastReload") or "")
        return NodeStatus(
            node=node, producer_epoch=epoch, seq=seq, event_time_ms=t, kind=NodeEventKind.BOOTED,
            boot_time_ms=t - uptime * 1000 if uptime is not None else None,
            reload_time_ms=t - reload_ * 1000 if reload_ is not None else None,
        )
    if name == "Shutdown":
        return NodeStatus(node=node, producer_epoch=epoch, seq=seq, event_time_ms=t,
                          kind=NodeEventKind.SHUTDOWN)
    return None


def reason_kind(reason: str) -> str:
    """A short metrics label for a MalformedAmiEvent reason."""
    if reason.startswith("missing"):
        return "missing_header"
    if reason.startswith("unknown"):
        return "unknown_value"
    if "longer than" in reason:
        return "oversize"
    if "UTF-8" in reason:
        return "bad_utf8"
    if "repeated" in reason:
        return "repeated_header"
    if reason.startswith("bad endpoint"):
        return "bad_endpoint"
    return "unparseable"
