"""What the whole pipeline must converge to, computed from the simulator's truth.

The expected primaries come from :func:`astreg.tools.e2e.primaries` (SPEC item 3 applied to the
simulator's own state, not the stream's code); ``diff`` explains a mismatch in words.
"""

from __future__ import annotations

from astreg.tools.e2e import primaries

__all__ = ["primaries", "diff"]


def diff(want: dict[str, str], have: dict[str, str | None]) -> list[str]:
    """Human-readable differences between expected primaries and a store's endpoint → node."""
    problems = []
    for ep, node in sorted(want.items()):
        got = have.get(ep)
        if got is None:
            problems.append(f"missing {ep} (expected on {node})")
        elif got != node:
            problems.append(f"wrong node for {ep}: {got}, expected {node}")
    for ep in sorted(have.keys() - want.keys()):
        problems.append(f"extra {ep} on {have[ep]}")
    return problems
