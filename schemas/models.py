"""Frozen dataclass mirrors of the ``.avsc`` files: the only shapes astreg code passes around.

The ``.avsc`` files are the truth; ``tests/unit/test_schemas.py`` asserts that the field lists
here equal theirs. Times are UTC epoch milliseconds (int), never datetimes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "EventKind",
    "Source",
    "ContactStatus",
    "PeerStatus",
    "DeviceState",
    "NodeEventKind",
    "LinkState",
    "LocationStatus",
    "RegistrationEvent",
    "NodeStatus",
    "Contact",
    "EndpointLocation",
    "split_endpoint",
]


class _AvroEnum(enum.StrEnum):
    """An Avro enum: the value is the symbol; unknown symbols read as the default (UNKNOWN)."""

    @classmethod
    def _missing_(cls, value: object) -> _AvroEnum:
        return cls["UNKNOWN"]


class EventKind(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    CONTACT = "CONTACT"
    PEER = "PEER"
    DEVICE = "DEVICE"
    EXPIRE = "EXPIRE"
    STALE = "STALE"
    RECONCILE = "RECONCILE"
    REFRESH = "REFRESH"


class Source(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    LIVE = "LIVE"
    SNAPSHOT = "SNAPSHOT"
    SYNTHETIC = "SYNTHETIC"


class ContactStatus(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    NON_QUALIFIED = "NON_QUALIFIED"
    REACHABLE = "REACHABLE"
    UNREACHABLE = "UNREACHABLE"
    REMOVED = "REMOVED"


class PeerStatus(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    REACHABLE = "REACHABLE"
    UNREACHABLE = "UNREACHABLE"
    REGISTERED = "REGISTERED"
    UNREGISTERED = "UNREGISTERED"
    REJECTED = "REJECTED"
    LAGGED = "LAGGED"


class DeviceState(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    NOT_INUSE = "NOT_INUSE"
    INUSE = "INUSE"
    BUSY = "BUSY"
    INVALID = "INVALID"
    UNAVAILABLE = "UNAVAILABLE"
    RINGING = "RINGING"
    RINGINUSE = "RINGINUSE"
    ONHOLD = "ONHOLD"


class NodeEventKind(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    HEARTBEAT = "HEARTBEAT"
    AMI_UP = "AMI_UP"
    AMI_DOWN = "AMI_DOWN"
    BOOTED = "BOOTED"
    SHUTDOWN = "SHUTDOWN"
    SNAPSHOT_BEGIN = "SNAPSHOT_BEGIN"
    SNAPSHOT_COMPLETE = "SNAPSHOT_COMPLETE"
    STOPPED = "STOPPED"


class LinkState(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    UP = "UP"
    DOWN = "DOWN"


class LocationStatus(_AvroEnum):
    UNKNOWN = "UNKNOWN"
    REGISTERED = "REGISTERED"
    UNREACHABLE = "UNREACHABLE"
    STALE = "STALE"


def split_endpoint(endpoint: str) -> tuple[str, str]:
    """``'PJSIP/1001'`` → ``('PJSIP', '1001')``; a bare name has technology ``''``."""
    tech, sep, resource = endpoint.partition("/")
    if not sep:
        return "", endpoint
    return tech, resource


@dataclass(frozen=True, slots=True)
class RegistrationEvent:
    """One observation about one endpoint on one node (see registration_event.avsc)."""

    endpoint: str
    node: str
    producer_epoch: int
    seq: int
    event_time_ms: int
    kind: EventKind = EventKind.UNKNOWN
    source: Source = Source.UNKNOWN
    contact_uri: str | None = None
    aor: str | None = None
    contact_status: ContactStatus | None = None
    peer_status: PeerStatus | None = None
    device_state: DeviceState | None = None
    ip: str | None = None
    port: int | None = None
    transport: str | None = None
    user_agent: str | None = None
    rtt_us: int | None = None
    expires_at_ms: int | None = None
    reg_server: str | None = None
    cause: str | None = None
    snapshot_id: str | None = None
    call_id: str | None = None
    qualify_frequency_s: int | None = None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """What a producer says about its node (see node_status.avsc)."""

    node: str
    producer_epoch: int
    seq: int
    event_time_ms: int
    kind: NodeEventKind = NodeEventKind.UNKNOWN
    ami_link: LinkState = LinkState.UNKNOWN
    heartbeat_interval_ms: int | None = None
    asterisk_version: str | None = None
    ami_version: str | None = None
    boot_time_ms: int | None = None
    reload_time_ms: int | None = None
    snapshot_id: str | None = None
    snapshot_begin_seq: int | None = None
    snapshot_contacts: int | None = None
    snapshot_devices: int | None = None
    last_snapshot_id: str | None = None
    last_snapshot_begin_seq: int | None = None
    last_snapshot_at_ms: int | None = None
    contacts: int | None = None
    events_sent: int | None = None
    buffered: int | None = None
    producer: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    """One registered contact of an endpoint on one node."""

    node: str
    uri: str
    registered_at_ms: int
    updated_at_ms: int
    aor: str | None = None
    status: ContactStatus = ContactStatus.UNKNOWN
    ip: str | None = None
    port: int | None = None
    transport: str | None = None
    user_agent: str | None = None
    rtt_us: int | None = None
    expires_at_ms: int | None = None
    stale: bool = False
    primary: bool = False


@dataclass(frozen=True, slots=True)
class EndpointLocation:
    """The materialized row of an endpoint (see endpoint_location.avsc)."""

    endpoint: str
    technology: str
    resource: str
    updated_at_ms: int
    primary_node: str | None = None
    status: LocationStatus = LocationStatus.UNKNOWN
    device_state: DeviceState = DeviceState.UNKNOWN
    contact_uri: str | None = None
    ip: str | None = None
    port: int | None = None
    transport: str | None = None
    user_agent: str | None = None
    rtt_us: int | None = None
    expires_at_ms: int | None = None
    contacts: tuple[Contact, ...] = field(default_factory=tuple)
    nodes: tuple[str, ...] = field(default_factory=tuple)
    last_event_time_ms: int | None = None
    version: int = 0
