"""What the whole pipeline must converge to, computed from the simulator's truth.

``expected(truth)`` → ``{endpoint: Expected(primary_node, nodes, device_state)}`` using SPEC's
rules directly on the simulator's own state (not the stream's code): primary = node of the most
recently registered contact (``registered_seq``) among reachable / not-qualified contacts, else
among the rest. Nodes that are down (crashed, not recovered) are excluded when ``live_only``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROUTABLE = {"Reachable", "NonQualified"}


@dataclass(frozen=True)
class Expected:
    primary_node: str
    nodes: frozenset[str]
    device_state: str | None


def expected(truth: dict[str, Any], *, live_only: bool = False) -> dict[str, Expected]:
    best: dict[str, tuple[bool, int, str]] = {}
    nodes: dict[str, set[str]] = {}
    for node, info in truth["nodes"].items():
        if live_only and not info.get("up", True):
            continue
        for c in info.get("contacts", []):
            ep = c["endpoint"]
            nodes.setdefault(ep, set()).add(node)
            rank = (c["status"] in ROUTABLE, int(c["registered_seq"]), node)
            if ep not in best or rank > best[ep]:
                best[ep] = rank
    out = {}
    for ep, (_, _, node) in best.items():
        state = truth["nodes"][node].get("device_states", {}).get(ep)
        out[ep] = Expected(node, frozenset(nodes[ep]), state)
    return out


def diff(want: dict[str, Expected], have: dict[str, str | None]) -> list[str]:
    """Human-readable differences between expected primaries and a store's endpoint → node."""
    problems = []
    for ep, exp in want.items():
        got = have.get(ep)
        if got is None:
            problems.append(f"missing {ep} (expected on {exp.primary_node})")
        elif got != exp.primary_node:
            problems.append(f"wrong node for {ep}: {got}, expected {exp.primary_node}")
    for ep in have.keys() - want.keys():
        problems.append(f"extra {ep} on {have[ep]}")
    return problems
