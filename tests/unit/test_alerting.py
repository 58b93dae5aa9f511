"""The alerting engine: every alert kind raised once and resolved once, with who, why and figures."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.models import (
    ContactStatus,
    EventKind,
    LinkState,
    NodeEventKind,
    NodeStatus,
    RegistrationEvent,
    Source,
)
from schemas.quality import (
    Alert,
    AlertKind,
    AlertSeverity,
    AlertState,
    QualityKind,
    QualitySample,
    ReportDirection,
)
from streams.alerts.engine import AlertEngine, AlertSettings, alert_id, replay
from streams.alerts.windows import QualityWindow, p95

T0 = 1_800_000_000_000
S = 1000


def cfg(**kw: object) -> AlertSettings:
    base = dict(alert_node_stale_s=30, alert_node_down_s=120, alert_storm_registrations=5, alert_storm_window_s=60,
                alert_contact_loss_percent=50, alert_contact_loss_min=3, alert_contact_loss_window_s=60,
                alert_flapping_changes=4, alert_flapping_window_s=120, alert_jitter_ms=20, alert_loss_fraction=0.05,
                alert_quality_window_s=60, alert_quality_min_samples=3, alert_snapshot_healed_contacts=2,
                alert_snapshot_window_s=60)
    base.update(kw)
    return AlertSettings(**base)  # type: ignore[arg-type]


def hb(node: str, t: int, kind: NodeEventKind = NodeEventKind.HEARTBEAT, link: LinkState = LinkState.UP) -> NodeStatus:
    return NodeStatus(node=node, producer_epoch=1, seq=t, event_time_ms=t, kind=kind, ami_link=link)


_seq = iter(range(1, 10**9))


def contact(node: str, ep: str, status: ContactStatus, t: int, uri: str | None = None,
            source: Source = Source.LIVE) -> RegistrationEvent:
    return RegistrationEvent(endpoint=ep, node=node, producer_epoch=1, seq=next(_seq), event_time_ms=t,
                             kind=EventKind.CONTACT, source=source, contact_status=status,
                             contact_uri=uri or f"sip:{ep.split('/')[1]}@10.0.0.1:5060")


def sample(ep: str, t: int, jitter: float = 1.0, loss: float = 0.0, rtt: float | None = 1.0,
           node: str = "node1") -> QualitySample:
    return QualitySample(endpoint=ep, node=node, producer_epoch=1, seq=next(_seq), event_time_ms=t,
                         kind=QualityKind.RTCP, direction=ReportDirection.SENT, jitter_ms=jitter,
                         fraction_lost=loss, rtt_ms=rtt)


def transitions(alerts: list[Alert], kind: AlertKind) -> list[tuple[str, AlertState]]:
    return [(a.alert_id, a.state) for a in alerts if a.kind is kind]


def assert_pairs(alerts: list[Alert]) -> None:
    """Per alert id: RAISED, RESOLVED, RAISED, ... never twice the same state in a row."""
    last: dict[str, AlertState] = {}
    for a in alerts:
        expected = AlertState.RESOLVED if last.get(a.alert_id) is AlertState.RAISED else AlertState.RAISED
        assert a.state is expected, (a.alert_id, a.state)
        last[a.alert_id] = a.state
        if a.state is AlertState.RESOLVED:
            assert a.resolved_at_ms is not None and a.resolved_at_ms >= a.raised_at_ms


def test_node_stale_then_down_then_both_resolved_by_a_heartbeat() -> None:
    e = AlertEngine(cfg())
    out = replay(e, [(T0, hb("node1", T0))] + [(T0 + i * 10 * S, None) for i in range(1, 16)])
    assert transitions(out, AlertKind.NODE_STALE) == [("NODE_STALE/node1", AlertState.RAISED)]
    assert transitions(out, AlertKind.NODE_DOWN) == [("NODE_DOWN/node1", AlertState.RAISED)]
    stale = next(a for a in out if a.kind is AlertKind.NODE_STALE)
    assert stale.node == "node1" and stale.endpoint is None and stale.severity is AlertSeverity.WARNING
    assert stale.figures["threshold_s"] == 30 and 30 < stale.figures["silent_s"] <= 40
    assert "node1" in stale.summary and "30" in stale.summary
    t = T0 + 200 * S
    back = replay(e, [(t, hb("node1", t)), (t + S, None)])
    assert sorted(transitions(back, AlertKind.NODE_STALE) + transitions(back, AlertKind.NODE_DOWN)) == [
        ("NODE_DOWN/node1", AlertState.RESOLVED), ("NODE_STALE/node1", AlertState.RESOLVED)]
    resolved = next(a for a in back if a.kind is AlertKind.NODE_DOWN)
    assert resolved.raised_at_ms == T0 + 130 * S and resolved.resolved_at_ms == t
    assert e.active() == []


def test_shutdown_is_node_down_at_once_and_boot_resolves_it() -> None:
    e = AlertEngine(cfg())
    out = replay(e, [(T0, hb("n2", T0)), (T0 + S, hb("n2", T0 + S, NodeEventKind.SHUTDOWN))])
    assert transitions(out, AlertKind.NODE_DOWN) == [("NODE_DOWN/n2", AlertState.RAISED)]
    assert "shutdown" in out[-1].summary
    out = replay(e, [(T0 + 5 * S, hb("n2", T0 + 5 * S, NodeEventKind.BOOTED))])
    assert transitions(out, AlertKind.NODE_DOWN) == [("NODE_DOWN/n2", AlertState.RESOLVED)]


def test_ami_link_down_and_up() -> None:
    e = AlertEngine(cfg())
    out = replay(e, [(T0, hb("n1", T0)), (T0 + S, hb("n1", T0 + S, NodeEventKind.AMI_DOWN, LinkState.DOWN)),
                     (T0 + 2 * S, hb("n1", T0 + 2 * S, NodeEventKind.HEARTBEAT, LinkState.DOWN)),
                     (T0 + 3 * S, hb("n1", T0 + 3 * S, NodeEventKind.AMI_UP, LinkState.UP))])
    assert transitions(out, AlertKind.AMI_LINK_DOWN) == [
        ("AMI_LINK_DOWN/n1", AlertState.RAISED), ("AMI_LINK_DOWN/n1", AlertState.RESOLVED)]
    assert out[0].severity is AlertSeverity.CRITICAL


def test_registration_storm_counts_new_live_contacts_per_node() -> None:
    e = AlertEngine(cfg())
    recs: list[tuple[int, object]] = [(T0, hb("n1", T0))]
    # 6 new contacts in 6 s (threshold 5 per 60 s); repeats of a known contact do not count.
    for i in range(6):
        recs.append((T0 + i * S, contact("n1", f"PJSIP/{1000 + i}", ContactStatus.NON_QUALIFIED, T0 + i * S)))
        recs.append((T0 + i * S, contact("n1", f"PJSIP/{1000 + i}", ContactStatus.REACHABLE, T0 + i * S)))
    recs += [(T0 + k * 10 * S, hb("n1", T0 + k * 10 * S)) for k in range(1, 8)]
    out = replay(e, recs)
    assert transitions(out, AlertKind.REGISTRATION_STORM) == [
        ("REGISTRATION_STORM/n1", AlertState.RAISED), ("REGISTRATION_STORM/n1", AlertState.RESOLVED)]
    raised = next(a for a in out if a.kind is AlertKind.REGISTRATION_STORM)
    assert raised.figures["registrations"] == 6 and raised.figures["threshold"] == 5
    assert raised.raised_at_ms == T0 + 5 * S


def test_snapshot_rows_are_not_a_storm() -> None:
    e = AlertEngine(cfg())
    out = replay(e, [(T0, contact("n1", f"PJSIP/{i}", ContactStatus.REACHABLE, T0, source=Source.SNAPSHOT))
                     for i in range(50)])
    assert transitions(out, AlertKind.REGISTRATION_STORM) == []


def test_contact_loss_is_a_share_of_the_node_contacts() -> None:
    e = AlertEngine(cfg())
    recs: list[tuple[int, object]] = [(T0, hb("n1", T0))]
    recs += [(T0, contact("n1", f"PJSIP/{i}", ContactStatus.REACHABLE, T0, source=Source.SNAPSHOT)) for i in range(10)]
    out = replay(e, recs)
    # 5 of 10 removed = 50 %: not above 50 %.
    out = replay(e, [(T0 + S, contact("n1", f"PJSIP/{i}", ContactStatus.REMOVED, T0 + S)) for i in range(5)])
    assert transitions(out, AlertKind.CONTACT_LOSS) == []
    # A duplicate Removed changes nothing; the 6th distinct one makes 60 %.
    out = replay(e, [(T0 + 2 * S, contact("n1", "PJSIP/0", ContactStatus.REMOVED, T0 + 2 * S)),
                     (T0 + 2 * S, contact("n1", "PJSIP/5", ContactStatus.REMOVED, T0 + 2 * S))])
    assert transitions(out, AlertKind.CONTACT_LOSS) == [("CONTACT_LOSS/n1", AlertState.RAISED)]
    assert out[0].figures["lost"] == 6 and out[0].figures["contacts_before"] == 10 and out[0].figures["percent"] == 60
    out = replay(e, [(T0 + k * 10 * S, hb("n1", T0 + k * 10 * S)) for k in range(1, 8)])
    assert transitions(out, AlertKind.CONTACT_LOSS) == [("CONTACT_LOSS/n1", AlertState.RESOLVED)]


def test_expire_synthetic_counts_as_loss_on_that_node_only() -> None:
    e = AlertEngine(cfg(alert_contact_loss_min=2))
    recs: list[tuple[int, object]] = [(T0, contact(n, f"PJSIP/{i}", ContactStatus.REACHABLE, T0))
                                      for n in ("a", "b") for i in range(3)]
    recs += [(T0 + S, RegistrationEvent(endpoint=f"PJSIP/{i}", node="a", producer_epoch=1, seq=99, event_time_ms=T0 + S,
                                        kind=EventKind.EXPIRE, source=Source.SYNTHETIC)) for i in range(3)]
    out = replay(e, recs)
    assert transitions(out, AlertKind.CONTACT_LOSS) == [("CONTACT_LOSS/a", AlertState.RAISED)]


def test_flapping_endpoint() -> None:
    e = AlertEngine(cfg())
    recs: list[tuple[int, object]] = [(T0, hb("n1", T0)), (T0, contact("n1", "PJSIP/1001", ContactStatus.NON_QUALIFIED, T0))]
    states = [ContactStatus.REACHABLE, ContactStatus.UNREACHABLE] * 3  # 5 changes after the first Reachable
    recs += [(T0 + (i + 1) * S, contact("n1", "PJSIP/1001", st, T0 + (i + 1) * S)) for i, st in enumerate(states)]
    recs += [(T0 + k * 10 * S, hb("n1", T0 + k * 10 * S)) for k in range(1, 14)]
    out = replay(e, recs)
    flaps = [a for a in out if a.kind is AlertKind.ENDPOINT_FLAPPING]
    assert [(a.alert_id, a.state) for a in flaps] == [
        ("ENDPOINT_FLAPPING/n1/PJSIP/1001", AlertState.RAISED), ("ENDPOINT_FLAPPING/n1/PJSIP/1001", AlertState.RESOLVED)]
    assert flaps[0].endpoint == "PJSIP/1001" and flaps[0].node == "n1" and flaps[0].figures["changes"] == 4
    assert flaps[0].raised_at_ms == T0 + 5 * S


def test_high_jitter_uses_the_window_mean_with_hysteresis() -> None:
    e = AlertEngine(cfg())
    ep = "PJSIP/1006"
    out = replay(e, [(T0 + i * 5 * S, sample(ep, T0 + i * 5 * S, jitter=40.0)) for i in range(2)])
    assert out == []  # 2 samples < quality_min_samples
    out = replay(e, [(T0 + 10 * S, sample(ep, T0 + 10 * S, jitter=40.0))])
    assert transitions(out, AlertKind.HIGH_JITTER) == [(f"HIGH_JITTER/node1/{ep}", AlertState.RAISED)]
    a = out[0]
    assert a.endpoint == ep and a.figures["jitter_mean_ms"] == 40 and a.figures["threshold_ms"] == 20
    assert a.figures["jitter_p95_ms"] == 40 and a.figures["samples"] == 3
    # Four 1 ms reports: mean (3 x 40 + 4) / 7 = 17.7 ms, below 20 but above 16 (= 0.8 x 20):
    # still raised (hysteresis), and never raised twice.
    out = replay(e, [(T0 + (3 + i) * 5 * S, sample(ep, T0 + (3 + i) * 5 * S, jitter=1.0)) for i in range(4)])
    assert out == []
    out = replay(e, [(T0 + 35 * S, sample(ep, T0 + 35 * S, jitter=1.0))])  # (120 + 5) / 8 = 15.6 < 16
    assert transitions(out, AlertKind.HIGH_JITTER) == [(f"HIGH_JITTER/node1/{ep}", AlertState.RESOLVED)]


def test_high_loss_resolves_when_the_call_ended_and_the_window_emptied() -> None:
    e = AlertEngine(cfg())
    out = replay(e, [(T0 + i * S, sample("PJSIP/7", T0 + i * S, loss=0.25)) for i in range(3)])
    assert transitions(out, AlertKind.HIGH_LOSS) == [("HIGH_LOSS/node1/PJSIP/7", AlertState.RAISED)]
    assert out[0].figures["loss_mean"] == 0.25 and "25.0%" in out[0].summary
    out = replay(e, [(T0 + 70 * S, None)])
    assert transitions(out, AlertKind.HIGH_LOSS) == [("HIGH_LOSS/node1/PJSIP/7", AlertState.RESOLVED)]
    assert e.summaries(T0 + 70 * S) == []


def test_snapshot_that_healed_too_many_contacts() -> None:
    e = AlertEngine(cfg())

    def reconcile(ep: str, seq: int, t: int) -> RegistrationEvent:
        return RegistrationEvent(endpoint=ep, node="n1", producer_epoch=5, seq=seq, event_time_ms=t,
                                 kind=EventKind.RECONCILE, source=Source.SYNTHETIC, cause="snapshot s1")

    recs: list[tuple[int, object]] = [(T0, hb("n1", T0))]
    recs += [(T0 + S, reconcile("PJSIP/1", 40, T0 + S)), (T0 + S, reconcile("PJSIP/2", 40, T0 + S)),
             (T0 + S, reconcile("PJSIP/2", 40, T0 + S))]  # a replayed duplicate
    out = replay(e, recs)
    assert transitions(out, AlertKind.SNAPSHOT_HEALED) == []  # 2 healed, threshold 2
    out = replay(e, [(T0 + 2 * S, reconcile("PJSIP/3", 40, T0 + 2 * S))])
    assert transitions(out, AlertKind.SNAPSHOT_HEALED) == [("SNAPSHOT_HEALED/n1", AlertState.RAISED)]
    assert out[0].figures["healed"] == 3 and out[0].figures["snapshot_begin_seq"] == 40
    out = replay(e, [(T0 + k * 10 * S, hb("n1", T0 + k * 10 * S)) for k in range(1, 8)])
    assert transitions(out, AlertKind.SNAPSHOT_HEALED) == [("SNAPSHOT_HEALED/n1", AlertState.RESOLVED)]


def test_old_history_raises_nothing() -> None:
    e = AlertEngine(cfg())
    old = T0 - 3600 * S
    out = replay(e, [(T0, sample("PJSIP/1", old + i, jitter=99)) for i in range(5)])
    assert out == [] and e.counts["ignored_old"] == 5


def test_summary_figures_and_rtt_trend() -> None:
    w = QualityWindow("PJSIP/1", window_ms=60_000)
    for i, (j, rtt) in enumerate([(5.0, 10.0), (7.0, 12.0), (9.0, 14.0)]):
        w.add(T0 + i * 30_000, sample("PJSIP/1", T0, jitter=j, rtt=rtt, loss=i / 100))
    s = w.summary(T0 + 60_000)
    assert (s.samples, s.jitter_last_ms, s.jitter_mean_ms, s.jitter_p95_ms) == (3, 9.0, 7.0, 9.0)
    assert s.rtt_trend_ms_per_min == 4.0  # +2 ms every 30 s
    assert s.loss_mean == 0.01 and s.rtt_mean_ms == 12.0
    assert w.summary(T0 + 90_001).samples == 1  # the first two fell out of the window
    assert p95([float(i) for i in range(1, 101)]) == 95.0


def test_alert_id_names_the_condition() -> None:
    assert alert_id(AlertKind.HIGH_JITTER, "node1", "PJSIP/1001") == "HIGH_JITTER/node1/PJSIP/1001"
    assert alert_id(AlertKind.NODE_DOWN, "node1") == "NODE_DOWN/node1"


records = st.lists(
    st.tuples(
        st.integers(0, 400),
        st.one_of(
            st.none(),
            st.builds(lambda n, k, link, t: hb(n, T0 + t * S, k, link), st.sampled_from(["a", "b"]),
                      st.sampled_from(list(NodeEventKind)), st.sampled_from(list(LinkState)), st.integers(0, 400)),
            st.builds(lambda n, e, s, t: contact(n, e, s, T0 + t * S), st.sampled_from(["a", "b"]),
                      st.sampled_from(["PJSIP/1", "PJSIP/2", "PJSIP/3"]), st.sampled_from(list(ContactStatus)),
                      st.integers(0, 400)),
            st.builds(lambda e, j, lo, t: sample(e, T0 + t * S, jitter=j, loss=lo),
                      st.sampled_from(["PJSIP/1", "PJSIP/2"]), st.floats(0, 100), st.floats(0, 1), st.integers(0, 400)),
        ),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(records)
def test_any_input_gives_alternating_pairs_and_active_matches(recs: list[tuple[int, object]]) -> None:
    e = AlertEngine(cfg())
    feed = [(T0 + t * S, r) for t, r in sorted(recs, key=lambda x: x[0])]
    out = replay(e, feed)
    assert_pairs(out)
    last = {a.alert_id: a for a in out}
    assert {a.alert_id for a in e.active()} == {i for i, a in last.items() if a.state is AlertState.RAISED}
    # Everything time-based resolves once the clock runs far enough with live, healthy nodes.
    end = T0 + 2000 * S
    calm = [(end, hb(n, end, NodeEventKind.AMI_UP, LinkState.UP)) for n in ("a", "b")]
    out2 = replay(e, calm)
    assert_pairs(out + out2)
    assert Counter(a.state for a in out + out2)[AlertState.RAISED] == Counter(a.state for a in out + out2)[AlertState.RESOLVED]


def test_contact_loss_does_not_flip_flop_at_the_threshold() -> None:
    # Partitions interleave one node's snapshot rows and removals in any order: the share of
    # lost contacts wobbles around the threshold while the records arrive.
    e = AlertEngine(cfg())
    recs: list[tuple[int, object]] = [(T0, contact("n2", f"PJSIP/{i}", ContactStatus.REACHABLE, T0)) for i in range(5)]
    recs += [(T0, contact("n2", f"PJSIP/{i}", ContactStatus.REMOVED, T0)) for i in range(3)]  # 3 of 5 = 60 %
    recs += [(T0, contact("n2", "PJSIP/9", ContactStatus.REACHABLE, T0))]  # 3 of 6 = 50 %: stays raised
    out = replay(e, recs)
    assert transitions(out, AlertKind.CONTACT_LOSS) == [("CONTACT_LOSS/n2", AlertState.RAISED)]
    out = replay(e, [(T0, contact("n2", f"PJSIP/{10 + i}", ContactStatus.REACHABLE, T0)) for i in range(3)])
    # 3 of 9 = 33 % < 40 % (0.8 x 50 %): resolved.
    assert transitions(out, AlertKind.CONTACT_LOSS) == [("CONTACT_LOSS/n2", AlertState.RESOLVED)]


def beat(node: str, epoch: int, t: int, kind: NodeEventKind = NodeEventKind.HEARTBEAT) -> NodeStatus:
    return NodeStatus(node=node, producer_epoch=epoch, seq=t, event_time_ms=t, kind=kind, ami_link=LinkState.UP)


def test_two_live_producers_of_one_node_raise_duplicate_producer_once_and_resolve() -> None:
    e = AlertEngine(cfg())
    e.on_node(beat("node1", 100, T0), T0)
    e.on_node(beat("node1", 200, T0 + 1 * S), T0 + 1 * S)  # a second producer starts
    raised = e.on_node(beat("node1", 100, T0 + 5 * S), T0 + 5 * S)  # ... while the first still beats
    assert [(a.kind, a.state) for a in raised] == [(AlertKind.DUPLICATE_PRODUCER, AlertState.RAISED)]
    assert raised[0].figures == {"older_epoch": 100.0, "newer_epoch": 200.0}
    assert raised[0].severity is AlertSeverity.CRITICAL
    assert e.on_node(beat("node1", 100, T0 + 6 * S), T0 + 6 * S) == []  # raised once
    kinds = [(a.kind, a.state) for t in range(7, 40) for a in e.on_node(beat("node1", 200, T0 + t * S), T0 + t * S)]
    assert kinds == [(AlertKind.DUPLICATE_PRODUCER, AlertState.RESOLVED)]  # the older one was fenced


def test_a_restarted_producer_is_no_duplicate() -> None:
    """A crash and a restart: the old epoch's last records arrive late (written before the new
    producer started), then only the new one speaks."""
    e = AlertEngine(cfg())
    e.on_node(beat("node1", 100, T0), T0)
    e.on_node(beat("node1", 200, T0 + 10 * S), T0 + 10 * S)
    late = e.on_node(beat("node1", 100, T0 + 1 * S), T0 + 11 * S)  # buffered, delivered after
    stopped = e.on_node(beat("node1", 100, T0 + 12 * S, NodeEventKind.STOPPED), T0 + 12 * S)
    assert late == [] and stopped == []
    assert not [a for a in e.active() if a.kind is AlertKind.DUPLICATE_PRODUCER]


def test_a_silence_credited_to_every_node_raises_nothing() -> None:
    """Every node silent for 40 s because nothing could be heard (the cluster took no writes):
    credited when the heartbeats flow again, it is no node's silence."""
    e = AlertEngine(cfg())
    out = e.on_node(hb("node1", T0), T0) + e.on_node(hb("node2", T0), T0)
    t = T0 + 40 * S
    e.credit_silence(40 * S, t)
    out += e.on_node(hb("node2", t), t) + e.tick(t) + e.tick(t + 20 * S)
    assert transitions(out, AlertKind.NODE_STALE) == []
    # node1 stays silent after the credit: NODE_STALE 30 s after the heartbeats flowed again.
    late = e.on_node(hb("node2", t + 30 * S), t + 30 * S) + e.tick(t + 31 * S)
    assert transitions(late, AlertKind.NODE_STALE) == [("NODE_STALE/node1", AlertState.RAISED)]
