"""The alerting engine: registrations, node status and quality samples in, Alert transitions out.

Pure and clock-free: the runner (``streams/alerts/runner.py``) feeds :class:`AlertEngine` with the
records it consumes (``on_registration``, ``on_node``, ``on_quality``) and calls ``tick(now_ms)``
every second; each call returns the :class:`~schemas.quality.Alert` records to publish. An
alert is identified by ``KIND/node[/endpoint]``; it is RAISED once when its condition starts and
RESOLVED once when it ends (with the same ``raised_at_ms``), never repeated while active.

Windows use the records' ``event_time_ms`` (clamped to ``now_ms``) and are evicted against
``now_ms``, so a restarted alerter replaying old history does not raise stale storms: records
older than every window only update the known contacts. Thresholds are :class:`AlertSettings`
(``ASTREG_ALERT_*``). Conditions:

* NODE_STALE / NODE_DOWN — no record from the node's producer for ``node_stale_s`` /
  ``node_down_s`` (NODE_DOWN also at once on Asterisk ``SHUTDOWN``); resolved by a new record.
* AMI_LINK_DOWN — the producer reports its AMI link down; resolved when it is up again.
* REGISTRATION_STORM — more than ``storm_registrations`` new contacts on a node within
  ``storm_window_s``.
* CONTACT_LOSS — a node lost more than ``contact_loss_percent`` of its contacts (and at least
  ``contact_loss_min`` of them) within ``contact_loss_window_s``.
* ENDPOINT_FLAPPING — at least ``flapping_changes`` Reachable/Unreachable changes of one
  endpoint's contacts on a node within ``flapping_window_s``.
* HIGH_JITTER / HIGH_LOSS — the mean RTCP jitter / fraction lost of an endpoint on a node over
  ``quality_window_s`` is above its threshold (at least ``quality_min_samples`` samples);
  resolved below ``resolve_ratio`` × threshold or when the window is empty.

Every threshold resolves with hysteresis (``resolve_ratio`` × threshold once raised), so a
figure hovering at the edge does not flip the alert back and forth.
* SNAPSHOT_HEALED — one snapshot of a node had to remove (RECONCILE) more than
  ``snapshot_healed_contacts`` contacts: events were lost. Resolved after ``snapshot_window_s``.
* DUPLICATE_PRODUCER — two producer processes (two epochs) speak for one node id within
  ``node_stale_s``: two producers were started with the same node id. The older one stops
  itself (fenced) once it reads the newer one's records; resolved when only one is heard.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from pydantic import Field

from astreg.settings import AstregSettings
from schemas.models import ContactStatus, EventKind, NodeEventKind, NodeStatus, RegistrationEvent, Source
from schemas.quality import Alert, AlertKind, AlertSeverity, AlertState, QualityKind, QualitySample
from streams.alerts.windows import QualitySummary, QualityWindow

__all__ = ["AlertSettings", "AlertEngine", "alert_id", "replay"]

logger = logging.getLogger(__name__)

SEVERITY = {
    AlertKind.NODE_STALE: AlertSeverity.WARNING,
    AlertKind.NODE_DOWN: AlertSeverity.CRITICAL,
    AlertKind.AMI_LINK_DOWN: AlertSeverity.CRITICAL,
    AlertKind.REGISTRATION_STORM: AlertSeverity.WARNING,
    AlertKind.CONTACT_LOSS: AlertSeverity.CRITICAL,
    AlertKind.ENDPOINT_FLAPPING: AlertSeverity.WARNING,
    AlertKind.HIGH_JITTER: AlertSeverity.WARNING,
    AlertKind.HIGH_LOSS: AlertSeverity.WARNING,
    AlertKind.SNAPSHOT_HEALED: AlertSeverity.INFO,
    AlertKind.DUPLICATE_PRODUCER: AlertSeverity.CRITICAL,
}


class AlertSettings(AstregSettings):
    """Alert thresholds and windows (every field is an ``--alert-*`` option / ``ASTREG_ALERT_*``)."""

    alert_node_stale_s: float = Field(
        30.0, gt=0, description="Silence of a node's producer before NODE_STALE (s)."
    )
    alert_node_down_s: float = Field(
        120.0, gt=0, description="Silence of a node's producer before NODE_DOWN (s)."
    )
    alert_storm_registrations: int = Field(
        200, ge=1, description="New contacts per node and storm window that make a REGISTRATION_STORM."
    )
    alert_storm_window_s: float = Field(60.0, gt=0, description="Registration storm window (s).")
    alert_contact_loss_percent: float = Field(
        50.0,
        gt=0,
        le=100,
        description="Share of a node's contacts lost within the window that raises CONTACT_LOSS (%).",
    )
    alert_contact_loss_min: int = Field(5, ge=1, description="Fewest lost contacts for CONTACT_LOSS.")
    alert_contact_loss_window_s: float = Field(120.0, gt=0, description="Contact loss window (s).")
    alert_flapping_changes: int = Field(
        6,
        ge=2,
        description="Reachable/Unreachable changes of one endpoint within the window that make it flapping.",
    )
    alert_flapping_window_s: float = Field(300.0, gt=0, description="Flapping window (s).")
    alert_jitter_ms: float = Field(
        30.0, gt=0, description="Mean RTCP interarrival jitter above which HIGH_JITTER is raised (ms)."
    )
    alert_loss_fraction: float = Field(
        0.05, gt=0, le=1, description="Mean RTCP fraction lost above which HIGH_LOSS is raised (0..1)."
    )
    alert_quality_window_s: float = Field(
        300.0, gt=0, description="Window of the jitter/loss/RTT figures (s)."
    )
    alert_quality_min_samples: int = Field(
        3, ge=1, description="Fewest RTCP samples in the window before jitter/loss may alert."
    )
    alert_resolve_ratio: float = Field(
        0.8, gt=0, le=1, description="Jitter/loss alerts resolve below this fraction of their threshold."
    )
    alert_snapshot_healed_contacts: int = Field(
        5, ge=0, description="Contacts one snapshot may heal (RECONCILE) before SNAPSHOT_HEALED."
    )
    alert_snapshot_window_s: float = Field(
        300.0, gt=0, description="How long a SNAPSHOT_HEALED alert stays raised (s)."
    )


_QUALITY_KINDS = (AlertKind.HIGH_JITTER, AlertKind.HIGH_LOSS)


def alert_id(kind: AlertKind, node: str | None, endpoint: str | None = None) -> str:
    """``KIND/node[/endpoint]``: stable for one condition, the Kafka key of the alert."""
    return "/".join(p for p in (kind.value, node or "-", endpoint) if p is not None)


@dataclass
class _Node:
    last_seen_ms: int = 0
    shutdown: bool = False
    ami_down: bool = False
    contacts: set[tuple[str, str]] = field(default_factory=set)  # (endpoint, uri)
    new_contacts: deque[int] = field(default_factory=deque)
    lost_contacts: deque[int] = field(default_factory=deque)
    healed: dict[tuple[int, int], set[str]] = field(default_factory=dict)  # (epoch, seq) -> endpoints
    healed_at: dict[tuple[int, int], int] = field(default_factory=dict)
    newest_epoch: int = -1  # the newest producer of the node, and the time of its first record
    newest_since_ms: int = 0
    rival_epoch: int | None = None  # an older producer still sending after the newest one started
    rival_at_ms: int = 0


@dataclass
class _Condition:
    """What a condition check says: active or not, and (lazily: most checks change nothing) why,
    with which figures."""

    active: bool
    describe: Callable[[], tuple[str, dict[str, float]]]


class AlertEngine:
    """Windowed aggregates per node and endpoint; raises and resolves alerts as pairs."""

    def __init__(self, settings: AlertSettings | None = None) -> None:
        self.s = settings or AlertSettings()
        self._nodes: dict[str, _Node] = {}
        self._status: dict[tuple[str, str, str], ContactStatus] = {}  # (node, endpoint, uri)
        self._flaps: dict[tuple[str, str], deque[int]] = {}  # (node, endpoint) -> change times
        self._quality: dict[tuple[str, str], QualityWindow] = {}  # (node, endpoint)
        self._active: dict[tuple[AlertKind, str | None, str | None], Alert] = {}
        self._next_sweep = 0
        self.counts: dict[str, int] = {"registrations": 0, "nodes": 0, "quality": 0, "ignored_old": 0}

    # ------------------------------------------------------------------ inputs

    def credit_silence(self, gap_ms: int, now_ms: int) -> None:
        """Every node was silent for ``gap_ms`` because nothing could be heard (the cluster took
        no writes, or the alerter could not read): that time is not any node's silence."""
        for n in self._nodes.values():
            n.last_seen_ms = min(now_ms, n.last_seen_ms + gap_ms)

    def on_node(self, ns: NodeStatus, now_ms: int) -> list[Alert]:
        self.counts["nodes"] += 1
        n = self._node(ns.node, min(ns.event_time_ms, now_ms))
        n.last_seen_ms = max(n.last_seen_ms, min(ns.event_time_ms, now_ms))
        t = min(ns.event_time_ms, now_ms)
        if ns.producer_epoch > n.newest_epoch:
            n.newest_epoch, n.newest_since_ms = ns.producer_epoch, t
        elif (ns.producer_epoch < n.newest_epoch and ns.kind is not NodeEventKind.STOPPED
              and t > n.newest_since_ms + 1000):
            # Written after the newest producer had started (a record only delayed in transit
            # carries an earlier time): two producers are alive for one node id.
            n.rival_epoch, n.rival_at_ms = ns.producer_epoch, now_ms
        if ns.kind is NodeEventKind.SHUTDOWN:
            n.shutdown = True
        elif ns.kind not in (NodeEventKind.UNKNOWN, NodeEventKind.STOPPED):
            n.shutdown = False
        if ns.kind is NodeEventKind.AMI_DOWN or ns.ami_link.value == "DOWN":
            n.ami_down = True
        elif ns.kind is NodeEventKind.AMI_UP or ns.ami_link.value == "UP":
            n.ami_down = False
        return self._check_node(ns.node, now_ms)

    def on_registration(self, ev: RegistrationEvent, now_ms: int) -> list[Alert]:
        self.counts["registrations"] += 1
        t = min(ev.event_time_ms, now_ms)
        n = self._node(ev.node, t)
        if ev.source is not Source.SYNTHETIC:
            n.last_seen_ms = max(n.last_seen_ms, t)
        out: list[Alert] = []
        key = (ev.endpoint, ev.contact_uri or "")
        if ev.kind is EventKind.CONTACT and ev.contact_status is not None:
            if ev.contact_status is ContactStatus.REMOVED:
                if key in n.contacts:
                    n.contacts.discard(key)
                    n.lost_contacts.append(t)
            else:
                if key not in n.contacts and ev.source is Source.LIVE:
                    n.new_contacts.append(t)
                n.contacts.add(key)
            out += self._track_flapping(ev, t, now_ms)
        elif ev.kind is EventKind.EXPIRE:
            gone = {c for c in n.contacts if c[0] == ev.endpoint}
            if gone:
                n.contacts -= gone
                n.lost_contacts.extend([t] * len(gone))
        elif ev.kind is EventKind.RECONCILE:
            snap = (ev.producer_epoch, ev.seq)
            n.healed.setdefault(snap, set()).add(ev.endpoint)
            n.healed_at[snap] = t
            n.contacts -= {c for c in n.contacts if c[0] == ev.endpoint}
        out += self._check_node(ev.node, now_ms)
        return out

    def on_quality(self, sample: QualitySample, now_ms: int) -> list[Alert]:
        self.counts["quality"] += 1
        t = min(sample.event_time_ms, now_ms)
        if t < now_ms - self.s.alert_quality_window_s * 1000:
            self.counts["ignored_old"] += 1
            return []
        key = (sample.node, sample.endpoint)
        win = self._quality.get(key)
        if win is None:
            win = self._quality[key] = QualityWindow(
                sample.endpoint, int(self.s.alert_quality_window_s * 1000)
            )
        win.add(t, sample)
        if sample.kind is not QualityKind.RTCP:
            return []
        return self._check_quality(key, now_ms)

    def tick(self, now_ms: int) -> list[Alert]:
        """Re-evaluate every time-based condition at ``now_ms``."""
        out: list[Alert] = []
        for node in list(self._nodes):
            out += self._check_node(node, now_ms)
        for key in list(self._flaps):
            out += self._check_flapping(key, now_ms)
        # Only a window with an active alert can change state by ageing (its mean falls as
        # samples leave); the others are checked on each new sample and swept now and then.
        for key in [(n or "", e or "") for (k, n, e) in self._active if k in _QUALITY_KINDS]:
            if key in self._quality:
                out += self._check_quality(key, now_ms)
        if now_ms >= self._next_sweep:  # forget endpoints without samples in the window
            self._next_sweep = now_ms + 10_000
            for key, win in list(self._quality.items()):
                win.evict(now_ms)
                if win.empty() and not self._is_active_quality(key):
                    del self._quality[key]
        for a in list(self._active.values()):
            if not self._tracked(a):  # restored from a previous run, its subject is gone
                out += self._set(
                    a.kind,
                    a.node,
                    a.endpoint,
                    _Condition(
                        False,
                        lambda: (
                            "no longer observed (the alerter restarted and its subject sent nothing since)",
                            {},
                        ),
                    ),
                    now_ms,
                )
        return out

    def _tracked(self, a: Alert) -> bool:
        if a.kind is AlertKind.ENDPOINT_FLAPPING:
            return (a.node or "", a.endpoint or "") in self._flaps
        if a.kind in (AlertKind.HIGH_JITTER, AlertKind.HIGH_LOSS):
            return (a.node or "", a.endpoint or "") in self._quality
        return a.kind is not AlertKind.UNKNOWN and a.node in self._nodes

    def restore(self, alerts: list[Alert]) -> None:
        """Take over the alerts a previous run left active (read back from the alerts topic)."""
        for a in alerts:
            if a.state is AlertState.RAISED:
                self._active[(a.kind, a.node, a.endpoint)] = a

    # ------------------------------------------------------------------ outputs

    def active(self) -> list[Alert]:
        return sorted(self._active.values(), key=lambda a: a.alert_id)

    def summaries(self, now_ms: int) -> list[QualitySummary]:
        """The quality figures of every endpoint (per node) with samples in the window."""
        return [w.summary(now_ms) for _, w in sorted(self._quality.items())]

    def endpoint_quality(self, endpoint: str, now_ms: int) -> dict[str, object] | None:
        """The figures of one endpoint (its most recent node) and the points of its chart."""
        wins = [w for (_, ep), w in self._quality.items() if ep == endpoint]
        best = max(
            ((w.summary(now_ms), w) for w in wins), key=lambda sw: sw[0].last_sample_ms or 0, default=None
        )
        if best is None or best[0].last_sample_ms is None:
            return None
        summary, win = best
        return {**summary.as_dict(), "points": win.points(now_ms)}

    def summary(self, endpoint: str, now_ms: int) -> QualitySummary | None:
        wins = [w for (_, ep), w in self._quality.items() if ep == endpoint]
        sums = [w.summary(now_ms) for w in wins]
        sums = [s for s in sums if s.last_sample_ms is not None]
        return max(sums, key=lambda s: s.last_sample_ms or 0) if sums else None

    # ------------------------------------------------------------------ conditions

    def _node(self, node: str, t_ms: int) -> _Node:
        n = self._nodes.get(node)
        if n is None:  # first heard of now: silence is counted from here
            n = self._nodes[node] = _Node(last_seen_ms=t_ms)
        return n

    def _set(
        self, kind: AlertKind, node: str | None, endpoint: str | None, cond: _Condition, now_ms: int
    ) -> list[Alert]:
        key = (kind, node, endpoint)
        current = self._active.get(key)
        if cond.active == (current is not None):  # the usual case: nothing changes
            return []
        if cond.active:
            aid = alert_id(kind, node, endpoint)
            summary, figures = cond.describe()
            alert = Alert(
                alert_id=aid,
                kind=kind,
                state=AlertState.RAISED,
                severity=SEVERITY[kind],
                node=node,
                endpoint=endpoint,
                summary=summary,
                figures=figures,
                raised_at_ms=now_ms,
            )
            self._active[key] = alert
            logger.info("alert raised %s: %s", aid, summary)
            return [alert]
        else:
            assert current is not None
            aid = current.alert_id
            del self._active[key]
            summary, now_figures = cond.describe()
            figures = dict(current.figures)
            figures.update(now_figures)
            resolved = replace(
                current,
                state=AlertState.RESOLVED,
                resolved_at_ms=now_ms,
                figures=figures,
                summary=f"resolved: {summary}",
            )
            logger.info("alert resolved %s", aid)
            return [resolved]
        return []

    def _check_node(self, node: str, now_ms: int) -> list[Alert]:
        n = self._nodes[node]
        silent_s = max(0.0, (now_ms - n.last_seen_ms) / 1000)
        out = self._set(
            AlertKind.NODE_STALE,
            node,
            None,
            _Condition(
                silent_s > self.s.alert_node_stale_s,
                lambda: (
                    f"node {node}: no heartbeat or event from its producer for {silent_s:.0f} s "
                    f"(stale after {self.s.alert_node_stale_s:g} s)",
                    {"silent_s": silent_s, "threshold_s": self.s.alert_node_stale_s},
                ),
            ),
            now_ms,
        )
        down = n.shutdown or silent_s > self.s.alert_node_down_s
        why = "Asterisk announced a shutdown" if n.shutdown else f"silent for {silent_s:.0f} s"
        out += self._set(
            AlertKind.NODE_DOWN,
            node,
            None,
            _Condition(
                down,
                lambda: (
                    f"node {node} is down: {why} (down after {self.s.alert_node_down_s:g} s of silence)",
                    {
                        "silent_s": silent_s,
                        "threshold_s": self.s.alert_node_down_s,
                        "shutdown": float(n.shutdown),
                    },
                ),
            ),
            now_ms,
        )
        out += self._set(
            AlertKind.AMI_LINK_DOWN,
            node,
            None,
            _Condition(
                n.ami_down,
                lambda: (
                    f"node {node}: the producer lost its AMI link (contacts kept, marked stale)",
                    {"contacts": float(len(n.contacts))},
                ),
            ),
            now_ms,
        )
        rival = n.rival_epoch is not None and now_ms - n.rival_at_ms <= self.s.alert_node_stale_s * 1000
        out += self._set(
            AlertKind.DUPLICATE_PRODUCER,
            node,
            None,
            _Condition(
                rival,
                lambda: (
                    f"node {node}: two producers speak for this node id (epochs {n.rival_epoch} and "
                    f"{n.newest_epoch}); the older one stops itself (fenced) when it reads the newer one's records",
                    {"older_epoch": float(n.rival_epoch or 0), "newer_epoch": float(n.newest_epoch)},
                ),
            ),
            now_ms,
        )
        out += self._check_storm(node, n, now_ms)
        out += self._check_loss(node, n, now_ms)
        out += self._check_healed(node, n, now_ms)
        return out

    def _check_storm(self, node: str, n: _Node, now_ms: int) -> list[Alert]:
        window = self.s.alert_storm_window_s
        _evict(n.new_contacts, now_ms - window * 1000)
        count = len(n.new_contacts)
        limit = float(self.s.alert_storm_registrations)
        if (AlertKind.REGISTRATION_STORM, node, None) in self._active:
            limit *= self.s.alert_resolve_ratio  # hysteresis: no flip-flop at the edge
        return self._set(
            AlertKind.REGISTRATION_STORM,
            node,
            None,
            _Condition(
                count > limit,
                lambda: (
                    f"node {node}: {count} new registrations in {window:g} s "
                    f"(more than {self.s.alert_storm_registrations})",
                    {
                        "registrations": float(count),
                        "threshold": float(self.s.alert_storm_registrations),
                        "window_s": window,
                        "rate_per_s": count / window,
                    },
                ),
            ),
            now_ms,
        )

    def _check_loss(self, node: str, n: _Node, now_ms: int) -> list[Alert]:
        window = self.s.alert_contact_loss_window_s
        _evict(n.lost_contacts, now_ms - window * 1000)
        lost = len(n.lost_contacts)
        before = lost + len(n.contacts)
        pct = 100.0 * lost / before if before else 0.0
        limit = self.s.alert_contact_loss_percent
        if (AlertKind.CONTACT_LOSS, node, None) in self._active:
            limit *= self.s.alert_resolve_ratio
        return self._set(
            AlertKind.CONTACT_LOSS,
            node,
            None,
            _Condition(
                lost >= self.s.alert_contact_loss_min and pct > limit,
                lambda: (
                    f"node {node} lost {lost} of its {before} contacts ({pct:.0f} %) in {window:g} s "
                    f"(alert above {self.s.alert_contact_loss_percent:g} %)",
                    {
                        "lost": float(lost),
                        "contacts_before": float(before),
                        "percent": pct,
                        "threshold_percent": self.s.alert_contact_loss_percent,
                        "window_s": window,
                    },
                ),
            ),
            now_ms,
        )

    def _check_healed(self, node: str, n: _Node, now_ms: int) -> list[Alert]:
        cutoff = now_ms - self.s.alert_snapshot_window_s * 1000
        for snap in [s for s, t in n.healed_at.items() if t < cutoff]:
            del n.healed_at[snap]
            del n.healed[snap]
        worst = max(n.healed.items(), key=lambda kv: len(kv[1]), default=None)
        healed = len(worst[1]) if worst else 0
        return self._set(
            AlertKind.SNAPSHOT_HEALED,
            node,
            None,
            _Condition(
                healed > self.s.alert_snapshot_healed_contacts,
                lambda: (
                    f"node {node}: a snapshot had to remove {healed} contacts nobody announced "
                    f"(AMI events were lost; more than {self.s.alert_snapshot_healed_contacts})",
                    {
                        "healed": float(healed),
                        "threshold": float(self.s.alert_snapshot_healed_contacts),
                        "snapshot_epoch": float(worst[0][0]) if worst else 0.0,
                        "snapshot_begin_seq": float(worst[0][1]) if worst else 0.0,
                    },
                ),
            ),
            now_ms,
        )

    def _track_flapping(self, ev: RegistrationEvent, t: int, now_ms: int) -> list[Alert]:
        skey = (ev.node, ev.endpoint, ev.contact_uri or "")
        status = ev.contact_status
        before = self._status.get(skey)
        if status is ContactStatus.REMOVED:
            self._status.pop(skey, None)
            return []
        assert status is not None
        self._status[skey] = status
        pair = {ContactStatus.REACHABLE, ContactStatus.UNREACHABLE}
        if (
            before in pair
            and status in pair
            and before is not status
            and t >= now_ms - self.s.alert_flapping_window_s * 1000
        ):
            fkey = (ev.node, ev.endpoint)
            self._flaps.setdefault(fkey, deque()).append(t)
            return self._check_flapping(fkey, now_ms)
        return []

    def _check_flapping(self, key: tuple[str, str], now_ms: int) -> list[Alert]:
        node, endpoint = key
        changes = self._flaps[key]
        window = self.s.alert_flapping_window_s
        _evict(changes, now_ms - window * 1000)
        count = len(changes)
        limit = float(self.s.alert_flapping_changes)
        if (AlertKind.ENDPOINT_FLAPPING, node, endpoint) in self._active:
            limit *= self.s.alert_resolve_ratio
        out = self._set(
            AlertKind.ENDPOINT_FLAPPING,
            node,
            endpoint,
            _Condition(
                count >= limit,
                lambda: (
                    f"{endpoint} on node {node} changed between Reachable and Unreachable {count} times in {window:g} s "
                    f"(flapping from {self.s.alert_flapping_changes})",
                    {
                        "changes": float(count),
                        "threshold": float(self.s.alert_flapping_changes),
                        "window_s": window,
                    },
                ),
            ),
            now_ms,
        )
        if not changes and (AlertKind.ENDPOINT_FLAPPING, node, endpoint) not in self._active:
            del self._flaps[key]
        return out

    def _is_active_quality(self, key: tuple[str, str]) -> bool:
        node, endpoint = key
        return any((k, node, endpoint) in self._active for k in (AlertKind.HIGH_JITTER, AlertKind.HIGH_LOSS))

    def _check_quality(self, key: tuple[str, str], now_ms: int) -> list[Alert]:
        node, endpoint = key
        win = self._quality[key]
        win.evict(now_ms)
        enough = win.rtcp_samples() >= self.s.alert_quality_min_samples
        out = self._quality_alert(
            AlertKind.HIGH_JITTER, key, win, now_ms, enough, win.jitter_mean(), self.s.alert_jitter_ms
        )
        out += self._quality_alert(
            AlertKind.HIGH_LOSS, key, win, now_ms, enough, win.loss_mean(), self.s.alert_loss_fraction
        )
        return out

    def _quality_alert(
        self,
        kind: AlertKind,
        key: tuple[str, str],
        win: QualityWindow,
        now_ms: int,
        enough: bool,
        value: float | None,
        threshold: float,
    ) -> list[Alert]:
        node, endpoint = key
        if value is None:
            on = False
        elif (kind, node, endpoint) in self._active:
            on = value > threshold * self.s.alert_resolve_ratio  # hysteresis: no flip-flop at the edge
        else:
            on = enough and value > threshold

        def describe() -> tuple[str, dict[str, float]]:
            q = win.summary(now_ms)
            if kind is AlertKind.HIGH_JITTER:
                figs = {
                    "jitter_last_ms": q.jitter_last_ms,
                    "jitter_mean_ms": q.jitter_mean_ms,
                    "jitter_p95_ms": q.jitter_p95_ms,
                    "threshold_ms": threshold,
                }
                text = f"mean jitter {value:.1f} ms" if value is not None else "no RTCP samples"
            else:
                figs = {
                    "loss_last": q.loss_last,
                    "loss_mean": q.loss_mean,
                    "loss_p95": q.loss_p95,
                    "threshold": threshold,
                }
                text = f"mean packet loss {value:.1%}" if value is not None else "no RTCP samples"
            figs.update(
                {
                    "samples": float(q.samples),
                    "window_s": q.window_ms / 1000,
                    "rtt_trend_ms_per_min": q.rtt_trend_ms_per_min,
                }
            )
            summary = (
                f"{endpoint} on node {node}: {text} over {q.window_ms / 1000:g} s "
                f"({q.samples} RTCP reports; alert above {threshold:g})"
            )
            return summary, {k: v for k, v in figs.items() if v is not None}

        return self._set(kind, node, endpoint, _Condition(on, describe), now_ms)


def _evict(times: deque[int], cutoff: float) -> None:
    while times and times[0] < cutoff:
        times.popleft()


def replay(engine: AlertEngine, records: Iterable[tuple[int, object]]) -> list[Alert]:
    """Feed ``(now_ms, record)`` pairs (tests, benchmarks); ``None`` records are ticks."""
    out: list[Alert] = []
    for now, rec in records:
        if isinstance(rec, RegistrationEvent):
            out += engine.on_registration(rec, now)
        elif isinstance(rec, NodeStatus):
            out += engine.on_node(rec, now)
        elif isinstance(rec, QualitySample):
            out += engine.on_quality(rec, now)
        out += engine.tick(now)
    return out
