"""One simulated Asterisk node: its contacts/device states, its AstDB and its AMI TCP server.

State changes produce AMI events (``state.Ev``) that are queued and flushed to every logged-in
client once per event-loop turn, one ``write`` per client per batch. A client that does not
read is dropped when its transport buffer passes ``client_buffer_limit`` (Asterisk drops slow
clients too); the generator never waits for clients. Bad input never raises out of a session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterator

from .astdb import AstDB
from .config import SimConfig
from .details import detail
from .journal import SessionJournal, entry_of
from .state import (
    ALL_CLASSES,
    HUMAN_STATE,
    NONQUALIFIED,
    REACHABLE,
    SECURITY,
    STATUS_NAMES,
    SYSTEM,
    UNREACHABLE,
    Contact,
    Ev,
    challenge_sent,
    class_mask,
    contact_status,
    device_state,
    event_tv,
    peer_status,
    successful_auth,
)
from .wire import BANNER, Action, ActionParser, encode

logger = logging.getLogger(__name__)

__all__ = ["AmiNode", "AmiSession"]

_GOODBYE = "Thanks for all the fish."
_LIST_CHUNK = 2000  # list items encoded per write while streaming big answers


class AmiSession(asyncio.Protocol):
    """One AMI client connection."""

    def __init__(self, node: AmiNode):
        self.node = node
        self.transport: asyncio.Transport | None = None
        self.parser = ActionParser()
        self.authed = False
        self.closing = False
        self.mask = 0  # event classes this client receives (0 until logged in)
        self.challenge = ""
        self.session_id = f"0x{random.getrandbits(44):x}"
        self.session_tv = ""
        self.peer = ("127.0.0.1", 0)
        self.local = ("127.0.0.1", 0)
        self._queue: asyncio.Queue[Action | None] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._out: asyncio.Queue[bytes | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.rng = random.Random(node.rng.random())
        self.journal: SessionJournal | None = None  # with --journal: what this AMI connection was sent

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername") or self.peer
        self.local = transport.get_extra_info("sockname") or self.local
        self.node.sessions.add(self)
        self.node.stats_clients_total += 1
        if self.node.config.journal:
            self.journal = SessionJournal(self.session_id, self.peer)
            self.node.journals.append(self.journal)
        if self.node.config.split_writes:
            self._out = asyncio.Queue()
            self._writer = asyncio.get_running_loop().create_task(self._split_writer())
        self._worker = asyncio.get_running_loop().create_task(self._work())
        if self.node.ami == "up":
            self.send(BANNER)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.journal is not None:
            self.journal.closed_at = time.time()
        self.node.sessions.discard(self)
        self._can_write.set()
        self._queue.put_nowait(None)
        if self._out is not None:
            self._out.put_nowait(None)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        if self.journal is not None:
            self.journal.heard(time.time())
        if self.closing or self.node.ami != "up":
            return  # half-open node: reads and never answers
        try:
            actions = self.parser.feed(data)
        except ValueError as exc:
            logger.warning("%s: dropping client %s: %s", self.node.name, self.peer, exc)
            self.node.stats_bad_input += 1
            self.abort()
            return
        for action in actions:
            self._queue.put_nowait(action)

    # -- output -----------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue bytes for the client; drop the client when it falls too far behind."""
        if self.closing or self.transport is None:
            return
        if self._out is not None:
            self._out.put_nowait(data)
            return
        self.transport.write(data)
        if self.transport.get_write_buffer_size() > self.node.config.client_buffer_limit:
            logger.warning("%s: client %s does not read, dropping it", self.node.name, self.peer)
            self.node.stats_slow_dropped += 1
            self.abort()

    async def drain(self) -> None:
        await self._can_write.wait()

    async def _split_writer(self) -> None:
        """Fault mode: every message leaves in random 1..7 byte pieces, with a loop turn between."""
        assert self._out is not None
        while True:
            data = await self._out.get()
            if data is None or self.transport is None or self.transport.is_closing():
                return
            i = 0
            while i < len(data):
                n = self.rng.randint(1, 7)
                self.transport.write(data[i : i + n])
                i += n
                await asyncio.sleep(0)
                await self.drain()
                if self.transport.is_closing():
                    return

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            if self._out is not None:
                self._out.put_nowait(None)
                assert self._writer is not None
                self._writer.add_done_callback(lambda _t: self.transport.close() if self.transport else None)
            else:
                self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # -- actions ----------------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            action = await self._queue.get()
            if action is None or self.closing:
                return
            try:
                await self.node.handle(self, action)
            except Exception:  # a bad request must never kill the node
                logger.exception("%s: action %r failed", self.node.name, action.name)
                self.node.stats_bad_input += 1
                self.respond(action, "Error", [("Message", "Internal simulator error")])

    def respond(self, action: Action, status: str, fields: list[tuple[str, str]]) -> None:
        head = [("Response", status)]
        if action.has("ActionID"):
            head.append(("ActionID", action.get("ActionID")))
        self.send(encode(head + fields))


class AmiNode:
    """State and AMI server of one Asterisk node."""

    def __init__(self, name: str, index: int, config: SimConfig, endpoint: Callable[[int], str],
                 next_seq: Callable[[], int], rng: random.Random, port: int):
        self.name = name
        self.index = index
        self.config = config
        self.endpoint = endpoint
        self._next_seq = next_seq
        self.rng = rng
        self.port = port
        self.phones = config.phones
        self.contacts: dict[int, Contact] = {}
        self.states: dict[int, str] = {}  # phone -> device state, UNAVAILABLE when absent
        self.quiet: set[int] = set()  # phones whose contact is no longer refreshed (expiry candidates)
        self.trunk_names: list[str] = []
        self.sessions: set[AmiSession] = set()
        self.server: asyncio.AbstractServer | None = None
        self.ami = "down"  # up | crashed | halfopen | down
        self.boot_time = time.time()
        self.reload_time = self.boot_time
        self.processed_calls = 0
        self.current_calls = 0
        self.sip_port = 5160 + index
        self.astdb = AstDB(self._astdb_path())
        if self.astdb.get("pbx", "UUID") is None:
            self.astdb.put("pbx", "UUID", str(uuid.UUID(int=rng.getrandbits(128), version=4)))
        self._pending: list[Ev] = []
        self._flush_scheduled = False
        self.stats_events = 0
        self.stats_bytes = 0
        self.stats_clients_total = 0
        self.stats_bad_input = 0
        self.stats_slow_dropped = 0
        self.journals: list[SessionJournal] = []  # every session's, with --journal (closed ones too)
        self._call_ids = 0
        # What ModuleCheck finds loaded: an Asterisk 22 (no chan_sip) with what astreg uses.
        self.modules = frozenset({"res_pjsip", "res_pjsip_registrar", "chan_pjsip", "res_pjsip_session",
                                  "res_odbc", "func_odbc", "func_db", "res_curl", "func_curl", "app_dial"})

    def phone_of(self, endpoint: str) -> int | None:
        """The phone whose endpoint name is ``endpoint`` (``PJSIP/`` prefix allowed), if any."""
        name = endpoint.removeprefix("PJSIP/")
        if self.config.endpoint_format == "{n}":
            if name.isdigit() and 1 <= int(name) - 1000 <= self.phones:
                return int(name) - 1000
            return None
        for phone in range(1, self.phones + 1):
            if self.endpoint(phone) == name:
                return phone
        return None

    def _astdb_path(self) -> str:
        if self.config.astdb == ":memory:":
            return ":memory:"
        from pathlib import Path

        base = Path(self.config.astdb)
        base.mkdir(parents=True, exist_ok=True)
        return str(base / f"{self.name}.sqlite3")

    # -- server lifecycle -------------------------------------------------------------------
    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: AmiSession(self), self.config.host, self.port,
                                               reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        self.ami = "up"

    async def close_server(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None

    def drop_sessions(self) -> None:
        for s in list(self.sessions):
            s.abort()
        self.sessions.clear()

    async def stop(self) -> None:
        self.ami = "down"
        await self.close_server()
        self.drop_sessions()
        self.astdb.close()

    def uptime(self) -> int:
        return int(time.time() - self.boot_time)

    # -- event output -----------------------------------------------------------------------
    def emit(self, events: list[Ev]) -> None:
        if self.config.shuffle_order and len(events) > 1:
            self.rng.shuffle(events)
        self._pending.extend(events)
        self.stats_events += len(events)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def render(self, ev: Ev, now: float) -> bytes:
        _cls, head, body = ev
        mid = b""
        if self.config.timestamps:
            mid += f"Timestamp: {now:.6f}\r\n".encode()
        if self.config.system_name:
            mid += f"SystemName: {self.name}\r\n".encode()
        return head + mid + body

    def flush(self) -> None:
        self._flush_scheduled = False
        events, self._pending = self._pending, []
        if not events or self.ami != "up":
            return
        receivers = [s for s in self.sessions if s.mask and not s.closing]
        if not receivers:
            return
        now = time.time()
        rendered = [(ev[0], self.render(ev, now)) for ev in events]
        everything = b"".join(b for _c, b in rendered)
        by_mask: dict[int, bytes] = {ALL_CLASSES: everything}
        for s in receivers:
            data = by_mask.get(s.mask)
            if data is None:
                data = by_mask[s.mask] = b"".join(b for c, b in rendered if c & s.mask)
            if data:
                self.stats_bytes += len(data)
                s.send(data)
        if self.config.journal:
            entries = [(c, e) for c, b in rendered if (e := entry_of(b)) is not None]
            for s in receivers:
                if s.journal is not None:
                    s.journal.sent.extend((now, e) for c, e in entries if c & s.mask)

    def inject_raw(self, data: bytes) -> None:
        """Fault injection: write bytes as-is to every subscribed client (after pending events)."""
        self.flush()
        for s in list(self.sessions):
            if s.mask and not s.closing:
                s.send(data)

    # -- helpers ----------------------------------------------------------------------------
    def _reachable(self, phone: int, ignore: Contact | None = None) -> bool:
        c = self.contacts.get(phone)
        return c is not None and c is not ignore and c.status != UNREACHABLE

    def _set_state(self, phone: int, state: str, out: list[Ev]) -> None:
        old = self.states.get(phone, "UNAVAILABLE")
        if old == state:
            return
        if state == "UNAVAILABLE":
            self.states.pop(phone, None)
        else:
            self.states[phone] = state
        out.append(device_state(f"PJSIP/{self.endpoint(phone)}", state))

    def _sip_noise(self, phone: int, c: Contact, out: list[Ev], now: float) -> None:
        if not self.config.security_events:
            return
        ep = self.endpoint(phone)
        call_id = f"{c.call_id}-{phone}@{c.address()}"
        local = f"{self.config.host}/{self.sip_port}"
        remote = f"{c.address()}/{c.port}"
        out.append(challenge_sent(ep, call_id, local, remote, now))
        out.append(successful_auth(ep, call_id, local, remote, now))

    def new_call_id(self) -> int:
        self._call_ids += 1
        return self._call_ids

    # -- state changes (each emits exactly what Asterisk 22 emits for it) ---------------------
    def register(self, phone: int, *, expires: int, qualify: bool, user_agent: str | None, ip: str | None,
                 port: int | None, transport: str, rtt_us: int | None = None, keepalive: bool = True,
                 quiet: bool = False) -> Contact:
        now = time.time()
        ep = self.endpoint(phone)
        port = 5060 if port is None else port
        old = self.contacts.get(phone)
        if old is not None and (old.ip == ip and old.port == port and old.transport == transport):
            # A refresh REGISTER: Asterisk emits only the auth noise.
            old.reg_time, old.expires, old.alive, old.reg_seq = now, expires, keepalive, self._next_seq()
            self._track_quiet(phone, keepalive)
            if user_agent is not None:
                old.user_agent = user_agent
            if not quiet:
                out: list[Ev] = []
                self._sip_noise(phone, old, out, now)
                self.emit(out)
            return old
        c = Contact(phone, ip, port, transport, user_agent, qualify, expires, now, self._next_seq(), self.new_call_id())
        c.alive = keepalive
        self._track_quiet(phone, keepalive)
        was_reachable = self._reachable(phone)
        self.contacts[phone] = c
        if qualify:
            c.status, c.rtt = REACHABLE, rtt_us if rtt_us is not None else self.rng.randint(300, 1200)
        if quiet:
            if self.states.get(phone, "UNAVAILABLE") == "UNAVAILABLE":
                self.states[phone] = "NOT_INUSE"
            return c
        out = []
        self._sip_noise(phone, c, out, now)
        uri = c.uri(ep)
        if qualify:
            # Transcripts 04/05/06: NonQualified, PeerStatus, Reachable (RTT), DeviceStateChange.
            out.append(contact_status(ep, uri, "NonQualified", 0))
            if not was_reachable:
                out.append(peer_status(ep, "Reachable"))
            out.append(contact_status(ep, uri, "Reachable", c.rtt))
            self._set_state(phone, "NOT_INUSE" if self.states.get(phone) is None else self.states[phone], out)
        else:
            # Transcripts 02/03/04/05: PeerStatus, DeviceStateChange, NonQualified.
            if not was_reachable:
                out.append(peer_status(ep, "Reachable"))
            self._set_state(phone, "NOT_INUSE" if self.states.get(phone) is None else self.states[phone], out)
            out.append(contact_status(ep, uri, "NonQualified", 0))
        if old is not None:
            # max_contacts=1 + remove_existing (02): the replaced contact is Removed.
            out.append(contact_status(ep, old.uri(ep), "Removed", 0))
        self.emit(out)
        return c

    def refresh(self, phone: int) -> bool:
        c = self.contacts.get(phone)
        if c is None:
            return False
        now = time.time()
        # A REGISTER the node accepts: the contact is as recent as a new one (SPEC item 3), and a
        # phone that comes back to a contact it had left keeps it alive again.
        c.reg_time, c.reg_seq, c.alive = now, self._next_seq(), True
        self._track_quiet(phone, True)
        out: list[Ev] = []
        self._sip_noise(phone, c, out, now)
        self.emit(out)
        return True

    def remove(self, phone: int, *, why: str) -> bool:
        """Contact gone: ``unregister`` (REGISTER Expires 0) or ``expire`` (expiration check)."""
        c = self.contacts.pop(phone, None)
        self.quiet.discard(phone)
        if c is None:
            return False
        now = time.time()
        ep = self.endpoint(phone)
        uri = c.uri(ep)
        out: list[Ev] = []
        reachable = c.status != UNREACHABLE
        if why == "unregister":
            self._sip_noise(phone, c, out, now)
        removed = contact_status(ep, uri, "Removed", 0)
        if c.qualify or why == "expire":
            # 04 (1003), 06 (1005), 05 (1004): PeerStatus, Removed, UNAVAILABLE;
            # 05 (1009, unqualified expiry): PeerStatus, UNAVAILABLE, Removed.
            if reachable:
                out.append(peer_status(ep, "Unreachable"))
            if why == "expire" and not c.qualify:
                self._set_state(phone, "UNAVAILABLE", out)
                out.append(removed)
            else:
                out.append(removed)
                self._set_state(phone, "UNAVAILABLE", out)
        else:
            # 04 (1008): UNAVAILABLE, PeerStatus, Removed.
            self._set_state(phone, "UNAVAILABLE", out)
            if reachable:
                out.append(peer_status(ep, "Unreachable"))
            out.append(removed)
        self.emit(out)
        return True

    def qualify(self, phone: int, reachable: bool, rtt_us: int | None) -> bool:
        c = self.contacts.get(phone)
        if c is None:
            return False
        ep = self.endpoint(phone)
        out: list[Ev] = []
        c.qualify = True
        if reachable:
            rtt = rtt_us if rtt_us is not None else self.rng.randint(300, 1200)
            if c.status == REACHABLE:
                c.rtt = rtt  # unchanged result: Asterisk emits nothing (02: 3 qualifies, 1 event)
                return True
            was = c.status
            c.status, c.rtt = REACHABLE, rtt
            if was == UNREACHABLE:
                out.append(peer_status(ep, "Reachable"))
            out.append(contact_status(ep, c.uri(ep), "Reachable", rtt))
            if was == UNREACHABLE:
                self._set_state(phone, "NOT_INUSE", out)
        else:
            if c.status == UNREACHABLE:
                return True
            c.status, c.rtt = UNREACHABLE, 0
            # 06: PeerStatus Unreachable, UNAVAILABLE, ContactStatus Unreachable.
            out.append(peer_status(ep, "Unreachable"))
            self._set_state(phone, "UNAVAILABLE", out)
            out.append(contact_status(ep, c.uri(ep), "Unreachable", 0))
        self.emit(out)
        return True

    def set_device_state(self, phone: int, state: str) -> None:
        out: list[Ev] = []
        self._set_state(phone, state, out)
        self.emit(out)

    def _track_quiet(self, phone: int, alive: bool) -> None:
        if alive:
            self.quiet.discard(phone)
        else:
            self.quiet.add(phone)

    def stop_refreshing(self, phone: int, now: float) -> None:
        """The phone went elsewhere: its contact here expires one interval after its last refresh."""
        c = self.contacts.get(phone)
        if c is not None and c.alive:
            c.reg_time = c.expires_at(now) - c.expires
            c.alive = False
            self.quiet.add(phone)

    def expired(self, now: float) -> list[int]:
        """Phones whose contact ran out (phone stopped refreshing) and is due for removal."""
        return [p for p in self.quiet if (c := self.contacts.get(p)) is not None and c.expires_at(now) <= now]

    def reset_calls(self) -> None:
        for phone, st in list(self.states.items()):
            if st != "NOT_INUSE":
                self.states[phone] = "NOT_INUSE"
        self.current_calls = 0

    # -- broadcast system events ------------------------------------------------------------
    def shutdown_event(self, restart: bool) -> Ev:
        return SYSTEM, b"Event: Shutdown\r\nPrivilege: system,all\r\n", (
            f"Shutdown: Cleanly\r\nRestart: {'True' if restart else 'False'}\r\n\r\n".encode())

    def reload_contacts(self) -> list[int]:
        """A (re)boot: contacts come back from the AstDB unqualified (listed ``NonQualified``, RTT
        ``N/A``) and their devices ``UNAVAILABLE`` until the first qualify. Returns the qualified
        phones waiting for it."""
        waiting = []
        for phone, c in self.contacts.items():
            if c.qualify:
                c.status, c.rtt = NONQUALIFIED, 0
                self.states.pop(phone, None)
                waiting.append(phone)
        return waiting

    def first_qualify(self, phones: list[int]) -> None:
        """The node's first qualify after a boot: each reloaded contact that still answers is
        Reachable again (PeerStatus, ContactStatus, DeviceStateChange, as for 06's recovery)."""
        out: list[Ev] = []
        for phone in phones:
            c = self.contacts.get(phone)
            if c is None or c.status != NONQUALIFIED or not c.alive:
                continue
            ep = self.endpoint(phone)
            c.status, c.rtt = REACHABLE, self.rng.randint(300, 1200)
            out.append(peer_status(ep, "Reachable"))
            out.append(contact_status(ep, c.uri(ep), "Reachable", c.rtt))
            self._set_state(phone, "NOT_INUSE", out)
        if out:
            self.emit(out)

    def fully_booted_broadcast(self) -> Ev:
        up = self.uptime()
        return SYSTEM, b"Event: FullyBooted\r\nPrivilege: system,all\r\n", (
            f"Status: Fully Booted\r\nUptime: {up}\r\nLastReload: {up}\r\n\r\n".encode())

    # -- action handling --------------------------------------------------------------------
    async def handle(self, s: AmiSession, a: Action) -> None:
        name = a.name.lower()
        if name == "":
            s.respond(a, "Error", [("Message", "Missing action in request")])
            return
        if name == "login":
            await self._login(s, a)
            return
        if name == "challenge":
            self._challenge(s, a)
            return
        if name == "logoff":
            s.respond(a, "Goodbye", [("Message", _GOODBYE)])
            s.close()
            return
        if not s.authed:
            s.respond(a, "Error", [("Message", "Permission denied")])
            return
        handler = _ACTIONS.get(name)
        if handler is None:
            s.respond(a, "Error", [("Message", f"Invalid/unknown command: {a.name}. Use Action: ListCommands to show available commands.")])
            self._security_event(s, "RequestBadFormat", "Error", [("RequestType", f"Action: {a.name}")], account_last=True)
            return
        await handler(self, s, a)

    def _challenge(self, s: AmiSession, a: Action) -> None:
        if a.get("AuthType").lower() != "md5":
            s.respond(a, "Error", [("Message", "Must specify AuthType")])
            return
        if not s.challenge:
            s.challenge = str(s.rng.randint(100_000_000, 999_999_999))
        s.respond(a, "Success", [("Challenge", s.challenge)])

    async def _login(self, s: AmiSession, a: Action) -> None:
        if s.authed:
            s.respond(a, "Success", [("Message", "Already authenticated")])
            return
        user_ok = a.get("Username") == self.config.ami_user
        secret = self.config.secret()
        if a.get("AuthType").lower() == "md5":
            expected = hashlib.md5((s.challenge + secret).encode()).hexdigest()  # noqa: S324 - AMI protocol
            ok = user_ok and bool(s.challenge) and a.get("Key").lower() == expected
        else:
            ok = user_ok and a.get("Secret") == secret
        if not ok:
            s.closing = True  # ignore anything else the client sends
            await asyncio.sleep(self.config.auth_fail_delay)
            if s.transport is None or s.transport.is_closing():
                return
            s.closing = False
            s.respond(a, "Error", [("Message", "Authentication failed")])
            s.close()
            return
        s.authed = True
        s.mask = class_mask(a.get("Events", "on"))
        now = time.time()
        s.session_tv = event_tv(now)
        s.respond(a, "Success", [("Message", "Authentication accepted")])
        if s.mask & SYSTEM:
            up = str(self.uptime())
            s.send(encode([("Event", "FullyBooted"), ("Privilege", "system,all"), ("Uptime", up),
                           ("LastReload", str(int(now - self.reload_time))), ("Status", "Fully Booted")]))
        self._security_event(s, "SuccessfulAuth", "Informational", [("UsingPassword", "0")])

    def _security_event(self, s: AmiSession, name: str, severity: str, extra: list[tuple[str, str]],
                        account_last: bool = False) -> None:
        if not self.config.security_events:
            return
        now = time.time()
        fields = [("EventTV", event_tv(now)), ("Severity", severity), ("Service", "AMI"), ("EventVersion", "1")]
        account = [("AccountID", self.config.ami_user)]
        if not account_last:
            fields += account
        fields += [("SessionID", s.session_id), ("LocalAddress", f"IPV4/TCP/{s.local[0]}/{s.local[1]}"),
                   ("RemoteAddress", f"IPV4/TCP/{s.peer[0]}/{s.peer[1]}")]
        if account_last:
            fields += extra + [("SessionTV", s.session_tv)] + account
        else:
            fields += extra + [("SessionTV", s.session_tv)]
        head = f"Event: {name}\r\nPrivilege: security,all\r\n".encode()
        self.emit([(SECURITY, head, encode(fields))])

    # -- list helpers -----------------------------------------------------------------------
    async def _stream(self, s: AmiSession, items: Iterator[bytes]) -> int:
        count, chunk = 0, []
        for item in items:
            chunk.append(item)
            count += 1
            if len(chunk) >= _LIST_CHUNK:
                s.send(b"".join(chunk))
                chunk = []
                await s.drain()
                await asyncio.sleep(0)
        if chunk:
            s.send(b"".join(chunk))
        return count

    def contact_list_items(self, action_id: list[tuple[str, str]]) -> Iterator[bytes]:
        now = time.time()
        for phone, c in list(self.contacts.items()):
            ep = self.endpoint(phone)
            yield encode([("Event", "ContactList"), *action_id, ("ObjectType", "contact"),
                          ("ObjectName", c.object_name(ep)), ("ViaAddr", c.address()), ("QualifyTimeout", "3.000000"),
                          ("Qualify2xxOnly", "false"), ("CallId", f"{c.call_id}-{phone}@{c.address()}"),
                          ("RegServer", self.name), ("PruneOnBoot", "no"), ("Path", ""), ("Endpoint", ep),
                          ("ViaPort", str(c.port)), ("AuthenticateQualify", "no"), ("Uri", c.uri(ep)),
                          ("QualifyFrequency", "5" if c.qualify else "0"), ("UserAgent", c.user_agent or f"simphone-{ep}"),
                          ("ExpirationTime", str(c.expires_at(now))), ("OutboundProxy", ""),
                          ("Status", STATUS_NAMES[c.status]),
                          ("RoundtripUsec", str(c.rtt) if c.status == REACHABLE else ("N/A" if c.status == NONQUALIFIED else "0"))])


def _aid(a: Action) -> list[tuple[str, str]]:
    return [("ActionID", a.get("ActionID"))] if a.has("ActionID") else []


async def _ping(node: AmiNode, s: AmiSession, a: Action) -> None:
    s.respond(a, "Success", [("Ping", "Pong"), ("Timestamp", f"{time.time():.6f}")])


async def _events(node: AmiNode, s: AmiSession, a: Action) -> None:
    s.mask = class_mask(a.get("EventMask", "on"))
    s.respond(a, "Success", [("Events", "On" if s.mask else "Off")])


async def _core_settings(node: AmiNode, s: AmiSession, a: Action) -> None:
    s.respond(a, "Success", [
        ("AMIversion", "11.0.0"), ("AsteriskVersion", "22.10.1"), ("SystemName", node.name if node.config.system_name else ""),
        ("CoreMaxCalls", "0"), ("CoreMaxLoadAvg", "0.000000"), ("CoreRunUser", ""), ("CoreRunGroup", ""),
        ("CoreMaxFilehandles", "0"), ("CoreRealTimeEnabled", "No"), ("CoreCDRenabled", "No"),
        ("CoreHTTPenabled", "No"), ("SoundsSearchCustomDir", "No")])


async def _core_status(node: AmiNode, s: AmiSession, a: Action) -> None:
    boot, reload_ = time.gmtime(node.boot_time), time.gmtime(node.reload_time)
    s.respond(a, "Success", [
        ("CoreStartupDate", time.strftime("%Y-%m-%d", boot)), ("CoreStartupTime", time.strftime("%H:%M:%S", boot)),
        ("CoreReloadDate", time.strftime("%Y-%m-%d", reload_)), ("CoreReloadTime", time.strftime("%H:%M:%S", reload_)),
        ("CoreCurrentCalls", str(node.current_calls)), ("CoreProcessedCalls", str(node.processed_calls))])


async def _show_contacts(node: AmiNode, s: AmiSession, a: Action) -> None:
    if not node.contacts:
        s.respond(a, "Error", [("Message", "No Contacts found")])
        return
    aid = _aid(a)
    s.respond(a, "Success", [("EventList", "start"), ("Message", "A listing of Contacts follows, presented as ContactList events")])
    n = await node._stream(s, node.contact_list_items(aid))
    s.send(encode([("Event", "ContactListComplete"), *aid, ("EventList", "Complete"), ("ListItems", str(n))]))


async def _inbound_contact_statuses(node: AmiNode, s: AmiSession, a: Action) -> None:
    aid = _aid(a)
    s.respond(a, "Success", [("EventList", "start"),
                             ("Message", "Following are ContactStatusEvents for each Inbound registration")])

    def items() -> Iterator[bytes]:
        now = time.time()
        for phone, c in list(node.contacts.items()):
            yield _contact_status_detail(node, phone, c, aid, now)

    n = await node._stream(s, items())
    s.send(encode([("Event", "ContactStatusDetailComplete"), *aid, ("EventList", "Complete"), ("ListItems", str(n))]))


def _contact_status_detail(node: AmiNode, phone: int, c: Contact, aid: list[tuple[str, str]], now: float) -> bytes:
    ep = node.endpoint(phone)
    rtt = str(c.rtt) if c.status == REACHABLE else ("N/A" if c.status == NONQUALIFIED else "0")
    return encode([("Event", "ContactStatusDetail"), *aid, ("AOR", ep), ("URI", c.uri(ep)),
                   ("UserAgent", c.user_agent or f"simphone-{ep}"), ("RegExpire", str(c.expires_at(now))),
                   ("ViaAddress", f"{c.address()}:{c.port}"), ("CallID", f"{c.call_id}-{phone}@{c.address()}"),
                   ("Status", STATUS_NAMES[c.status]), ("RoundtripUsec", rtt), ("EndpointName", ep),
                   ("ID", c.object_name(ep)), ("AuthenticateQualify", "0"), ("OutboundProxy", ""), ("Path", ""),
                   ("QualifyFrequency", "5" if c.qualify else "0"), ("QualifyTimeout", "3.000"),
                   ("Qualify2xxOnly", "0")])


async def _show_endpoint(node: AmiNode, s: AmiSession, a: Action) -> None:
    """One endpoint's details (10_actions_snapshot): EndpointDetail, AorDetail, one
    ContactStatusDetail per contact, EndpointDetailComplete; an unknown endpoint gets Asterisk's
    error, whose Message line ends in a bare LF."""
    name = a.get("Endpoint")
    aid = _aid(a)
    phone = node.phone_of(name) if name else None
    if phone is None:
        head = b"Response: Error\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in aid)
        s.send(head + f"Message: Unable to retrieve endpoint {name}\n\r\n\r\n".encode())
        return
    ep = node.endpoint(phone)
    c = node.contacts.get(phone)
    now = time.time()
    s.respond(a, "Success", [("EventList", "start"),
                             ("Message", "Following are Events for each object associated with the Endpoint")])
    state = node.states.get(phone, "UNAVAILABLE")
    contacts = f"{ep}/{c.uri(ep)}" if c is not None else ""
    values = {"ep": ep, "device_state": HUMAN_STATE.get(state, state), "channels": "0",
              "bind": f"{node.config.host}:{node.sip_port}", "contacts": contacts,
              "qualify": "5" if c is not None and c.qualify else "0",
              "default_expiration": str(node.config.expires), "total": "1" if c is not None else "0"}
    items = [encode([("Event", event), *aid, *detail(event, **values)])
             for event in ("EndpointDetail", "AuthDetail", "TransportDetail", "AorDetail")]
    if c is not None:
        items.append(_contact_status_detail(node, phone, c, aid, now))
    n = await node._stream(s, iter(items))
    s.send(encode([("Event", "EndpointDetailComplete"), *aid, ("EventList", "Complete"), ("ListItems", str(n))]))


async def _module_check(node: AmiNode, s: AmiSession, a: Action) -> None:
    """``ModuleCheck``: Asterisk 22 has no chan_sip; res_pjsip and the modules astreg uses are loaded."""
    module = a.get("Module").removesuffix(".so")
    if module not in node.modules:
        s.respond(a, "Error", [("Message", "Module not loaded")])
        return
    s.respond(a, "Success", [("Version", "")])


def _all_phones(node: AmiNode) -> Iterator[int]:
    return iter(range(1, node.phones + 1))


async def _show_endpoints(node: AmiNode, s: AmiSession, a: Action) -> None:
    aid = _aid(a)
    s.respond(a, "Success", [("EventList", "start"), ("Message", "A listing of Endpoints follows, presented as EndpointList events")])

    def items() -> Iterator[bytes]:
        for phone in _all_phones(node):
            ep = node.endpoint(phone)
            c = node.contacts.get(phone)
            contacts = f"{ep}/{c.uri(ep)}," if c is not None else ""
            state = node.states.get(phone, "UNAVAILABLE")
            yield encode([("Event", "EndpointList"), *aid, ("ObjectType", "endpoint"), ("ObjectName", ep),
                          ("Transport", "transport-udp"), ("Aor", ep), ("Auths", ep), ("OutboundAuths", ""),
                          ("Contacts", contacts), ("DeviceState", HUMAN_STATE.get(state, state)), ("ActiveChannels", "0")])
        for trunk in node.trunk_names:
            yield encode([("Event", "EndpointList"), *aid, ("ObjectType", "endpoint"), ("ObjectName", trunk),
                          ("Transport", "transport-udp"), ("Aor", trunk), ("Auths", ""), ("OutboundAuths", ""),
                          ("Contacts", f"{trunk}/sip:127.0.0.1:{5160 + int(trunk[4:])},"), ("DeviceState", "Not in use"),
                          ("ActiveChannels", "0")])

    n = await node._stream(s, items())
    s.send(encode([("Event", "EndpointListComplete"), *aid, ("EventList", "Complete"), ("ListItems", str(n))]))


async def _device_state_list(node: AmiNode, s: AmiSession, a: Action) -> None:
    aid = _aid(a)
    s.respond(a, "Success", [("EventList", "start"), ("Message", "Device State Changes will follow")])

    def items() -> Iterator[bytes]:
        for trunk in node.trunk_names:
            yield encode([("Event", "DeviceStateChange"), *aid, ("Device", f"PJSIP/{trunk}"), ("State", "NOT_INUSE")])
        for phone in _all_phones(node):
            yield encode([("Event", "DeviceStateChange"), *aid, ("Device", f"PJSIP/{node.endpoint(phone)}"),
                          ("State", node.states.get(phone, "UNAVAILABLE"))])

    n = await node._stream(s, items())
    s.send(encode([("Event", "DeviceStateListComplete"), *aid, ("EventList", "Complete"), ("ListItems", str(n))]))


async def _db_put(node: AmiNode, s: AmiSession, a: Action) -> None:
    if not a.get("Family"):
        s.respond(a, "Error", [("Message", "No family specified")])
    elif not a.get("Key"):
        s.respond(a, "Error", [("Message", "No key specified")])
    elif len(a.get("Family").encode()) + len(a.get("Key").encode()) + 2 > 255:  # ast_db_put: MAX_DB_FIELD 256
        s.respond(a, "Error", [("Message", "Failed to update entry")])
    elif node.astdb.put(a.get("Family"), a.get("Key"), a.get("Val")):
        s.respond(a, "Success", [("Message", "Updated database successfully")])
    else:  # manager.c action_dbput when ast_db_put fails
        s.respond(a, "Error", [("Message", "Failed to update entry")])


async def _db_get(node: AmiNode, s: AmiSession, a: Action) -> None:
    family, key = a.get("Family"), a.get("Key")
    if not family:
        s.respond(a, "Error", [("Message", "No family specified.")])
        return
    if not key:
        s.respond(a, "Error", [("Message", "No key specified.")])
        return
    val = node.astdb.get(family, key)
    if val is None:
        s.respond(a, "Error", [("Message", "Database entry not found")])
        return
    aid = _aid(a)
    s.respond(a, "Success", [("EventList", "start"), ("Message", "Result will follow")])
    s.send(encode([("Event", "DBGetResponse"), ("Family", family), ("Key", key), ("Val", val), *aid])
           + encode([("Event", "DBGetComplete"), *aid, ("EventList", "Complete"), ("ListItems", "1")]))


async def _db_get_tree(node: AmiNode, s: AmiSession, a: Action) -> None:
    aid = _aid(a)
    rows = node.astdb.tree(a.get("Family"), a.get("Key"))
    s.respond(a, "Success", [("EventList", "start"), ("Message", "Result will follow")])
    n = await node._stream(s, (encode([("Event", "DBGetTreeResponse"), ("Key", k), ("Val", v), *aid]) for k, v in rows))
    s.send(encode([("Event", "DBGetTreeComplete"), *aid, ("EventList", "Complete"), ("ListItems", str(n))]))


async def _db_del(node: AmiNode, s: AmiSession, a: Action) -> None:
    if not a.get("Family"):
        s.respond(a, "Error", [("Message", "No family specified.")])
    elif not a.get("Key"):
        s.respond(a, "Error", [("Message", "No key specified.")])
    elif node.astdb.delete(a.get("Family"), a.get("Key")):
        s.respond(a, "Success", [("Message", "Key deleted successfully")])
    else:
        s.respond(a, "Error", [("Message", "Database entry could not be deleted")])


async def _db_del_tree(node: AmiNode, s: AmiSession, a: Action) -> None:
    if not a.get("Family"):
        s.respond(a, "Error", [("Message", "No family specified.")])
    elif node.astdb.delete_tree(a.get("Family"), a.get("Key")) > 0:
        s.respond(a, "Success", [("Message", "Key tree deleted successfully")])
    else:
        s.respond(a, "Error", [("Message", "Database entry not found")])


_ACTIONS = {
    "ping": _ping, "events": _events, "coresettings": _core_settings, "corestatus": _core_status,
    "pjsipshowcontacts": _show_contacts, "pjsipshowendpoints": _show_endpoints, "pjsipshowendpoint": _show_endpoint,
    "modulecheck": _module_check,
    "devicestatelist": _device_state_list,
    "pjsipshowregistrationinboundcontactstatuses": _inbound_contact_statuses, "dbput": _db_put, "dbget": _db_get, "dbgettree": _db_get_tree,
    "dbdel": _db_del, "dbdeltree": _db_del_tree,
}

