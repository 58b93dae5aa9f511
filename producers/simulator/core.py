"""The ``Simulator``: N fake Asterisk 22 nodes speaking real AMI over TCP, driven from Python.

    async with Simulator(SimConfig(nodes=3, phones=100, ami_port=0)) as sim:
        await sim.register(5, "node2")
        sim.truth()   # what the astreg pipeline must converge to

Every method changes node state and emits exactly the AMI events Asterisk 22 emits for that
change (see docs/simulator.md). Contacts survive a restart (``PruneOnBoot: no``, as Asterisk's
sorcery/astdb-backed contacts do); calls do not.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from typing import Any

from astreg.errors import SimulatorError

from .config import SimConfig
from .faults import FAULTS, fault_bytes
from .media import Leg, rtcp_events
from .node import AmiNode
from .state import DEVICE_STATES, STATUS_NAMES

logger = logging.getLogger(__name__)

__all__ = ["Simulator"]


class Simulator:
    """N simulated Asterisk nodes plus the phones registered on them."""

    def __init__(self, config: SimConfig | None = None):
        self.config = config or SimConfig()
        self.rng = random.Random(self.config.seed)
        self.seq = 0
        self.nodes: dict[str, AmiNode] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._expiry_task: asyncio.Task[None] | None = None
        self._started = False
        self._rate_tokens = 0.0
        self._rate_at = 0.0
        self.control: Any = None  # ControlServer when started by the CLI
        self._media: dict[tuple[int, int], asyncio.Task[None]] = {}  # answered calls -> RTCP task
        self._channel_seq: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def endpoint(self, phone: int) -> str:
        return self.config.endpoint_format.format(n=1000 + phone, i=phone)

    async def start(self) -> None:
        cfg = self.config
        for i in range(1, cfg.nodes + 1):
            name = f"node{i}"
            port = 0 if cfg.ami_port == 0 else cfg.ami_port + i - 1
            node = AmiNode(name, i, cfg, self.endpoint, self._next_seq, random.Random(self.rng.random()), port)
            if cfg.trunks:
                node.trunk_names = [f"node{j}" for j in range(1, cfg.nodes + 1) if j != i]
            self.nodes[name] = node
        if cfg.initial == "spread":
            # A million long-lived objects would trigger many full GC passes that find nothing.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                for phone in range(1, cfg.phones + 1):
                    node = self.nodes[f"node{(phone - 1) % cfg.nodes + 1}"]
                    node.register(phone, expires=cfg.expires, qualify=self.qualified(phone), user_agent=None,
                                  ip=None, port=None, transport="udp", quiet=True)
            finally:
                if gc_was_enabled:
                    gc.enable()
        try:
            for node in self.nodes.values():
                await node.listen()
        except OSError:
            await self.stop()
            raise
        self._expiry_task = asyncio.get_running_loop().create_task(self._expiry_loop())
        self._started = True

    async def stop(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for node in self.nodes.values():
            node.flush()
            await node.stop()
        self._started = False

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def ports(self) -> dict[str, int]:
        return {name: n.port for name, n in self.nodes.items()}

    @property
    def node_names(self) -> list[str]:
        return list(self.nodes)

    def qualified(self, phone: int) -> bool:
        """Whether ``phone``'s contact is qualified (every ``qualify_every``-th phone)."""
        k = self.config.qualify_every
        return k > 0 and phone % k == 1 % k

    def node(self, name: str) -> AmiNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise SimulatorError(f"unknown node {name!r} (have {', '.join(self.nodes)})") from None

    def phone_index(self, phone: int | str) -> int:
        """Phone number 1..phones of ``phone`` (an index, an endpoint name or ``PJSIP/<name>``)."""
        if isinstance(phone, str):
            text = phone.removeprefix("PJSIP/")
            if self.config.endpoint_format == "{n}" and text.isdigit():
                return self.phone_index(int(text) - 1000)
            for i in range(1, self.config.phones + 1):  # names are formatted: search is rare (HTTP only)
                if self.endpoint(i) == text:
                    return i
            raise SimulatorError(f"unknown phone {phone!r}")
        if not 1 <= phone <= self.config.phones:
            raise SimulatorError(f"phone {phone} out of range 1..{self.config.phones}")
        return phone

    async def _expiry_loop(self) -> None:
        """Asterisk's contact_expiration_check_interval: remove contacts whose phone went quiet."""
        while True:
            await asyncio.sleep(self.config.expiration_check_interval)
            now = time.time()
            for node in self.nodes.values():
                for phone in node.expired(now):
                    node.remove(phone, why="expire")

    async def pace(self, events: int) -> None:
        """Token bucket for ``rate``: scenario steps wait here so events/s stay under the cap."""
        if self.config.rate is None:
            await asyncio.sleep(0)
            return
        now = time.monotonic()
        rate = self.config.rate
        self._rate_tokens = min(rate, self._rate_tokens + (now - self._rate_at) * rate) if self._rate_at else 0.0
        self._rate_at = now
        self._rate_tokens -= events
        if self._rate_tokens < 0:
            await asyncio.sleep(-self._rate_tokens / rate)

    # -- public operations ------------------------------------------------------------------
    async def register(self, phone: int | str, node: str, *, expires: int | None = None, qualify: bool | None = True,
                       user_agent: str | None = None, ip: str | None = None, port: int | None = None,
                       transport: str = "udp", rtt_us: int | None = None, keepalive: bool = True) -> None:
        """REGISTER ``phone`` on ``node``; the same address again is a refresh (no status event)."""
        p = self.phone_index(phone)
        q = self.qualified(p) if qualify is None else qualify
        self.node(node).register(p, expires=expires or self.config.expires, qualify=q, user_agent=user_agent, ip=ip,
                                 port=port, transport=transport, rtt_us=rtt_us, keepalive=keepalive)

    async def refresh(self, phone: int | str, node: str) -> None:
        if not self.node(node).refresh(self.phone_index(phone)):
            raise SimulatorError(f"phone {phone} has no contact on {node}")

    async def unregister(self, phone: int | str, node: str) -> bool:
        return self.node(node).remove(self.phone_index(phone), why="unregister")

    async def expire(self, phone: int | str, node: str) -> bool:
        return self.node(node).remove(self.phone_index(phone), why="expire")

    def location(self, phone: int) -> str | None:
        """Node of the phone's most recently registered contact."""
        best: tuple[int, str] | None = None
        for name, node in self.nodes.items():
            c = node.contacts.get(phone)
            if c is not None and (best is None or c.reg_seq > best[0]):
                best = (c.reg_seq, name)
        return None if best is None else best[1]

    async def move(self, phone: int | str, to_node: str, **register_kw: Any) -> None:
        """The phone registers on ``to_node`` without unregistering; its old contacts stop being
        refreshed and are expired by their node's expiration check (as in Asterisk)."""
        p = self.phone_index(phone)
        target = self.node(to_node)
        now = time.time()
        for name, node in self.nodes.items():
            if name != to_node:
                node.stop_refreshing(p, now)
        old = target.contacts.get(p)
        if "port" not in register_kw:
            # A move always makes a new contact (a new source port if it had one there), so it is
            # observable: re-using the old binding would be a silent refresh.
            register_kw["port"] = 5060 if old is None else (old.port % 65535) + 1
        register_kw.setdefault("qualify", self.qualified(p))
        await self.register(p, to_node, **register_kw)

    async def qualify(self, phone: int | str, node: str, reachable: bool, rtt_us: int | None = None) -> None:
        if not self.node(node).qualify(self.phone_index(phone), reachable, rtt_us):
            raise SimulatorError(f"phone {phone} has no contact on {node}")

    async def device_state(self, phone: int | str, node: str, state: str) -> None:
        if state not in DEVICE_STATES:
            raise SimulatorError(f"unknown device state {state!r}")
        self.node(node).set_device_state(self.phone_index(phone), state)

    async def call(self, caller: int | str, callee: int | str, *, answer: bool = True,
                   jitter_ms: float | None = None, loss: float | None = None) -> None:
        """09: callee RINGING and caller INUSE at once, then callee INUSE on answer.

        An answered call reports RTCP every ``rtcp_interval`` on each of its channels (14)
        until ``hangup``; ``jitter_ms``/``loss`` override the configured figures of its phones.
        """
        a, b = self.phone_index(caller), self.phone_index(callee)
        na, nb = self._where(a), self._where(b)
        nb.set_device_state(b, "RINGING")
        na.set_device_state(a, "INUSE")
        na.processed_calls += 1
        na.current_calls += 1
        if answer:
            nb.set_device_state(b, "INUSE")
            if self.config.rtcp_interval > 0:
                jitter = self.config.rtcp_jitter_ms if jitter_ms is None else jitter_ms
                lost = self.config.rtcp_loss if loss is None else loss
                if not 0 <= lost <= 1 or jitter < 0:
                    raise SimulatorError(f"bad call quality: jitter_ms={jitter} loss={lost}")
                self._start_media((a, b), self._legs(a, na, b, nb, jitter, lost))

    def _channel(self, node: AmiNode, who: str) -> tuple[str, str]:
        """A new channel name of ``who`` on ``node`` and its Uniqueid."""
        n = self._channel_seq.get(node.name, 0) + 1
        self._channel_seq[node.name] = n
        return f"PJSIP/{who}-{n:08x}", f"{node.name}-{int(node.boot_time)}.{n}"

    def _legs(self, a: int, na: AmiNode, b: int, nb: AmiNode, jitter: float, loss: float) -> list[tuple[AmiNode, Leg]]:
        """The channels of a call as Asterisk makes them: each phone's own leg, plus one trunk
        leg on each node when the phones are on different nodes (transcript 14, part B)."""
        ea, eb = self.endpoint(a), self.endpoint(b)
        rng = self.rng
        host = self.config.host

        def rtp() -> str:
            return f"{host}:{rng.randrange(10000, 20000, 2)}"

        def phone_rtp(phone: int, node: AmiNode) -> str:
            c = node.contacts.get(phone)
            return f"{c.address() if c else host}:{rng.randrange(20000, 30000, 2)}"

        chan, uid = self._channel(na, ea)
        legs = [(na, Leg(chan, ea, f"Ext {ea}", eb, "<unknown>", "from-internal", eb, 1, uid, uid, rtp(),
                         phone_rtp(a, na), jitter, loss, random.Random(rng.random())))]
        linked = uid
        if na is not nb:
            chan, uid = self._channel(na, nb.name)
            legs.append((na, Leg(chan, eb, "<unknown>", ea, f"Ext {ea}", "from-cluster", "", 1, uid, linked, rtp(),
                                 rtp(), 0.0, 0.0, random.Random(rng.random()))))
            chan, uid = self._channel(nb, na.name)
            legs.append((nb, Leg(chan, na.name, "<unknown>", "<unknown>", "<unknown>", "from-cluster", eb, 2, uid, uid,
                                 rtp(), rtp(), 0.0, 0.0, random.Random(rng.random()))))
            linked = uid
        chan, uid = self._channel(nb, eb)
        legs.append((nb, Leg(chan, ea, f"Ext {ea}", eb, "<unknown>", "from-cluster", eb, 2, uid, linked, rtp(),
                             phone_rtp(b, nb), jitter, loss, random.Random(rng.random()))))
        return legs

    def _start_media(self, key: tuple[int, int], legs: list[tuple[AmiNode, Leg]]) -> None:
        self._stop_media(key)
        task = asyncio.get_running_loop().create_task(self._rtcp_loop(legs))
        self._media[key] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stop_media(self, key: tuple[int, int]) -> None:
        task = self._media.pop(key, None)
        if task is not None:
            task.cancel()

    async def _rtcp_loop(self, legs: list[tuple[AmiNode, Leg]]) -> None:
        interval = self.config.rtcp_interval
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            for node, leg in legs:
                node.emit(rtcp_events(leg, now, interval))

    async def hold(self, caller: int | str, callee: int | str) -> None:
        """The *held* party goes ONHOLD (09), not the one who pressed hold."""
        b = self.phone_index(callee)
        self._where(b).set_device_state(b, "ONHOLD")

    async def unhold(self, caller: int | str, callee: int | str) -> None:
        b = self.phone_index(callee)
        self._where(b).set_device_state(b, "INUSE")

    async def hangup(self, caller: int | str, callee: int | str) -> None:
        a, b = self.phone_index(caller), self.phone_index(callee)
        na, nb = self._where(a), self._where(b)
        self._stop_media((a, b))
        na.set_device_state(a, "NOT_INUSE")
        nb.set_device_state(b, "NOT_INUSE")
        na.current_calls = max(0, na.current_calls - 1)

    def _where(self, phone: int) -> AmiNode:
        name = self.location(phone)
        if name is None:
            raise SimulatorError(f"phone {phone} is not registered anywhere")
        return self.nodes[name]

    async def crash(self, node: str, mode: str = "close") -> None:
        """``close``: sockets closed and connections refused; ``halfopen``: sockets stay open, silent."""
        n = self.node(node)
        if mode == "close":
            n.ami = "crashed"
            await n.close_server()
            n.drop_sessions()
        elif mode == "halfopen":
            n.flush()
            n.ami = "halfopen"
        else:
            raise SimulatorError(f"crash mode must be 'close' or 'halfopen', not {mode!r}")

    async def recover(self, node: str) -> None:
        """A crashed node answers again (same boot): listening again, or talking again if half-open."""
        n = self.node(node)
        if n.ami == "crashed":
            await n.listen()
        elif n.ami == "halfopen":
            n.drop_sessions()  # a hung Asterisk that comes back has lost its stuck sessions
            n.ami = "up"

    async def restart(self, node: str) -> None:
        """``core restart``: Shutdown event, socket closes, then a new boot (new Uptime)."""
        await self.shutdown(node, restart=True)
        await asyncio.sleep(self.config.restart_delay)
        await self.boot(node)

    async def shutdown(self, node: str, *, restart: bool = False) -> None:
        """``core stop``: Shutdown event (Restart: False), the sockets close, the node stays down
        until ``boot(node)`` (13)."""
        n = self.node(node)
        if n.ami == "up":
            n.emit([n.shutdown_event(restart=restart)])
            n.flush()
            await asyncio.sleep(0)
        n.ami = "down"
        await n.close_server()
        for s in list(n.sessions):
            s.close()
        n.sessions.clear()

    async def boot(self, node: str) -> None:
        """Start a stopped node: new boot time, contacts kept (PruneOnBoot: no), calls gone."""
        n = self.node(node)
        if n.ami != "down":
            raise SimulatorError(f"{node} is {n.ami}, not down")
        n.boot_time = n.reload_time = time.time()
        n.reset_calls()
        waiting = n.reload_contacts()
        await n.listen()
        n.emit([n.fully_booted_broadcast()])
        if waiting:
            loop = asyncio.get_running_loop()
            loop.call_later(self.config.boot_qualify_delay, self._first_qualify, node, n.boot_time, waiting)

    def _first_qualify(self, node: str, boot_time: float, phones: list[int]) -> None:
        n = self.nodes.get(node)
        if n is not None and n.ami == "up" and n.boot_time == boot_time:  # not restarted again meanwhile
            n.first_qualify(phones)

    async def astdb_read_only(self, node: str, read_only: bool = True) -> None:
        """The node's AstDB refuses writes (disk full): DBPut answers ``Failed to update entry``,
        DBDel ``Database entry could not be deleted``, as Asterisk's do when ast_db fails."""
        self.node(node).astdb.read_only = read_only

    async def inject_fault(self, node: str, kind: str) -> None:
        """Write one deliberately bad event to every client of ``node`` (it changes no state)."""
        if kind not in FAULTS:
            raise SimulatorError(f"unknown fault {kind!r} (have {', '.join(FAULTS)})")
        self.node(node).inject_raw(fault_bytes(kind, node))

    # -- observation ------------------------------------------------------------------------
    def truth(self) -> dict[str, Any]:
        now = time.time()
        nodes: dict[str, Any] = {}
        for name, n in self.nodes.items():
            contacts = []
            for phone, c in n.contacts.items():
                ep = self.endpoint(phone)
                contacts.append({
                    "endpoint": f"PJSIP/{ep}", "aor": ep, "uri": c.uri(ep), "status": STATUS_NAMES[c.status],
                    "ip": c.address(), "port": c.port, "transport": c.transport,
                    "user_agent": c.user_agent or f"simphone-{ep}", "rtt_us": c.rtt, "expires_at": c.expires_at(now),
                    "registered_seq": c.reg_seq,
                })
            nodes[name] = {
                "up": n.ami == "up", "ami": n.ami, "boot_time": int(n.boot_time), "contacts": contacts,
                "device_states": {f"PJSIP/{self.endpoint(p)}": st for p, st in n.states.items()},
            }
        return {"nodes": nodes, "seq": self.seq}

    def journal(self) -> dict[str, Any]:
        """Per node, every AMI session's journal (``--journal``; empty lists without it)."""
        return {"enabled": self.config.journal,
                "nodes": {name: [j.as_json() for j in n.journals] for name, n in self.nodes.items()}}

    def stats(self) -> dict[str, Any]:
        return {name: {"events": n.stats_events, "bytes": n.stats_bytes, "clients": len(n.sessions),
                       "clients_total": n.stats_clients_total, "bad_input": n.stats_bad_input,
                       "slow_clients_dropped": n.stats_slow_dropped, "contacts": len(n.contacts), "ami": n.ami}
                for name, n in self.nodes.items()}
