"""The merge rules of the table (SPEC "Semantics of the table"), pure: ``apply(row, event, offset)``.

A :class:`Row` is everything the worker keeps about one endpoint: its contacts (identity =
(node, URI)) with the partition offset of the event that created each one, the last
``(epoch, seq)`` applied from every node, and the device state each node reported. ``apply``
returns a new row (or the same object when the event changes nothing) and never does I/O;
``location_of`` turns a row into the published :class:`EndpointLocation` (``None`` = tombstone).
Synthetic events (``STALE``, ``EXPIRE``, ``RECONCILE``) are conditional on the ``(epoch, seq)``
they name, so replaying them is harmless. See docs/stream.md for each decision.

The primary contact (SPEC item 3) is the routable one with the latest *registration or refresh*
in partition order: a contact's position (``reg_offset``) is the offset of the event that created
it and moves to the offset of every ``REFRESH`` of it. Two exceptions, both decided here:

- a contact its node qualifies, listed ``NonQualified``/``Unknown`` where it was qualified before
  (the node restarted and reloaded it from its AstDB) waits for its first ``Reachable``: it ranks
  below the routable contacts of other nodes (``awaiting_qualify``);
- a contact learned late (first seen in a snapshot: its registration happened during an AMI or
  Kafka outage) is placed among the other nodes' contacts by their expiration times, and every
  snapshot row checks a known contact's place the same way (events buffered in an outage can
  reach the log in the wrong order across nodes). Expirations are compared only when they differ
  by more than the maximum clock skew (``skew_ms``, default 2 s); within it, partition order
  decides. This assumes the nodes of a cluster give a phone the same Expires (they serve the
  same phones with the same configuration).
"""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from typing import Any

import msgpack

from schemas.fastdc import maker, replacer
from schemas.models import (
    Contact,
    ContactStatus,
    DeviceState,
    EndpointLocation,
    EventKind,
    LocationStatus,
    PeerStatus,
    RegistrationEvent,
    Source,
    split_endpoint,
)

__all__ = [
    "ContactState", "Row", "Outcome", "apply", "decide", "location_of", "visible_key", "durable_key", "durable_rest",
    "empty_row", "DEFAULT_SKEW_MS",
]

Seq = tuple[int, int]  # (producer_epoch, seq)

DEFAULT_SKEW_MS = 2_000  # node clocks further apart than this are compared (late registrations)

# Statuses a contact can route on; UNREACHABLE (and stale) only when nothing else is left.
_ROUTABLE = frozenset({ContactStatus.REACHABLE, ContactStatus.NON_QUALIFIED, ContactStatus.UNKNOWN})
_UNQUALIFIED = frozenset({ContactStatus.NON_QUALIFIED, ContactStatus.UNKNOWN})
_PEER_UP = frozenset({PeerStatus.REGISTERED})
_PEER_GONE = frozenset({PeerStatus.UNREGISTERED, PeerStatus.REJECTED})
_PEER_STATUS = {
    PeerStatus.REACHABLE: ContactStatus.REACHABLE,
    PeerStatus.LAGGED: ContactStatus.REACHABLE,
    PeerStatus.UNREACHABLE: ContactStatus.UNREACHABLE,
    PeerStatus.REGISTERED: ContactStatus.NON_QUALIFIED,
}


@dataclass(frozen=True, slots=True)
class ContactState:
    """One contact with its bookkeeping: registration position (primary order), last confirmation."""

    node: str
    uri: str
    reg_offset: int
    registered_at_ms: int
    updated_at_ms: int
    confirmed: Seq
    status: ContactStatus = ContactStatus.UNKNOWN
    aor: str | None = None
    ip: str | None = None
    port: int | None = None
    transport: str | None = None
    user_agent: str | None = None
    rtt_us: int | None = None
    expires_at_ms: int | None = None
    stale: bool = False
    snapshot_seen: Seq = (0, 0)  # last confirmation by a snapshot row: what reconciliation needs
    qualify_s: int | None = None  # the node's QualifyFrequency for it (0: not qualified; None: unknown)
    awaiting_qualify: bool = False  # qualified, reloaded unqualified, no Reachable since
    late: bool = False  # its registration was learned from a snapshot, not seen live

    @property
    def ident(self) -> tuple[str, str]:
        return (self.node, self.uri)

    def rank(self) -> tuple[int, int, str, str]:
        """Primary order: tier first (3 routable, 2 awaiting its first qualify after a reload,
        1 unreachable, 0 stale), then the latest registration or refresh, then (node, uri)."""
        if self.stale:
            tier = 0
        elif self.status not in _ROUTABLE:
            tier = 1
        else:
            tier = 2 if self.awaiting_qualify else 3
        return (tier, self.reg_offset, self.node, self.uri)


@dataclass(frozen=True, slots=True)
class Row:
    """The table value of one endpoint (never a bare dict)."""

    endpoint: str
    contacts: tuple[ContactState, ...] = ()
    last: tuple[tuple[str, int, int], ...] = ()  # (node, epoch, seq), sorted by node
    devices: tuple[tuple[str, DeviceState], ...] = ()  # (node, state), sorted by node
    version: int = 0
    updated_at_ms: int = 0
    last_event_time_ms: int | None = None
    # Highest partition offset applied to this row. A record at or below it was already applied
    # (the worker crashed after writing the table, before committing the source offset): replays
    # change nothing and are not "impossible" orders. Wipe the worker state when the registrations
    # topic is recreated (offsets restart at 0).
    offset: int = -1

    def last_of(self, node: str) -> Seq | None:
        for n, e, s in self.last:
            if n == node:
                return (e, s)
        return None

    def device_of(self, node: str | None) -> DeviceState | None:
        for n, d in self.devices:
            if n == node:
                return d
        return None

    def primary(self) -> ContactState | None:
        return max(self.contacts, key=ContactState.rank, default=None)

    def nodes_with(self) -> set[str]:
        return {c.node for c in self.contacts}

    # ------------------------------------------------------------ serialization (table codec)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "e": self.endpoint,
                "c": [_contact_to_list(c) for c in self.contacts],
                "l": [list(x) for x in self.last],
                "d": [[n, d.value] for n, d in self.devices],
                "v": self.version,
                "u": self.updated_at_ms,
                "t": self.last_event_time_ms,
                "o": self.offset,
            },
            separators=(",", ":"),
        ).encode()

    def to_bytes(self) -> bytes:
        """Compact binary form for the table and its changelog (msgpack of positional lists)."""
        return _PACK(
            (
                ROW_FORMAT,
                self.endpoint,
                [_contact_to_list(c) for c in self.contacts],
                self.last,
                [(n, d.value) for n, d in self.devices],
                self.version,
                self.updated_at_ms,
                self.last_event_time_ms,
                self.offset,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Row:
        """Read :meth:`to_bytes` output, or the older JSON form (changelogs written before)."""
        if data[:1] == b"{":
            return cls.from_json(data)
        fmt, endpoint, contacts, last, devices, version, updated, last_time, *rest = msgpack.unpackb(
            data, use_list=False)
        if fmt not in _READABLE_FORMATS:
            raise ValueError(f"unknown row format {fmt!r} (this worker reads {sorted(_READABLE_FORMATS)})")
        return _new_row(
            endpoint=endpoint,
            contacts=tuple(_contact_from_list(x) for x in contacts),
            last=last,
            devices=tuple((n, DeviceState(d)) for n, d in devices),
            version=version,
            updated_at_ms=updated,
            last_event_time_ms=last_time,
            offset=rest[0] if rest else -1,
        )

    @classmethod
    def from_json(cls, data: bytes) -> Row:
        o = json.loads(data)
        return cls(
            endpoint=o["e"],
            contacts=tuple(_contact_from_list(x) for x in o["c"]),
            last=tuple((n, e, s) for n, e, s in o["l"]),
            devices=tuple((n, DeviceState(d)) for n, d in o["d"]),
            version=o["v"],
            updated_at_ms=o["u"],
            last_event_time_ms=o["t"],
            offset=o.get("o", -1),
        )


# Rows and contacts are rebuilt several times per event: construct them without the frozen
# dataclass's per-field object.__setattr__ (schemas/fastdc.py; same objects, ~3x faster).
_new_row = maker(Row)
_rep_row = replacer(Row)
_new_contact = maker(ContactState)
_rep_contact = replacer(ContactState)

ROW_FORMAT = 2  # first element of the binary form; bump when the layout changes
# Format 1 rows (16 contact fields, before qualify_s / awaiting_qualify / late) are still read:
# a worker upgraded in place reads its old table and changelog. An older worker refuses format 2
# rows with a clear error instead of misreading them.
_READABLE_FORMATS = frozenset({1, 2})
_PACK = msgpack.Packer(use_bin_type=True).pack

_CFIELDS = (
    "node", "uri", "reg_offset", "registered_at_ms", "updated_at_ms", "confirmed", "status", "aor",
    "ip", "port", "transport", "user_agent", "rtt_us", "expires_at_ms", "stale", "snapshot_seen",
    "qualify_s", "awaiting_qualify", "late",
)


_contact_values = operator.attrgetter(*_CFIELDS)  # one C call for all 19 fields
_STATUS = {m.value: m for m in ContactStatus}  # an Enum call costs ~1 µs, a dict lookup ~50 ns


def _contact_to_list(c: ContactState) -> list[Any]:
    out: list[Any] = list(_contact_values(c))
    out[5] = list(c.confirmed)
    out[6] = c.status.value
    out[15] = list(c.snapshot_seen)
    return out


def _contact_from_list(x: list[Any] | tuple[Any, ...]) -> ContactState:
    (node, uri, reg_offset, registered, updated, confirmed, status, aor, ip, port, transport, ua, rtt, expires,
     stale, snap, *rest) = x
    qualify_s, awaiting, late = rest if rest else (None, False, False)  # format 1: 16 fields
    st = _STATUS.get(status)
    return _new_contact(node, uri, reg_offset, registered, updated, tuple(confirmed),
                        ContactStatus(status) if st is None else st, aor, ip,
                        port, transport, ua, rtt, expires, stale, tuple(snap), qualify_s, awaiting, late)


def empty_row(endpoint: str) -> Row:
    return Row(endpoint=endpoint)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did: the new row, and why nothing changed when it did not."""

    row: Row
    applied: bool
    reason: str = "applied"


_outcome = maker(Outcome)


def apply(row: Row | None, event: RegistrationEvent, offset: int, *, now_ms: int | None = None,
          skew_ms: int = DEFAULT_SKEW_MS, current_epoch: int | None = None) -> Row:
    """The row after ``event`` (at partition ``offset``); the same object when nothing changed."""
    return decide(row, event, offset, now_ms=now_ms, skew_ms=skew_ms, current_epoch=current_epoch).row


def decide(row: Row | None, event: RegistrationEvent, offset: int, *, now_ms: int | None = None,
           skew_ms: int = DEFAULT_SKEW_MS, current_epoch: int | None = None) -> Outcome:
    """Like :func:`apply`, also saying why an event was ignored (counted in metrics).

    ``skew_ms``: the largest difference between two nodes' clocks that is not trusted to order
    registrations learned late (SPEC item 3). ``current_epoch``: the producer epoch the event's
    node announced last on the nodes topic (None: unknown). A snapshot row of that epoch is
    the node's own word: stamps stored from an epoch the node never announced (ahead of its
    current one) do not outrank it, and that node's contacts confirmed only by such an epoch go."""
    base = row if row is not None else empty_row(event.endpoint)
    now = event.event_time_ms if now_ms is None else now_ms
    if offset <= base.offset:
        return _outcome(base, False, "replay")
    if current_epoch is not None and event.source is Source.SNAPSHOT and event.producer_epoch == current_epoch:
        last = base.last_of(event.node)
        if last is not None and last[0] > current_epoch:
            return _void_then_decide(base, event, offset, now, skew_ms, current_epoch)
    out = _decide(base, event, offset, now, skew_ms)
    if out.row is base or out.row.offset == offset:
        return out  # _decide stamps the offset on every row it builds
    return _outcome(_rep_row(out.row, offset=offset), out.applied, out.reason)


def _void_then_decide(base: Row, event: RegistrationEvent, offset: int, now: int, skew_ms: int,
                      current: int) -> Outcome:
    """Forget what an epoch beyond the node's current one left in the row, then apply ``event``."""
    node = event.node
    voided = _rep_row(
        base,
        contacts=tuple(c for c in base.contacts if c.node != node or c.confirmed[0] <= current),
        last=tuple(x for x in base.last if x[0] != node),
    )
    out = _decide(voided, event, offset, now, skew_ms)
    new = out.row if out.row.offset == offset else _rep_row(out.row, offset=offset)
    return _outcome(_stamp_version(base, new, now), True, "replaced_unannounced_epoch")


def _decide(base: Row, event: RegistrationEvent, offset: int, now: int, skew_ms: int) -> Outcome:
    if event.source is Source.SYNTHETIC or event.kind in (EventKind.STALE, EventKind.EXPIRE, EventKind.RECONCILE):
        return _synthetic(base, event, offset, now)
    stamp = (event.producer_epoch, event.seq)
    last = base.last_of(event.node)
    if last is not None and stamp <= last:
        # Equal: a duplicate (producer retry, replay). Lower inside one epoch: impossible from
        # one producer process (the agent dead-letters it). Older epoch: a previous process.
        if stamp == last:
            reason = "duplicate"
        elif stamp[0] == last[0]:
            reason = "seq_backwards"
        else:
            reason = "old_epoch"
        return _outcome(base, False, reason)
    contacts = _contacts_after(base, event, offset, stamp, now, skew_ms)
    devices = base.devices
    if event.kind is EventKind.DEVICE and event.device_state is not None:
        devices = _set_pair(base.devices, event.node, event.device_state)
    if contacts is None and devices is base.devices:
        reason = "unusable" if event.kind not in _OBSERVED else "no_change"
        new = _rep_row(base, last=_set_last(base.last, event.node, stamp), last_event_time_ms=event.event_time_ms,
                       offset=offset)
        return _outcome(new, False, reason)
    new = _rep_row(
        base,
        contacts=base.contacts if contacts is None else contacts,
        devices=devices,
        last=_set_last(base.last, event.node, stamp),
        last_event_time_ms=event.event_time_ms,
        offset=offset,
    )
    return _outcome(_stamp_version(base, new, now), True)


_OBSERVED = frozenset({EventKind.CONTACT, EventKind.PEER, EventKind.DEVICE, EventKind.REFRESH})


def _contacts_after(
    row: Row, ev: RegistrationEvent, offset: int, stamp: Seq, now: int, skew_ms: int = DEFAULT_SKEW_MS
) -> tuple[ContactState, ...] | None:
    """The contacts after a live/snapshot event, or None when they do not change."""
    if ev.kind is EventKind.CONTACT or ev.kind is EventKind.REFRESH:
        if not ev.contact_uri:
            return None
        if ev.contact_status is ContactStatus.REMOVED:
            return _remove(row.contacts, lambda c: c.node == ev.node and c.uri == ev.contact_uri)
        if ev.kind is EventKind.REFRESH or ev.contact_status is None:
            # A refresh or the node's details of a contact (user agent, expiry, Call-ID) never
            # create one: an answer that crossed the contact's removal must not bring it back;
            # a contact the table lost comes back with the next snapshot.
            if not any(c.node == ev.node and c.uri == ev.contact_uri for c in row.contacts):
                return None
        return _upsert(row.contacts, ev, ev.contact_uri, ev.contact_status, offset, stamp, now, skew_ms)
    if ev.kind is EventKind.PEER and ev.peer_status is not None:
        tech, _ = split_endpoint(ev.endpoint)
        if tech.upper() == "PJSIP":
            # PJSIP's PeerStatus is per endpoint and only Reachable/Unreachable; ContactStatus
            # carries the same news per contact, so the peer event would only duplicate it.
            return None
        uri = ev.contact_uri or (f"{ev.ip}:{ev.port}" if ev.ip else ev.endpoint)
        if ev.peer_status in _PEER_GONE:
            return _remove(row.contacts, lambda c: c.node == ev.node)
        status = _PEER_STATUS.get(ev.peer_status)
        if status is None:
            return None
        if ev.peer_status in _PEER_UP:
            # chan_sip has one contact per peer and node: a new address replaces the old one.
            others = tuple(c for c in row.contacts if c.node != ev.node or c.uri == uri)
            base = _rep_row(row, contacts=others)
            return _upsert(base.contacts, ev, uri, status, offset, stamp, now, skew_ms) or others
        mine = [c for c in row.contacts if c.node == ev.node]
        if not mine:
            return None
        return _upsert(row.contacts, ev, mine[0].uri, status, offset, stamp, now, skew_ms)
    return None


def _upsert(
    contacts: tuple[ContactState, ...],
    ev: RegistrationEvent,
    uri: str,
    status: ContactStatus | None,
    offset: int,
    stamp: Seq,
    now: int,
    skew_ms: int = DEFAULT_SKEW_MS,
) -> tuple[ContactState, ...] | None:
    old = next((c for c in contacts if c.node == ev.node and c.uri == uri), None)
    st = status or (old.status if old else ContactStatus.UNKNOWN)
    snapshot = ev.source is Source.SNAPSHOT
    snap = stamp if snapshot else (old.snapshot_seen if old else (0, 0))
    qualify_s = ev.qualify_frequency_s if ev.qualify_frequency_s is not None else (old.qualify_s if old else None)
    expires = ev.expires_at_ms if ev.expires_at_ms is not None else (old.expires_at_ms if old else None)
    if old is None:
        late = snapshot
        position = _late_position(contacts, ev.node, expires, offset, skew_ms) if late else offset
        new = _new_contact(
            node=ev.node, uri=uri, reg_offset=position, registered_at_ms=ev.event_time_ms,
            updated_at_ms=now, confirmed=stamp, status=st, aor=ev.aor, ip=ev.ip, port=ev.port,
            transport=ev.transport, user_agent=ev.user_agent, rtt_us=ev.rtt_us,
            expires_at_ms=expires, snapshot_seen=snap, qualify_s=qualify_s,
            awaiting_qualify=snapshot and bool(qualify_s) and st in _UNQUALIFIED, late=late,
        )
        return (*contacts, new)
    position, registered_at, late = old.reg_offset, old.registered_at_ms, old.late
    if ev.kind is EventKind.REFRESH and not snapshot:
        # A REGISTER the node accepted, seen live: the contact is as recent as this event, unless
        # another node registered the phone later than it by more than the skew (event times)
        # and that reached the log first: the producer publishes a refresh once the node answered
        # its question about the contact, which a burst of questions can delay by seconds.
        position, registered_at, late = offset, ev.event_time_ms, False
        after = [c.reg_offset for c in contacts if c.node != ev.node and not c.late
                 and c.registered_at_ms > ev.event_time_ms + skew_ms and c.reg_offset < offset]
        if after:
            position = min(after) - 1
    elif ev.kind is EventKind.REFRESH:
        # A refresh read from the node's contact list (its expiration moved since the producer
        # last looked): it happened some time before this record, and only its expiration says
        # when: placed like a registration learned late.
        others = tuple(c for c in contacts if c is not old)
        position = offset if expires is None else _placed(others, ev.node, offset, expires, offset, skew_ms)
        registered_at, late = ev.event_time_ms, True
    elif expires is not None and (snapshot or status is None) and any(c.node != ev.node for c in contacts):
        # A snapshot (after an AMI or Kafka outage, or periodic) says when the node expires it:
        # where partition order contradicts the nodes' expirations beyond the skew (an event
        # buffered in an outage, a refresh nobody announced), the expirations decide. The node's
        # details of a live contact (its expiration, known a moment after its ContactStatus) are
        # checked the same way against the contacts learned late, placed before it was known.
        others = tuple(c for c in contacts if c is not old and (snapshot or old.late or c.late))
        moved = _placed(others, ev.node, position, expires, offset, skew_ms)
        if moved != position:
            position, late = moved, snapshot or old.late
    if st is ContactStatus.REACHABLE or ev.kind is EventKind.REFRESH:
        awaiting = False
    elif st in _UNQUALIFIED and qualify_s and (old.awaiting_qualify or old.status not in _UNQUALIFIED):
        awaiting = True  # qualified before, unqualified now: reloaded by a restarted node
    else:
        awaiting = old.awaiting_qualify and st in _UNQUALIFIED
    new = _rep_contact(
        old,
        reg_offset=position,
        registered_at_ms=registered_at,
        status=st,
        confirmed=stamp,
        snapshot_seen=snap,
        stale=False,
        updated_at_ms=now,
        aor=ev.aor or old.aor,
        ip=ev.ip or old.ip,
        port=ev.port if ev.port is not None else old.port,
        transport=ev.transport or old.transport,
        user_agent=ev.user_agent or old.user_agent,
        rtt_us=ev.rtt_us if ev.rtt_us is not None else old.rtt_us,
        expires_at_ms=expires,
        qualify_s=qualify_s,
        awaiting_qualify=awaiting,
        late=late,
    )
    return tuple(new if c is old else c for c in contacts)


def _placed(others: tuple[ContactState, ...], node: str, position: int, expires: int, offset: int,
            skew_ms: int) -> int:
    """A known contact's position, checked against the other nodes' expirations: kept when it is
    below every contact expiring later by more than ``skew_ms`` and above every one expiring
    earlier by more than that; else placed again (:func:`_late_position`)."""
    later = [c.reg_offset for c in others if c.node != node and c.expires_at_ms is not None
             and expires < c.expires_at_ms - skew_ms]
    earlier = [c.reg_offset for c in others if c.node != node and c.expires_at_ms is not None
               and expires > c.expires_at_ms + skew_ms]
    if all(position < p for p in later) and all(position > p for p in earlier):
        return position
    return _late_position(others, node, expires, offset, skew_ms)


def _late_position(others: tuple[ContactState, ...], node: str, expires: int | None, offset: int,
                   skew_ms: int) -> int:
    """Where a registration learned late goes in the primary order (its ``reg_offset``).

    Its partition offset, unless another node holds a contact of the endpoint whose expiration is
    later by more than ``skew_ms`` (same phone, same Expires: registered later there): then just
    below the earliest such contact, and still above those whose expiration is earlier by more
    than ``skew_ms``; ties left are broken by (node, uri) like every rank."""
    if expires is None:
        return offset
    below = [c.reg_offset for c in others if c.node != node and c.expires_at_ms is not None
             and expires < c.expires_at_ms - skew_ms]
    if not below:
        return offset
    return min(below) - 1


def _remove(contacts: tuple[ContactState, ...], gone: Any) -> tuple[ContactState, ...] | None:
    kept = tuple(c for c in contacts if not gone(c))
    return None if len(kept) == len(contacts) else kept


def _synthetic(row: Row, ev: RegistrationEvent, offset: int, now: int) -> Outcome:
    """STALE / EXPIRE / RECONCILE: conditional on the (epoch, seq) they are based on."""
    basis = (ev.producer_epoch, ev.seq)

    def not_confirmed_since(c: ContactState) -> bool:
        return c.node == ev.node and c.confirmed < basis

    def not_newer(c: ContactState) -> bool:
        return c.node == ev.node and c.confirmed <= basis

    if ev.kind is EventKind.RECONCILE:
        contacts = _remove(row.contacts, not_confirmed_since)
    elif ev.kind is EventKind.EXPIRE:
        uri = ev.contact_uri
        contacts = _remove(row.contacts, lambda c: not_newer(c) and (uri is None or c.uri == uri))
    elif ev.kind is EventKind.STALE:
        marked = tuple(_rep_contact(c, stale=True) if not_newer(c) and not c.stale else c for c in row.contacts)
        contacts = marked if any(a is not b for a, b in zip(marked, row.contacts, strict=True)) else None
    else:
        return _outcome(row, False, "unusable")
    if contacts is None:
        return _outcome(row, False, "no_change")
    new = _rep_row(row, contacts=contacts, offset=offset)
    return _outcome(_stamp_version(row, new, now), True)


def _set_last(last: tuple[tuple[str, int, int], ...], node: str, stamp: Seq) -> tuple[tuple[str, int, int], ...]:
    entry = (node, stamp[0], stamp[1])
    for i, x in enumerate(last):  # sorted by node: replace in place, or insert before the first larger
        if x[0] == node:
            return (*last[:i], entry, *last[i + 1:])
        if x[0] > node:
            return (*last[:i], entry, *last[i:])
    return (*last, entry)


def _set_pair(pairs: tuple[tuple[str, DeviceState], ...], node: str, state: DeviceState) -> tuple[tuple[str, DeviceState], ...]:
    if (node, state) in pairs:
        return pairs
    return tuple(sorted([p for p in pairs if p[0] != node] + [(node, state)]))


def _stamp_version(old: Row, new: Row, now: int) -> Row:
    """Count a version (and touch updated_at) only when a consumer would see a difference."""
    if _visible_same(old, new):
        return new
    return _rep_row(new, version=old.version + 1, updated_at_ms=now)


def _visible_same(old: Row, new: Row) -> bool:
    """``visible_key(old) == visible_key(new)``, cheaply in the common case: with the same
    devices, the keys are equal exactly when the contacts are pairwise equal in the visible
    fields (the primary and its device are functions of those); anything else is decided by
    comparing the keys."""
    if old.devices != new.devices:
        return visible_key(old) == visible_key(new)
    a, b = old.contacts, new.contacts
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is not y and _visible_fields(x) != _visible_fields(y):
            return False
    return True


# The fields of a contact in visible_key, fetched in one C call.
_visible_fields = operator.attrgetter("node", "uri", "reg_offset", "status", "stale", "ip", "port", "transport",
                                      "user_agent", "aor", "awaiting_qualify")


def visible_key(row: Row) -> tuple[Any, ...]:
    """What a consumer of the locations topic sees, minus pure freshness (expiry, RTT, times).

    A refresh that only moves ``expires_at_ms`` or a qualify that only changes the RTT is kept
    in the table row but is not re-published: that is the publication granularity. Computed
    from the row directly (no EndpointLocation built): it runs for every event.
    """
    if not row.contacts:
        return ()
    primary = max(row.contacts, key=ContactState.rank)
    return (
        primary.node, primary.uri, primary.rank()[0], row.device_of(primary.node),
        tuple([_visible_fields(c) for c in row.contacts]),
    )


def durable_key(row: Row) -> tuple[Any, ...]:
    """What must survive a restart: visible state, snapshot confirmations, expiries, devices.

    Rows differing only in per-node order, live confirmations (a qualify) or RTT need not be
    written (docs/stream.md "Table writes"): an event whose effect was not durable produces
    the same durable state if replayed, and reconciliation only needs snapshot confirmations
    (any contact alive after a snapshot's begin is listed by it, or was created after it).
    """
    return (visible_key(row), *durable_rest(row))


def durable_rest(row: Row) -> tuple[Any, ...]:
    """The part of :func:`durable_key` that is not visible: confirmations, expiries, devices."""
    return (tuple([(c.node, c.uri, c.snapshot_seen, c.expires_at_ms) for c in row.contacts]), row.devices)


def location_of(row: Row | None) -> EndpointLocation | None:
    """The published row; ``None`` (tombstone) when no contact is left."""
    if row is None or not row.contacts:
        return None
    # Ranks are unique (they end in node, uri), so the first of the sorted contacts is
    # row.primary(), without ranking them all twice.
    ordered = sorted(row.contacts, key=ContactState.rank, reverse=True)
    primary = ordered[0]
    tier = primary.rank()[0]
    status = LocationStatus.REGISTERED if tier >= 2 else (
        LocationStatus.UNREACHABLE if tier == 1 else LocationStatus.STALE
    )
    routable = tier > 0
    nodes: list[str] = []
    for c in ordered:
        if c.node not in nodes:
            nodes.append(c.node)
    device = row.device_of(primary.node) or DeviceState.UNKNOWN
    tech, resource = split_endpoint(row.endpoint)
    return _new_location(
        endpoint=row.endpoint,
        technology=tech,
        resource=resource,
        updated_at_ms=row.updated_at_ms,
        primary_node=primary.node if routable else None,
        status=status,
        device_state=device,
        contact_uri=primary.uri,
        ip=primary.ip,
        port=primary.port,
        transport=primary.transport,
        user_agent=primary.user_agent,
        rtt_us=primary.rtt_us,
        expires_at_ms=primary.expires_at_ms,
        contacts=tuple(
            _new_published_contact(
                node=c.node, uri=c.uri, registered_at_ms=c.registered_at_ms, updated_at_ms=c.updated_at_ms,
                aor=c.aor, status=c.status, ip=c.ip, port=c.port, transport=c.transport,
                user_agent=c.user_agent, rtt_us=c.rtt_us, expires_at_ms=c.expires_at_ms,
                stale=c.stale, primary=c is primary,
            )
            for c in ordered
        ),
        nodes=tuple(nodes),
        last_event_time_ms=row.last_event_time_ms,
        version=row.version,
    )



_new_location = maker(EndpointLocation)
_new_published_contact = maker(Contact)
