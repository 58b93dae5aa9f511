"""A reference model of the table's truth, written independently of streams/rules.py.

It judges an endpoint's whole partition history at once instead of folding events: keep an
event only if its (epoch, seq) beats every earlier kept event of its node; a contact (node, URI)
exists if its last kept event is not a removal; its registration position is the index of the
first kept event after its last removal; the primary is the routable contact with the highest
such position (then unreachable ones), ties broken by (node, URI); the device state is the last
kept DEVICE state of the primary's node. Used by the hypothesis property tests.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.models import ContactStatus, DeviceState, EventKind, RegistrationEvent

__all__ = ["Truth", "reference"]


@dataclass(frozen=True)
class Truth:
    contacts: frozenset[tuple[str, str, ContactStatus]]
    primary: tuple[str, str] | None
    device_state: DeviceState


def reference(history: list[RegistrationEvent]) -> Truth:
    best: dict[str, tuple[int, int]] = {}
    kept: list[tuple[int, RegistrationEvent]] = []
    for i, ev in enumerate(history):
        stamp = (ev.producer_epoch, ev.seq)
        if ev.node in best and stamp <= best[ev.node]:
            continue
        best[ev.node] = stamp
        kept.append((i, ev))
    idents = {(ev.node, ev.contact_uri) for _, ev in kept if ev.kind is EventKind.CONTACT}
    alive: dict[tuple[str, str], tuple[int, ContactStatus]] = {}
    for ident in idents:
        mine = [(i, ev) for i, ev in kept if ev.kind is EventKind.CONTACT and (ev.node, ev.contact_uri) == ident]
        if mine[-1][1].contact_status is ContactStatus.REMOVED:
            continue
        removals = [k for k, (_, ev) in enumerate(mine) if ev.contact_status is ContactStatus.REMOVED]
        life = mine[removals[-1] + 1:] if removals else mine
        alive[ident] = (life[0][0], life[-1][1].contact_status or ContactStatus.UNKNOWN)  # type: ignore[index]
    routable = [k for k, (_, st) in alive.items() if st is not ContactStatus.UNREACHABLE]
    pool = routable or list(alive)
    primary = max(pool, key=lambda k: (alive[k][0], k)) if pool else None
    device = DeviceState.UNKNOWN
    if primary is not None:
        states = [ev.device_state for _, ev in kept if ev.kind is EventKind.DEVICE and ev.node == primary[0]]
        if states:
            device = states[-1] or DeviceState.UNKNOWN
    return Truth(
        contacts=frozenset((n, u, st) for (n, u), (_, st) in alive.items()),
        primary=primary,
        device_state=device,
    )
