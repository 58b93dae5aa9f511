"""Scenario steps and fault injection for a running ``Simulator`` (deterministic per seed).

``run_scenario(sim, name, **params)`` runs one bounded step and returns a summary; the CLI
repeats steps forever. ``--rate`` is honoured through ``Simulator.pace``.

steady   phones refresh at their expiry interval: no AMI event at all (03), and an unchanged
         qualify result emits nothing either (02, README obs. 7) — so steady is silent.
churn    random register / unregister / expire of ``count`` phones.
move     ``count`` phones re-register on another node; the old node expires them later.
calls    ``count`` calls: RINGING/INUSE → INUSE → ONHOLD → INUSE → NOT_INUSE (09).
storm    every phone of ``node`` re-registers on the other nodes (after ``node`` died).
crash    ``node`` crashes (``mode`` close|halfopen); ``restart``: Shutdown then new boot.
flapping ``phone``'s contact alternates Unreachable/Reachable ``changes`` times within ``window`` s.
bad_call ``caller`` calls ``callee`` for ``seconds`` with ``jitter_ms``/``loss`` in its RTCP (14).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from astreg.errors import SimulatorError

from .core import Simulator

__all__ = [
    "run_scenario", "SCENARIOS", "steady", "churn", "move", "calls", "storm", "crash", "restart",
    "flapping", "bad_call",
]


async def steady(sim: Simulator, count: int = 0) -> dict[str, Any]:
    await sim.pace(0)
    return {"events": 0}


async def churn(sim: Simulator, count: int = 100) -> dict[str, Any]:
    rng, ops = sim.rng, {"register": 0, "unregister": 0, "expire": 0}
    names = sim.node_names
    for _ in range(count):
        if sim.config.phones == 0:
            break
        phone = rng.randint(1, sim.config.phones)
        where = sim.location(phone)
        if where is None:
            await sim.register(phone, rng.choice(names), qualify=sim.qualified(phone), port=rng.randint(5060, 5999))
            ops["register"] += 1
        elif rng.random() < 0.8:
            await sim.unregister(phone, where)
            ops["unregister"] += 1
        else:
            await sim.expire(phone, where)
            ops["expire"] += 1
        await sim.pace(4)
    return ops


async def move(sim: Simulator, count: int = 10) -> dict[str, Any]:
    moved = 0
    names = sim.node_names
    if len(names) < 2:
        return {"moved": 0}
    for _ in range(count):
        phone = sim.rng.randint(1, max(1, sim.config.phones))
        where = sim.location(phone)
        target = sim.rng.choice([n for n in names if n != where])
        await sim.move(phone, target, port=sim.rng.randint(5060, 5999))
        moved += 1
        await sim.pace(4)
    return {"moved": moved}


async def calls(sim: Simulator, count: int = 5) -> dict[str, Any]:
    done = 0
    for _ in range(count):
        registered = [p for p in (sim.rng.randint(1, max(1, sim.config.phones)) for _ in range(8)) if sim.location(p)]
        if len(set(registered)) < 2:
            continue
        a, b = registered[0], next(p for p in registered if p != registered[0])
        await sim.call(a, b)
        await sim.hold(a, b)
        await sim.unhold(a, b)
        await sim.hangup(a, b)
        done += 1
        await sim.pace(7)
    return {"calls": done}


async def storm(sim: Simulator, node: str = "node1", mode: str = "close") -> dict[str, Any]:
    victim = sim.node(node)
    if victim.ami == "up":
        await sim.crash(node, mode)
    others = [n for n in sim.node_names if n != node]
    moved = 0
    for i, phone in enumerate(list(victim.contacts)):
        if not others:
            break
        await sim.move(phone, others[i % len(others)], port=5060 + (phone % 900))
        moved += 1
        await sim.pace(4)
    return {"moved": moved}


async def crash(sim: Simulator, node: str = "node1", mode: str = "close") -> dict[str, Any]:
    await sim.crash(node, mode)
    return {"crashed": node, "mode": mode}


async def restart(sim: Simulator, node: str = "node1") -> dict[str, Any]:
    await sim.restart(node)
    return {"restarted": node, "boot_time": int(sim.node(node).boot_time)}


async def flapping(sim: Simulator, phone: int | str = 1, changes: int = 6, window: float = 10.0) -> dict[str, Any]:
    """A qualified contact alternating Unreachable/Reachable ``changes`` times within ``window`` s."""
    p = sim.phone_index(phone)
    node = sim.location(p)
    if node is None:
        raise SimulatorError(f"phone {phone} is not registered anywhere")
    if changes < 1 or window < 0:
        raise SimulatorError("flapping needs changes >= 1 and window >= 0")
    await sim.qualify(p, node, True)  # start from Reachable: NonQualified -> Reachable is no flap
    for i in range(changes):
        await asyncio.sleep(window / changes)
        await sim.qualify(p, node, reachable=i % 2 == 1)
    return {"phone": p, "node": node, "changes": changes}


async def bad_call(sim: Simulator, caller: int | str = 1, callee: int | str = 2, seconds: float = 10.0,
                   jitter_ms: float = 60.0, loss: float = 0.1) -> dict[str, Any]:
    """An answered call with poor media for ``seconds``: its RTCP reports carry the jitter/loss."""
    await sim.call(caller, callee, jitter_ms=jitter_ms, loss=loss)
    try:
        await asyncio.sleep(seconds)
    finally:
        await sim.hangup(caller, callee)
    return {"caller": caller, "callee": callee, "seconds": seconds}


SCENARIOS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {"steady": steady, "churn": churn, "move": move, "calls": calls, "storm": storm, "crash": crash,
             "restart": restart, "flapping": flapping, "bad_call": bad_call}


async def run_scenario(sim: Simulator, name: str, **params: Any) -> dict[str, Any]:
    fn = SCENARIOS.get(name)
    if fn is None:
        raise SimulatorError(f"unknown scenario {name!r} (have {', '.join(SCENARIOS)})")
    try:
        inspect.signature(fn).bind(sim, **params)
    except TypeError as exc:
        raise SimulatorError(f"bad parameters for scenario {name!r}: {exc}") from exc
    result: dict[str, Any] = await fn(sim, **params)
    return result
