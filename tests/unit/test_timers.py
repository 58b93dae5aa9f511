"""Timer decisions (stale, expiry, node grace, reconciliation) and the node book, pure."""

from __future__ import annotations

from astreg.partition import partition_for as partition_of
from schemas.models import (
    ContactStatus,
    EventKind,
    LinkState,
    NodeEventKind,
    NodeStatus,
    RegistrationEvent,
    Source,
)
from streams.rules import Row, apply, location_of
from streams.tables import NodeBook, node_view
from streams.timers import next_deadline, synthetic_for

E = "PJSIP/1001"
T0 = 1_000_000


def contact(node: str, seq: int, uri: str, expires: int | None = None) -> RegistrationEvent:
    return RegistrationEvent(endpoint=E, node=node, producer_epoch=1, seq=seq, event_time_ms=seq, kind=EventKind.CONTACT,
                             source=Source.LIVE, contact_uri=uri, contact_status=ContactStatus.REACHABLE,
                             expires_at_ms=expires)


def status(node: str, seq: int, kind: NodeEventKind = NodeEventKind.HEARTBEAT, link: LinkState = LinkState.UP,
           **kw: object) -> NodeStatus:
    return NodeStatus(node=node, producer_epoch=1, seq=seq, event_time_ms=seq, kind=kind, ami_link=link, **kw)  # type: ignore[arg-type]


def row_of(*events: RegistrationEvent) -> Row:
    row: Row | None = None
    for i, e in enumerate(events):
        row = apply(row, e, i)
    assert row is not None
    return row


def decide(row: Row, book: NodeBook, now: int, reconciles: list | None = None) -> list[RegistrationEvent]:
    return synthetic_for(row, book.nodes, now, node_timeout=15, node_grace=120, expiry_grace=35,
                         reconciles=reconciles or [])


def test_live_node_contacts_are_left_alone_even_past_expiry() -> None:
    book = NodeBook()
    book.observe(status("A", 10), T0)
    row = row_of(contact("A", 1, "sip:a", expires=T0 - 100_000))
    assert decide(row, book, T0 + 5_000) == []


def test_silent_node_goes_stale_then_its_expired_contacts_go() -> None:
    book = NodeBook()
    book.observe(status("A", 10), T0)
    row = row_of(contact("A", 1, "sip:a", expires=T0 + 60_000), contact("A", 2, "sip:b", expires=T0 + 10_000))
    out = decide(row, book, T0 + 16_000)
    assert [(e.kind, e.contact_uri) for e in out] == [(EventKind.STALE, None)]
    stale_row = apply(row, out[0], 5)
    assert location_of(stale_row).status.value == "STALE"  # type: ignore[union-attr]
    out = decide(stale_row, book, T0 + 10_000 + 36_000)
    assert [(e.kind, e.contact_uri) for e in out] == [(EventKind.EXPIRE, "sip:b")]


def test_node_grace_removes_everything_of_the_node() -> None:
    book = NodeBook()
    book.observe(status("A", 10), T0)
    book.observe(status("B", 10), T0 + 200_000)
    row = row_of(contact("A", 1, "sip:a"), contact("B", 1, "sip:b"))
    out = decide(row, book, T0 + 15_000 + 121_000)
    assert [(e.kind, e.node, e.contact_uri, e.cause) for e in out] == [(EventKind.EXPIRE, "A", None, "node_grace")]
    left = location_of(apply(row, out[0], 9))
    assert left is not None and left.nodes == ("B",)


def test_stale_basis_covers_events_after_last_heartbeat() -> None:
    book = NodeBook()
    book.observe(status("A", 3), T0)
    row = row_of(contact("A", 7, "sip:a"))  # sent after heartbeat seq 3
    (stale,) = decide(row, book, T0 + 16_000)
    assert (stale.producer_epoch, stale.seq) == (1, 7)
    assert all(c.stale for c in apply(row, stale, 9).contacts)


def test_ami_down_is_stale_at_once_but_not_removed_by_grace() -> None:
    book = NodeBook()
    book.observe(status("A", 10, NodeEventKind.AMI_DOWN), T0)
    assert node_view(book.nodes["A"], now_ms=T0)["stale"] is True
    row = row_of(contact("A", 1, "sip:a"))
    assert [e.kind for e in decide(row, book, T0 + 1)] == [EventKind.STALE]
    book.observe(status("A", 11, link=LinkState.DOWN), T0 + 500_000)  # producer alive, AMI still down
    assert book.nodes["A"].down_since_ms == T0
    assert all(e.cause != "node_grace" for e in decide(row, book, T0 + 500_001))


def test_completed_snapshot_queues_a_reconcile_for_unconfirmed_contacts() -> None:
    book = NodeBook()
    book.observe(status("A", 20, NodeEventKind.SNAPSHOT_BEGIN, snapshot_id="s1"), T0)
    book.observe(status("A", 30, NodeEventKind.SNAPSHOT_COMPLETE, snapshot_id="s1"), T0)
    assert book.completed == [("A", "s1", 1, 20)]
    row = row_of(contact("A", 5, "sip:old"), contact("A", 25, "sip:confirmed"))
    (rec,) = decide(row, book, T0, book.completed)
    assert (rec.kind, rec.node, rec.producer_epoch, rec.seq) == (EventKind.RECONCILE, "A", 1, 20)
    left = location_of(apply(row, rec, 9))
    assert left is not None and [c.uri for c in left.contacts] == ["sip:confirmed"]
    assert decide(apply(row, rec, 9), book, T0, book.completed) == []


def test_node_book_ignores_replayed_status() -> None:
    book = NodeBook()
    book.observe(status("A", 10), T0)
    book.observe(status("A", 9, NodeEventKind.AMI_DOWN), T0 + 1)
    assert book.nodes["A"].down is False and book.nodes["A"].seen_at_ms == T0


def test_partition_of_matches_kafka_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for key in (b"PJSIP/1001", b"SIP/x", b""):
        assert partition_of(key.decode(), 12) == DefaultPartitioner()(key, list(range(12)), list(range(12)))


def test_time_the_worker_could_not_hear_the_broker_is_not_node_silence() -> None:
    # A broker outage longer than node_timeout: no heartbeat can arrive, from live nodes or not.
    book = NodeBook()
    book.heard(T0)
    book.observe(status("A", 10), T0)
    row = row_of(contact("A", 1, "sip:a"))
    outage_end = T0 + 20_000
    assert not book.listening(outage_end)  # the timer makes no decision while deaf
    assert book.heard(outage_end) == 20_000  # the first fetch answer after the outage
    assert book.listening(outage_end)
    assert decide(row, book, outage_end + 1_000) == []
    # A node that stays silent once the broker is heard again goes stale after node_timeout.
    for t in range(outage_end, outage_end + 17_000, 500):
        book.heard(t)
    assert [e.kind for e in decide(row, book, outage_end + 16_500)] == [EventKind.STALE]


def test_regular_fetch_answers_credit_nothing() -> None:
    book = NodeBook()
    book.observe(status("A", 10), T0)
    for t in range(T0, T0 + 16_000, 500):
        assert book.heard(t) == 0
    assert book.listening(T0 + 16_000)
    assert [e.kind for e in decide(row_of(contact("A", 1, "sip:a")), book, T0 + 16_000)] == [EventKind.STALE]


def deadline(row: Row, book: NodeBook, now: int) -> int | None:
    return next_deadline(row, book.nodes, now, node_timeout=15, node_grace=120, expiry_grace=35)


def test_next_deadline_is_when_synthetic_for_changes_its_answer() -> None:
    """The timer rescans only when a deadline passes: the deadline must be exactly when the
    decision for the row changes, and decisions must not change in between."""
    book = NodeBook()
    book.observe(status("A", 10), T0)
    book.observe(status("B", 10), T0)
    row = row_of(contact("A", 1, "sip:a", expires=T0 + 60_000), contact("B", 2, "sip:b", expires=T0 + 10_000))
    assert deadline(row, book, T0 + 5_000) is None  # both live: nothing is due by time
    book.observe(status("B", 11), T0 + 30_000)  # B keeps beating, A goes silent
    now = T0 + 16_000
    # A stale since T0+15s: its contact expires at T0+60s+35s grace, node grace ends at T0+135s.
    assert deadline(row, book, now) == T0 + 95_001
    before = {(e.kind, e.contact_uri) for e in decide(row, book, T0 + 95_000)}
    after = {(e.kind, e.contact_uri) for e in decide(row, book, T0 + 95_001)}
    assert (EventKind.EXPIRE, "sip:a") in after - before
    assert deadline(row, book, T0 + 95_001) == T0 + 135_001  # then A's node grace
    # B went silent too after its last beat at T0+30s (stale from T0+45s): its grace ends later.
    assert deadline(row, book, T0 + 135_001) == T0 + 165_001
    assert deadline(row, book, T0 + 165_001) is None


def test_next_deadline_of_a_down_node_ignores_the_grace() -> None:
    book = NodeBook()
    book.observe(status("A", 10, kind=NodeEventKind.AMI_DOWN, link=LinkState.DOWN), T0)
    row = row_of(contact("A", 1, "sip:a", expires=T0 + 60_000))
    assert deadline(row, book, T0 + 1_000) == T0 + 95_001  # only the contact's expiry
    row2 = row_of(contact("A", 1, "sip:a"))  # no known expiry: nothing by time (AMI down ≠ gone)
    assert deadline(row2, book, T0 + 1_000) is None


def test_node_silence_is_judged_only_while_the_cluster_is_heard_and_takes_writes() -> None:
    """A broker that answers fetches but acknowledges no write (below min.insync.replicas, no
    controller quorum) delivers no heartbeat either: that time is not node silence, and the API
    judges ``stale`` at the last moment the worker heard the cluster. Once writes are back, the
    worker waits for the heartbeats to flow again (the nodes topic's partition may take writes
    later than the rest) before it counts silence."""
    from schemas.models import LinkState, NodeEventKind, NodeStatus
    from streams.tables import NodeBook, NodeState

    def beat(node: str, seq: int, at: int) -> None:
        book.observe(NodeStatus(node=node, producer_epoch=1, seq=seq, event_time_ms=at,
                                kind=NodeEventKind.HEARTBEAT, ami_link=LinkState.UP), at)

    book = NodeBook(probing=True)
    book.nodes["n1"] = NodeState(node="n1", kind=NodeEventKind.HEARTBEAT, seen_at_ms=1_000)
    assert book.answered(5_000) == 0  # no write acknowledged yet: not heard
    book.writable_at_ms = 1_000
    book.heard(book.answered(1_000))
    # Fetches keep being answered, writes are not acknowledged: heard time stays at 1 s.
    for t in range(2_000, 30_000, 1_000):
        book.heard(book.answered(t))
    assert book.heard_at_ms == 1_000
    assert not book.listening(30_000)
    now = book.judged_now(30_000)
    assert now == 1_000 and not book.nodes["n1"].stale(now, 6.0)
    # Writes are acknowledged again: the gap is credited; no heartbeat flows yet (the nodes
    # topic still refuses writes): still deaf, nothing judged stale for 9 s.
    book.writable_at_ms = 30_000
    assert book.heard(book.answered(30_000)) == 29_000
    for t in range(31_000, 40_000, 1_000):
        book.writable_at_ms = t
        book.heard(book.answered(t))
    assert not book.nodes["n1"].stale(book.judged_now(39_000), 6.0)
    # n2's heartbeats flow again, n1 stays silent: heard again, and n1 stale after its timeout.
    for seq, t in enumerate(range(40_000, 48_000, 1_000), 1):
        beat("n2", seq, t)
        book.writable_at_ms = t
        book.heard(book.answered(t))
    assert book.listening(47_000)
    assert not book.nodes["n2"].stale(book.judged_now(47_000), 6.0)
    assert book.nodes["n1"].stale(book.judged_now(47_000), 6.0)


def test_after_the_flow_grace_silence_counts_again() -> None:
    """A node that died while the cluster was away: no heartbeat ever flows again, and after
    FLOW_GRACE_MS the worker judges silence again (the node goes stale then)."""
    from schemas.models import NodeEventKind
    from streams.tables import FLOW_GRACE_MS, NodeBook, NodeState

    book = NodeBook()
    book.nodes["n1"] = NodeState(node="n1", kind=NodeEventKind.HEARTBEAT, seen_at_ms=0)
    book.heard(0)
    assert book.heard(10_000) == 10_000  # a 10 s blind period ends
    t = 10_000
    while t < 10_000 + FLOW_GRACE_MS + 10_000:
        t += 1_000
        book.heard(t)
    assert book.listening(t)
    assert book.nodes["n1"].stale(book.judged_now(t), 6.0)
