"""The merge rules (SPEC items 1-9), one behaviour per test, plus hypothesis convergence."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import (
    ContactStatus,
    DeviceState,
    EventKind,
    LocationStatus,
    PeerStatus,
    RegistrationEvent,
    Source,
)
from streams.rules import Row, apply, decide, durable_key, location_of, visible_key
from tests.support.reference import reference

E = "PJSIP/1001"
UA, UB = "sip:1001@10.0.0.1:5060", "sip:1001@10.0.0.2:5060"


def ev(node: str, seq: int, status: ContactStatus | None = ContactStatus.NON_QUALIFIED, uri: str | None = None,
       *, epoch: int = 1, kind: EventKind = EventKind.CONTACT, device: DeviceState | None = None,
       source: Source = Source.LIVE, expires: int | None = None, endpoint: str = E,
       peer: PeerStatus | None = None, ip: str | None = None) -> RegistrationEvent:
    return RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=epoch, seq=seq, event_time_ms=1000 + seq, kind=kind,
        source=source, contact_uri=uri if uri is not None or kind is not EventKind.CONTACT else (UA if node == "A" else UB),
        contact_status=status if kind is EventKind.CONTACT else None, device_state=device,
        expires_at_ms=expires, peer_status=peer, ip=ip,
    )


def syn(kind: EventKind, node: str, epoch: int, seq: int, uri: str | None = None) -> RegistrationEvent:
    return RegistrationEvent(endpoint=E, node=node, producer_epoch=epoch, seq=seq, event_time_ms=9999, kind=kind,
                             source=Source.SYNTHETIC, contact_uri=uri, cause="test")


def run(*events: RegistrationEvent) -> Row | None:
    row: Row | None = None
    for off, e in enumerate(events):
        row = apply(row, e, off)
    return row


def test_first_contact_makes_a_registered_row() -> None:
    loc = location_of(run(ev("A", 1)))
    assert loc is not None
    assert (loc.primary_node, loc.status, loc.contact_uri, loc.nodes) == ("A", LocationStatus.REGISTERED, UA, ("A",))
    assert loc.technology == "PJSIP" and loc.resource == "1001" and loc.version == 1


def test_duplicate_changes_nothing() -> None:
    row = run(ev("A", 1), ev("A", 2, ContactStatus.REACHABLE))
    out = decide(row, ev("A", 2, ContactStatus.UNREACHABLE), 9)
    assert not out.applied and out.reason == "duplicate" and out.row is row


def test_seq_backwards_in_one_epoch_is_flagged() -> None:
    row = run(ev("A", 5))
    out = decide(row, ev("A", 3, ContactStatus.REMOVED), 9)
    assert out.reason == "seq_backwards" and location_of(out.row) is not None


def test_new_epoch_restarts_seq() -> None:
    row = run(ev("A", 50), ev("A", 1, ContactStatus.REMOVED, epoch=2))
    assert location_of(row) is None


def test_old_epoch_is_ignored() -> None:
    row = run(ev("A", 1, epoch=2))
    out = decide(row, ev("A", 99, ContactStatus.REMOVED, epoch=1), 5)
    assert out.reason == "old_epoch" and location_of(out.row) is not None


def test_node_only_removes_its_own_contact() -> None:
    row = run(ev("A", 1), ev("B", 1), ev("A", 2, ContactStatus.REMOVED, uri=UB))
    loc = location_of(row)
    assert loc is not None and {(c.node, c.uri) for c in loc.contacts} == {("A", UA), ("B", UB)}


def test_same_uri_on_two_nodes_is_two_contacts() -> None:
    row = run(ev("A", 1, uri=UA), ev("B", 1, uri=UA), ev("A", 2, ContactStatus.REMOVED, uri=UA))
    loc = location_of(row)
    assert loc is not None and loc.nodes == ("B",)


def test_move_makes_new_node_primary_at_once() -> None:
    loc = location_of(run(ev("A", 1), ev("A", 2, ContactStatus.REACHABLE), ev("B", 1)))
    assert loc is not None and loc.primary_node == "B" and loc.nodes == ("B", "A")


def test_old_node_qualifying_again_does_not_win_primary_back() -> None:
    loc = location_of(run(ev("A", 1), ev("B", 1), ev("A", 2, ContactStatus.REACHABLE),
                          ev("A", 3, ContactStatus.REACHABLE)))
    assert loc is not None and loc.primary_node == "B"


def test_primary_is_judged_by_offset_not_node_clock() -> None:
    late_clock = RegistrationEvent(endpoint=E, node="A", producer_epoch=1, seq=1, event_time_ms=10**13,
                                   kind=EventKind.CONTACT, contact_uri=UA, contact_status=ContactStatus.NON_QUALIFIED)
    loc = location_of(run(late_clock, ev("B", 1)))
    assert loc is not None and loc.primary_node == "B"


def test_unreachable_only_when_nothing_else() -> None:
    loc = location_of(run(ev("A", 1), ev("B", 1), ev("B", 2, ContactStatus.UNREACHABLE)))
    assert loc is not None and loc.primary_node == "A" and loc.status is LocationStatus.REGISTERED
    loc = location_of(run(ev("A", 1, ContactStatus.UNREACHABLE)))
    assert loc is not None and loc.primary_node == "A" and loc.status is LocationStatus.UNREACHABLE


def test_reregister_after_removal_counts_as_new_registration() -> None:
    row = run(ev("A", 1), ev("B", 1), ev("A", 2, ContactStatus.REMOVED), ev("A", 3))
    loc = location_of(row)
    assert loc is not None and loc.primary_node == "A"


def test_tie_break_is_deterministic() -> None:
    row = run(ev("A", 1))
    assert row is not None
    # Same creation offset as A's contact: impossible in one partition, so forge the row's applied
    # offset back (otherwise offset 0 is a replay and ignored).
    twin = apply(replace(row, offset=-1), ev("B", 1), 0)
    loc = location_of(twin)
    assert loc is not None and loc.primary_node == "B"  # (offset, node, uri): B > A


def test_device_state_comes_from_primary_node() -> None:
    row = run(ev("A", 1), ev("B", 1),
              ev("A", 2, None, kind=EventKind.DEVICE, device=DeviceState.UNAVAILABLE),
              ev("B", 2, None, kind=EventKind.DEVICE, device=DeviceState.INUSE))
    loc = location_of(row)
    assert loc is not None and loc.device_state is DeviceState.INUSE


def test_other_nodes_unavailable_is_ignored_while_registered_elsewhere() -> None:
    row = run(ev("B", 1, None, kind=EventKind.DEVICE, device=DeviceState.NOT_INUSE), ev("B", 2),
              ev("A", 1, None, kind=EventKind.DEVICE, device=DeviceState.UNAVAILABLE))
    loc = location_of(row)
    assert loc is not None and loc.device_state is DeviceState.NOT_INUSE


def test_last_contact_removed_is_a_tombstone_but_row_keeps_order() -> None:
    row = run(ev("A", 1), ev("A", 2, ContactStatus.REMOVED))
    assert location_of(row) is None and row is not None and row.last_of("A") == (1, 2)
    assert location_of(apply(row, ev("A", 1), 9)) is None  # a replay does not resurrect it


def test_refresh_of_expiry_or_rtt_is_not_a_visible_change() -> None:
    row = run(ev("A", 1, ContactStatus.REACHABLE, expires=10_000))
    assert row is not None
    refreshed = apply(row, RegistrationEvent(
        endpoint=E, node="A", producer_epoch=1, seq=2, event_time_ms=5, kind=EventKind.CONTACT,
        source=Source.SNAPSHOT, contact_uri=UA, contact_status=ContactStatus.REACHABLE, rtt_us=777,
        expires_at_ms=99_999), 1)
    assert visible_key(refreshed) == visible_key(row) and refreshed.version == row.version
    assert durable_key(refreshed) != durable_key(row)  # confirmation + expiry must be persisted


def test_reconcile_removes_contacts_not_confirmed_since_snapshot_begin() -> None:
    row = run(ev("A", 1, uri="sip:old"), ev("A", 2, uri="sip:kept"), ev("B", 1))
    # snapshot began at seq 2: sip:old (confirmed at 1) is gone, sip:kept confirmed at 2 stays
    loc = location_of(apply(row, syn(EventKind.RECONCILE, "A", 1, 2), 9))
    assert loc is not None and {(c.node, c.uri) for c in loc.contacts} == {("A", "sip:kept"), ("B", UB)}


def test_reconcile_replay_is_harmless() -> None:
    row = run(ev("A", 1), syn(EventKind.RECONCILE, "A", 1, 1), ev("A", 5, uri="sip:new"))
    loc = location_of(apply(row, syn(EventKind.RECONCILE, "A", 1, 1), 9))
    assert loc is not None and {c.uri for c in loc.contacts} == {UA, "sip:new"}


def test_stale_marks_then_newer_event_clears() -> None:
    row = run(ev("A", 1), ev("B", 1), syn(EventKind.STALE, "B", 1, 1))
    loc = location_of(row)
    assert loc is not None and loc.primary_node == "A"
    assert [c.stale for c in loc.contacts if c.node == "B"] == [True]
    loc = location_of(apply(row, ev("B", 2, ContactStatus.REACHABLE), 9))
    assert loc is not None and loc.primary_node == "B"


def test_only_stale_contacts_left_is_status_stale_without_route() -> None:
    loc = location_of(run(ev("A", 1), syn(EventKind.STALE, "A", 1, 1)))
    assert loc is not None and loc.status is LocationStatus.STALE and loc.primary_node is None


def test_expire_is_conditional_on_confirmation() -> None:
    row = run(ev("A", 1), ev("A", 2, ContactStatus.REACHABLE))
    assert location_of(apply(row, syn(EventKind.EXPIRE, "A", 1, 1, UA), 9)) is not None  # reconfirmed at 2
    assert location_of(apply(row, syn(EventKind.EXPIRE, "A", 1, 2, UA), 9)) is None


def test_expire_of_whole_node_keeps_other_nodes() -> None:
    loc = location_of(run(ev("A", 1), ev("B", 1), syn(EventKind.EXPIRE, "A", 1, 1)))
    assert loc is not None and loc.nodes == ("B",)


def test_chan_sip_peer_registered_and_unregistered() -> None:
    sip = "SIP/2001"
    row = run(ev("A", 1, None, kind=EventKind.PEER, peer=PeerStatus.REGISTERED, ip="10.1.1.1", endpoint=sip))
    loc = location_of(row)
    assert loc is not None and loc.primary_node == "A" and loc.endpoint == sip
    row = apply(row, ev("A", 2, None, kind=EventKind.PEER, peer=PeerStatus.UNREACHABLE, endpoint=sip), 1)
    assert location_of(row).status is LocationStatus.UNREACHABLE  # type: ignore[union-attr]
    row = apply(row, ev("A", 3, None, kind=EventKind.PEER, peer=PeerStatus.UNREGISTERED, endpoint=sip), 2)
    assert location_of(row) is None


def test_pjsip_peer_status_is_covered_by_contacts() -> None:
    row = run(ev("A", 1), ev("A", 2, None, kind=EventKind.PEER, peer=PeerStatus.UNREACHABLE))
    loc = location_of(row)
    assert loc is not None and loc.status is LocationStatus.REGISTERED


def test_row_json_round_trip() -> None:
    row = run(ev("A", 1, expires=5), ev("B", 1), ev("B", 2, None, kind=EventKind.DEVICE, device=DeviceState.RINGING),
              syn(EventKind.STALE, "A", 1, 1))
    assert row is not None and Row.from_json(row.to_json()) == row


def test_row_binary_round_trip_and_older_json_rows_still_read() -> None:
    row = run(ev("A", 1, expires=5), ev("B", 1), ev("B", 2, None, kind=EventKind.DEVICE, device=DeviceState.RINGING),
              syn(EventKind.STALE, "A", 1, 1))
    assert row is not None and Row.from_bytes(row.to_bytes()) == row
    assert Row.from_bytes(row.to_json()) == row  # a changelog/RocksDB row written by an earlier version
    assert len(row.to_bytes()) < len(row.to_json())


# ---------------------------------------------------------------- convergence (SPEC item 8)

NODES = ("A", "B", "C")
STATUSES = (ContactStatus.NON_QUALIFIED, ContactStatus.REACHABLE, ContactStatus.UNREACHABLE, ContactStatus.REMOVED)


@st.composite
def node_script(draw: st.DrawFn, node: str) -> list[RegistrationEvent]:
    """One node's own ordered events for the endpoint (epoch may change = producer restart)."""
    out: list[RegistrationEvent] = []
    epoch, seq = 1, 0
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 9)) == 0:
            epoch, seq = epoch + 1, 0
        seq += draw(st.integers(1, 3))
        if draw(st.integers(0, 4)) == 0:
            out.append(ev(node, seq, None, epoch=epoch, kind=EventKind.DEVICE,
                          device=draw(st.sampled_from([DeviceState.NOT_INUSE, DeviceState.INUSE, DeviceState.UNAVAILABLE]))))
        else:
            uri = f"sip:1001@{node}{draw(st.integers(1, 2))}"
            out.append(ev(node, seq, draw(st.sampled_from(STATUSES)), uri, epoch=epoch))
    return out


@st.composite
def histories(draw: st.DrawFn) -> tuple[dict[str, list[RegistrationEvent]], list[RegistrationEvent]]:
    """Scripts per node, and one interleaving keeping each node's order, with duplicates/replays."""
    scripts = {n: draw(node_script(n)) for n in NODES}
    cursors = dict.fromkeys(NODES, 0)
    merged: list[RegistrationEvent] = []
    sent: dict[str, list[RegistrationEvent]] = {n: [] for n in NODES}
    while any(cursors[n] < len(scripts[n]) for n in NODES):
        n = draw(st.sampled_from([n for n in NODES if cursors[n] < len(scripts[n])]))
        e = scripts[n][cursors[n]]
        cursors[n] += 1
        merged.append(e)
        sent[n].append(e)
        if draw(st.integers(0, 3)) == 0:  # a duplicate / replay of something already sent
            merged.append(draw(st.sampled_from(sent[n])))
    return scripts, merged


def node_truth(script: list[RegistrationEvent]) -> set[tuple[str, str, ContactStatus]]:
    """What the node itself holds at the end (its own events in its own order)."""
    held: dict[str, ContactStatus] = {}
    for e in script:
        if e.kind is EventKind.CONTACT:
            assert e.contact_uri is not None and e.contact_status is not None
            if e.contact_status is ContactStatus.REMOVED:
                held.pop(e.contact_uri, None)
            else:
                held[e.contact_uri] = e.contact_status
    return {(script[0].node, u, s) for u, s in held.items()}


def fold(history: list[RegistrationEvent]) -> Row | None:
    row: Row | None = None
    for off, e in enumerate(history):
        row = apply(row, e, off)
    return row


@settings(max_examples=300, deadline=None)
@given(histories())
def test_any_interleaving_matches_reference_and_node_truth(case: tuple[dict, list[RegistrationEvent]]) -> None:
    scripts, merged = case
    row = fold(merged)
    loc = location_of(row)
    truth = reference(merged)
    contacts = set() if loc is None else {(c.node, c.uri, c.status) for c in loc.contacts}
    assert contacts == set(truth.contacts)
    assert contacts == set().union(*(node_truth(s) for s in scripts.values() if s))
    if loc is None:
        assert truth.primary is None
    else:
        primary = next(c for c in loc.contacts if c.primary)
        assert (primary.node, primary.uri) == truth.primary
        assert loc.device_state is truth.device_state


@settings(max_examples=100, deadline=None)
@given(histories(), st.data())
def test_replaying_any_suffix_changes_nothing(case: tuple[dict, list[RegistrationEvent]], data: st.DataObject) -> None:
    _, merged = case
    row = fold(merged)
    start = data.draw(st.integers(0, len(merged)))
    again = row
    for off, e in enumerate(merged[start:], start=len(merged)):
        again = apply(again, e, off)
    assert location_of(again) == location_of(row)


def test_live_qualify_with_same_status_needs_no_table_write() -> None:
    row = run(ev("A", 1, ContactStatus.REACHABLE))
    assert row is not None
    again = apply(row, ev("A", 2, ContactStatus.REACHABLE), 1)
    assert durable_key(again) == durable_key(row) and again.last_of("A") == (1, 2)


def test_replay_after_a_crash_is_ignored_not_dead_lettered() -> None:
    """A worker killed after writing the table but before committing re-reads older offsets."""
    from streams.rules import decide

    row = None
    for i, seq in enumerate((1, 2, 3)):
        row = apply(row, ev("A", seq), 10 + i)
    assert row is not None
    replayed = decide(row, ev("A", 2), 11)
    assert replayed.reason == "replay" and replayed.row is row
    # a lower seq of the same epoch at a NEW offset is still impossible
    assert decide(row, ev("A", 2), 13).reason == "seq_backwards"


@settings(max_examples=200, deadline=None)
@given(histories(), st.data())
def test_visible_shortcut_equals_comparing_visible_keys(case: tuple[dict, list[RegistrationEvent]],
                                                        data: st.DataObject) -> None:
    """_stamp_version's shortcut (_visible_same) must agree with comparing visible_key for any
    two rows of a history: consecutive ones (what it sees) and arbitrary pairs."""
    from streams.rules import _visible_same

    _, merged = case
    rows: list[Row] = []
    row: Row | None = None
    for off, e in enumerate(merged):
        row = apply(row, e, off)
        rows.append(row)
    pairs = list(zip(rows, rows[1:], strict=False))
    if rows:
        pairs += [(data.draw(st.sampled_from(rows)), data.draw(st.sampled_from(rows))) for _ in range(5)]
    for a, b in pairs:
        assert _visible_same(a, b) == (visible_key(a) == visible_key(b))


# ---------------------------------------------------------------- registrations real Asterisk makes


def refresh(node: str, seq: int, uri: str | None = None, *, expires: int | None = None,
            status: ContactStatus | None = None, source: Source = Source.LIVE) -> RegistrationEvent:
    return RegistrationEvent(endpoint=E, node=node, producer_epoch=1, seq=seq, event_time_ms=1000 + seq,
                             kind=EventKind.REFRESH, source=source, contact_uri=uri or (UA if node == "A" else UB),
                             contact_status=status, expires_at_ms=expires)


def contact(node: str, seq: int, status: ContactStatus | None, *, qualify: int | None = None,
            source: Source = Source.LIVE, expires: int | None = None, uri: str | None = None) -> RegistrationEvent:
    return replace(ev(node, seq, status, uri, source=source, expires=expires), qualify_frequency_s=qualify)


def primary(row: Row | None) -> str | None:
    loc = location_of(row)
    return None if loc is None else loc.primary_node


def test_a_phone_back_on_a_node_still_holding_its_contact_is_primary_there_at_the_refresh() -> None:
    """Fail over A → B and back to A within Expires: A's old contact is re-registered, Asterisk emits
    no ContactStatus, only the security events the producer turns into a REFRESH."""
    row = run(ev("A", 1, ContactStatus.REACHABLE), ev("B", 1, ContactStatus.REACHABLE))
    assert primary(row) == "B"
    back = apply(row, refresh("A", 2, expires=60_000), 2)
    assert primary(back) == "A"
    loc = location_of(back)
    assert loc is not None and loc.nodes == ("A", "B") and loc.expires_at_ms == 60_000


def test_a_refresh_or_the_nodes_details_never_create_a_contact() -> None:
    row = run(ev("B", 1, ContactStatus.REACHABLE))
    assert decide(row, refresh("A", 1), 5).reason == "no_change"
    details = replace(contact("A", 2, None), user_agent="PolycomVVX", call_id="abc@10.0.0.1")
    assert decide(row, details, 6).reason == "no_change"
    # ... but fill in what ContactStatus does not carry for a contact that exists
    row2 = run(ev("A", 1), replace(contact("A", 2, None, qualify=60, expires=70_000), user_agent="PolycomVVX"))
    loc = location_of(row2)
    assert loc is not None and (loc.user_agent, loc.expires_at_ms) == ("PolycomVVX", 70_000)
    assert loc.status is LocationStatus.REGISTERED


def test_a_restarted_nodes_reloaded_contact_waits_for_its_first_qualify() -> None:
    """B restarts and lists its contact NonQualified until it qualifies it: A's Reachable contact
    keeps the calls meanwhile, even though B's registration is the later one."""
    row = run(contact("A", 1, ContactStatus.REACHABLE, qualify=60), contact("B", 1, ContactStatus.REACHABLE, qualify=60))
    assert primary(row) == "B"
    reloaded = apply(row, contact("B", 2, ContactStatus.NON_QUALIFIED, qualify=60, source=Source.SNAPSHOT), 2)
    assert primary(reloaded) == "A"
    unknown = apply(row, contact("B", 2, ContactStatus.UNKNOWN, qualify=60, source=Source.SNAPSHOT), 2)
    assert primary(unknown) == "A"
    qualified = apply(reloaded, contact("B", 3, ContactStatus.REACHABLE), 3)
    assert primary(qualified) == "B"


def test_the_only_contact_awaiting_qualify_still_routes() -> None:
    row = run(contact("B", 1, ContactStatus.REACHABLE, qualify=60),
              contact("B", 2, ContactStatus.NON_QUALIFIED, qualify=60, source=Source.SNAPSHOT))
    loc = location_of(row)
    assert loc is not None and (loc.primary_node, loc.status) == ("B", LocationStatus.REGISTERED)


def test_an_endpoint_without_qualify_ranks_nonqualified_as_registered() -> None:
    row = run(contact("A", 1, ContactStatus.REACHABLE, qualify=60),
              contact("B", 1, ContactStatus.NON_QUALIFIED, qualify=0, source=Source.SNAPSHOT))
    assert primary(row) == "B"


def test_a_new_registration_wins_at_once_before_its_first_qualify() -> None:
    """A device that moved is on B as soon as B reports it (SPEC item 2): the ContactStatus of a new
    contact is always NonQualified first, and it is not a reload."""
    row = run(contact("A", 1, ContactStatus.REACHABLE, qualify=60), contact("B", 1, ContactStatus.NON_QUALIFIED, qualify=60))
    assert primary(row) == "B"


def test_a_refresh_on_the_restarted_node_ends_the_wait() -> None:
    row = run(contact("A", 1, ContactStatus.REACHABLE, qualify=60), contact("B", 1, ContactStatus.REACHABLE, qualify=60),
              contact("B", 2, ContactStatus.NON_QUALIFIED, qualify=60, source=Source.SNAPSHOT))
    assert primary(row) == "A"
    assert primary(apply(row, refresh("B", 3), 3)) == "B"


def test_a_registration_learned_late_is_placed_by_the_nodes_expiration_times() -> None:
    """A's snapshot after an AMI outage lists a contact the pipeline never saw live. It goes before
    or after B's by the expirations when they differ by more than the clock skew (same phone, same
    Expires), and by partition order within it."""
    b_live = contact("B", 1, ContactStatus.REACHABLE, expires=100_000)
    older = run(b_live, contact("A", 1, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=50_000))
    assert primary(older) == "B"
    newer = run(b_live, contact("A", 1, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=150_000))
    assert primary(newer) == "A"
    within = run(b_live, contact("A", 1, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=98_500))
    assert primary(within) == "A"  # 1.5 s apart: clocks not trusted, the later record wins
    wide = decide(run(b_live), contact("A", 1, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=98_500), 1,
                  skew_ms=1_000).row
    assert primary(wide) == "B"  # a 1 s skew bound trusts a 1.5 s difference


def test_a_contact_refreshed_during_an_outage_is_placed_by_its_new_expiration() -> None:
    row = run(contact("A", 1, ContactStatus.REACHABLE, expires=40_000),
              contact("B", 1, ContactStatus.REACHABLE, expires=100_000))
    assert primary(row) == "B"
    # A's snapshot after its AMI link came back: the phone re-registered there meanwhile
    back = apply(row, contact("A", 2, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=160_000), 2)
    assert primary(back) == "A"
    # a snapshot of B showing nothing new changes nothing
    assert primary(apply(back, contact("B", 2, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=100_000), 3)) == "A"


def test_rows_of_the_previous_format_are_read() -> None:
    import msgpack

    contact_v1 = ["A", UA, 3, 10, 11, [1, 2], "REACHABLE", "1001", "10.0.0.1", 5060, "udp", "UA", 449, 99, False, [1, 2]]
    data = msgpack.packb([1, E, [contact_v1], [["A", 1, 2]], [], 4, 11, 10, 7], use_bin_type=True)
    row = Row.from_bytes(data)
    (c,) = row.contacts
    assert (c.node, c.reg_offset, c.qualify_s, c.awaiting_qualify, c.late, row.offset) == ("A", 3, None, False, False, 7)
    assert Row.from_bytes(row.to_bytes()) == row


def test_registrations_buffered_in_a_kafka_outage_are_reordered_by_the_snapshot_after_it() -> None:
    """The phone moved to A, then to B, while Kafka was down: B's producer flushed first, so A's
    older registration is later in the partition. The snapshots sent once Kafka is back carry the
    expirations: B's is later by more than the skew, so B is primary again."""
    b = contact("B", 1, ContactStatus.REACHABLE, expires=160_000)
    a = contact("A", 1, ContactStatus.REACHABLE, expires=130_000)
    row = run(b, a)
    assert primary(row) == "A"  # partition order alone
    healed = apply(row, contact("A", 2, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=130_000), 2)
    assert primary(healed) == "B"
    # the next snapshots of either node leave it so
    again = apply(healed, contact("B", 2, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=160_000), 3)
    again = apply(again, contact("A", 3, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=130_000), 4)
    assert primary(again) == "B"


def test_a_snapshot_within_the_clock_skew_keeps_partition_order() -> None:
    row = run(contact("A", 1, ContactStatus.REACHABLE, expires=100_000),
              contact("B", 1, ContactStatus.REACHABLE, expires=101_500))
    assert primary(row) == "B"
    after = apply(row, contact("A", 2, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=100_000), 2)
    after = apply(after, contact("B", 2, ContactStatus.REACHABLE, source=Source.SNAPSHOT, expires=101_500), 3)
    assert primary(after) == "B" and visible_key(after) == visible_key(row)


def test_a_late_contact_placed_before_the_others_expiration_was_known_is_placed_again() -> None:
    """B's live registration is in the table before its expiration (its details follow); A's
    snapshot after an outage lists A's leftover, which goes on top for want of a comparison. B's
    details bring B's later expiration: B is primary again."""
    row = run(contact("B", 1, ContactStatus.NON_QUALIFIED),
              contact("A", 1, ContactStatus.NON_QUALIFIED, source=Source.SNAPSHOT, expires=163_000))
    assert primary(row) == "A"
    details = contact("B", 2, None, expires=209_000)
    assert primary(apply(row, details, 2)) == "B"
    # between two live contacts the details change nothing (partition order)
    live = run(contact("B", 1, ContactStatus.NON_QUALIFIED), contact("A", 1, ContactStatus.NON_QUALIFIED, expires=163_000))
    assert primary(apply(live, contact("B", 2, None, expires=209_000), 2)) == "A"


def test_a_refresh_found_by_the_expiration_scan_is_placed_by_its_expiration() -> None:
    """A refresh the producer found by comparing the node's expirations (no security event, or
    one lost while the AMI link was down) happened at some time since it last looked: only its
    expiration says when. It stays below another node's registration expiring later by more
    than the skew, and goes above one expiring earlier."""
    row = run(contact("A", 1, ContactStatus.REACHABLE, expires=40_000),
              contact("B", 1, ContactStatus.REACHABLE, expires=100_000))
    assert primary(row) == "B"
    before_b = apply(row, refresh("A", 2, expires=97_000, source=Source.SNAPSHOT), 2)
    assert primary(before_b) == "B"  # renewed 3 s before B's registration
    after_b = apply(row, refresh("A", 2, expires=103_000, source=Source.SNAPSHOT), 2)
    assert primary(after_b) == "A"
    within = apply(row, refresh("A", 2, expires=99_000, source=Source.SNAPSHOT), 2)
    assert primary(within) == "A"  # within the skew: partition order
    live = apply(row, refresh("A", 2, expires=97_000), 2)
    assert primary(live) == "A"  # seen as it happened: the latest registration, whatever the Expires


def test_a_live_refresh_answered_late_does_not_outrank_a_registration_made_after_it() -> None:
    """The producer learns a refresh from the security event, then asks the node for the contact's
    expiration (bounded in rate: seconds in a burst). The refresh happened at the security event:
    a registration on another node made after it by more than the skew, but published before the
    answer, stays primary; one made within the skew is ordered by partition order."""
    row = run(replace(contact("A", 1, ContactStatus.REACHABLE), event_time_ms=100_000),
              replace(contact("B", 1, ContactStatus.REACHABLE), event_time_ms=105_000))
    assert primary(row) == "B"
    answered_late = replace(refresh("A", 2, expires=160_000), event_time_ms=102_000)
    assert primary(apply(row, answered_late, 2)) == "B"
    within = replace(refresh("A", 2, expires=160_000), event_time_ms=104_000)
    assert primary(apply(row, within, 2)) == "A"
    after = replace(refresh("A", 2, expires=160_000), event_time_ms=106_000)
    assert primary(apply(row, after, 2)) == "A"
