"""AstDB sink: the dialplan of every Asterisk node reads ``${DB(astreg/node/${EXTEN})}``.

``astreg sink astdb --ami HOST:PORT[,HOST:PORT...] --ami-user U --ami-secret S`` writes, per
endpoint, the keys ``node/<resource>`` (primary node), ``addr/<resource>`` (ip:port),
``state/<resource>`` (device state) and ``contact/<resource>`` (contact URI) of family
``astreg`` on every listed node with AMI ``DBPut``/``DBDel``; a key whose value is unknown is
deleted, a tombstone deletes all four; a key is only written when its value on that node
changes (see :class:`AstDbSink`). The sink mirrors the whole topic in memory (it always
replays it from the start, which a compacted topic makes cheap) so that on start, and after every
AMI reconnect (a restarted node may have lost its AstDB), it reconciles the node with
``DBGetTree``: keys no longer wanted are deleted, missing or different ones written again.
Actions are pipelined: up to ``--window`` in flight per node, matched by ActionID, written a
window at a time. A key too long for Asterisk (family + key > 253 bytes) is a dead letter; any
other refused DBPut means the node takes no writes now: retried, never dropped.

Encoding (AMI is a line protocol; a CR/LF in a value would inject headers): the resource in a
key is percent-encoded exactly like Asterisk's ``${URIENCODE()}`` (letters, digits and
``-_.!~*'()`` stay; ``/`` becomes ``%2F``, so a name can never open a sub-tree), so plain
extensions such as ``1001`` are stored as is. A
value keeps its text except ``%``, control characters (CR, LF, TAB, ...) and leading/trailing
spaces, which are percent-encoded; read such values with ``${URIDECODE(...)}``.

The AMI client is a small asyncio one of our own rather than panoramisk: the sink needs a
bounded window of in-flight actions, list answers (DBGetTree) collected per ActionID, no event
stream at all (``Events: off``), a refusal to send any header containing CR/LF, and a hook on
every (re)connection to reconcile; panoramisk's auto-reconnect and callback model hide the
reconnection moment and it runs an event dispatcher the sink does not need.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple
from urllib.parse import quote

from astreg.amiwire import AmiFramer, header_map
from astreg.errors import (
    AmiError,
    ConfigError,
    FrameTooLarge,
    LoginFailed,
    PermanentWriteError,
    SinkUnavailable,
)
from schemas.models import EndpointLocation

from .routes import resource_of, route_rank
from .settings import AstDbSettings

__all__ = [
    "AstDbSink", "AstDbSettings", "AmiClient", "entries", "key_part", "value_text", "KINDS", "all_keys", "offset_key",
]

logger = logging.getLogger(__name__)

KINDS = ("node", "addr", "state", "contact")
_VALUE_SAFE = {chr(c) for c in range(0x20, 0x7F)} - {"%"}


def key_part(text: str) -> str:
    """A resource as one AstDB key segment, exactly as Asterisk's ``${URIENCODE()}`` writes it
    (``ast_uri_http``: letters, digits and ``-_.!~*'()`` stay, other UTF-8 bytes become ``%XX``)."""
    return quote(text, safe="!*'()")


def value_text(text: str) -> str:
    """A value safe on an AMI line; ordinary values (node ids, ip:port, URIs) are unchanged."""
    out = []
    for i, ch in enumerate(text):
        edge_space = ch == " " and (i == 0 or i == len(text) - 1)
        if (ch in _VALUE_SAFE or ord(ch) > 0x7F) and not edge_space:
            out.append(ch)
        else:
            out.append(quote(ch, safe=""))
    return "".join(out)


def entries(loc: EndpointLocation) -> dict[str, str]:
    """The AstDB keys (without family) and values of one location; unknown values are absent."""
    r = key_part(loc.resource)
    out: dict[str, str] = {}
    if loc.primary_node:
        out[f"node/{r}"] = value_text(loc.primary_node)
    if loc.ip:
        host = f"[{loc.ip}]" if ":" in loc.ip else loc.ip
        out[f"addr/{r}"] = value_text(f"{host}:{loc.port}" if loc.port else host)
    out[f"state/{r}"] = value_text(loc.device_state.value)
    if loc.contact_uri:
        out[f"contact/{r}"] = value_text(loc.contact_uri)
    return out


def all_keys(resource: str) -> list[str]:
    """Every key a resource may have (what a tombstone deletes)."""
    r = key_part(resource)
    return [f"{kind}/{r}" for kind in KINDS]


class AmiClient:
    """One AMI connection: login, pipelined actions matched by ActionID, list answers."""

    def __init__(self, host: str, port: int, user: str, secret: str, *, timeout: float, window: int):
        self.host, self.port, self.user, self._secret = host, port, user, secret
        self.timeout = timeout
        self.name = f"{host}:{port}"
        self._window = asyncio.Semaphore(window)
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[asyncio.Future[list[dict[str, str]]], list[dict[str, str]]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._reader_task is not None and not self._reader_task.done()

    async def connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            banner = await asyncio.wait_for(reader.readline(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise AmiError(f"cannot connect: {exc or type(exc).__name__}") from exc
        if not banner.startswith(b"Asterisk Call Manager"):
            writer.close()
            raise AmiError(f"not an AMI server (banner {banner[:40]!r})")
        self._writer = writer
        self._reader_task = asyncio.create_task(self._read(reader), name=f"ami-reader-{self.name}")
        answer = await self.action("Login", [("Username", self.user), ("Secret", self._secret), ("Events", "off")])
        if answer[0].get("Response") != "Success":
            await self.close()
            raise LoginFailed(f"login refused: {answer[0].get('Message', '?')}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
            self._reader_task = None
        self._fail_pending(AmiError("connection closed"))

    async def action(self, name: str, headers: Iterable[tuple[str, str]] = ()) -> list[dict[str, str]]:
        """Send one action; return its response followed by the events of a list answer."""
        return (await self.actions([(name, headers)]))[0]

    async def actions(self, requests: list[tuple[str, Iterable[tuple[str, str]]]]) -> list[list[dict[str, str]]]:
        """Send actions pipelined (at most ``window`` unanswered), return their answers in order.

        Raises AmiError when the link fails or no answer came for ``timeout`` seconds, and
        ValueError (before sending anything) when a header holds CR/LF. One write per window
        and one timer for the whole call: a task and a timer per action (``wait_for``) cost
        more than the action itself when a batch holds thousands."""
        texts = [_action_text(name, headers) for name, headers in requests]
        if not texts:
            return []
        loop = asyncio.get_running_loop()
        ids: list[str] = []
        futs: list[asyncio.Future[list[dict[str, str]]]] = []
        out: list[str] = []
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                for text in texts:
                    if self._window.locked():  # send what is queued, then wait for a free slot
                        self._write(out)
                        deadline.reschedule(loop.time() + self.timeout)
                    await self._window.acquire()
                    if self._writer is None or not self.connected:
                        self._window.release()
                        raise AmiError("not connected")
                    action_id = f"astreg-{next(self._ids)}"
                    fut: asyncio.Future[list[dict[str, str]]] = loop.create_future()
                    fut.add_done_callback(self._release)
                    self._pending[action_id] = (fut, [])
                    ids.append(action_id)
                    futs.append(fut)
                    out.append(f"{text}ActionID: {action_id}\r\n\r\n")
                self._write(out)
                answers = []
                for fut in futs:
                    if not fut.done():
                        deadline.reschedule(loop.time() + self.timeout)
                    answers.append(await fut)
                return answers
        except TimeoutError as exc:
            raise AmiError(f"no answer to {requests[0][0]} ({len(texts)} actions) within {self.timeout}s") from exc
        finally:
            for action_id in ids:
                self._pending.pop(action_id, None)
            for fut in futs:
                if not fut.done():
                    fut.cancel()  # frees its window slot

    def _release(self, _fut: asyncio.Future[list[dict[str, str]]]) -> None:
        self._window.release()

    def _write(self, out: list[str]) -> None:
        if out and self._writer is not None:
            self._writer.write("".join(out).encode("utf-8"))
        out.clear()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        framer = AmiFramer(errors="replace")  # the banner was read by connect()
        try:
            while data := await reader.read(1 << 16):
                for frame in framer.feed(data):
                    self._dispatch(header_map(frame))
            logger.info("AMI %s: link lost (closed by the node)", self.name)
        except (OSError, FrameTooLarge) as exc:
            logger.info("AMI %s: link lost (%s)", self.name, type(exc).__name__)
        finally:
            self._writer = None
            self._fail_pending(AmiError("connection lost"))

    def _dispatch(self, msg: dict[str, str]) -> None:
        entry = self._pending.get(msg.get("ActionID", ""))
        if entry is None:
            return  # an event we did not ask for (Shutdown, FullyBooted ...)
        fut, parts = entry
        parts.append(msg)
        listing = parts[0].get("EventList", "").lower() == "start"
        if not listing or msg.get("EventList", "").lower() == "complete":
            if not fut.done():
                fut.set_result(parts)

    def _fail_pending(self, exc: Exception) -> None:
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)


def _action_text(name: str, headers: Iterable[tuple[str, str]]) -> str:
    lines = [("Action", name), *headers]
    for k, v in lines:
        if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
            raise ValueError(f"AMI header {k!r} contains CR/LF")  # encoded values never do
    return "".join(f"{k}: {v}\r\n" for k, v in lines)


# ast_db_put refuses a key when strlen(family) + strlen(key) + 2 > MAX_DB_FIELD (256) - 1.
MAX_FULL_KEY = 255

# What a node holds under a key whose DBPut it refused: not known, so the next wanted value is
# sent again and a removal is not skipped. Never equal to a value_text (NUL is percent-encoded).
_UNKNOWN = "\x00unknown"

# One changed resource: every key it may have, and the keys and values it should have now.
Change = tuple[list[str], dict[str, str]]

# Offsets live under this key in the family: ``offsets/<topic>/<partition>`` (no resource key
# starts with it: the kinds are node, addr, state and contact).
OFFSETS_KEY = "offsets"


def offset_key(topic: str, partition: int) -> str:
    return f"{OFFSETS_KEY}/{key_part(topic)}/{partition}"


class _Endpoint(NamedTuple):
    """What the mirror keeps of an endpoint: enough to choose among a resource's technologies."""

    resource: str
    rank: int
    technology: str
    keys: dict[str, str]


class _Node:
    def __init__(self, client: AmiClient):
        self.client = client
        self.dirty = True  # a fresh connection: the node's AstDB may differ from the topic
        # The family's keys and values the node holds, as far as its answers told us; None until
        # the first reconcile read them (DBGetTree). Writes send only what differs from it.
        self.held: dict[str, str] | None = None


class AstDbSink:
    """Write locations to the AstDB of one or more nodes (see the module docstring).

    Each node's keys are known (read by the reconcile, then kept up to date from the answer to
    every DBPut/DBDel), so a batch sends only the keys whose value changed: a phone that moves
    to another node usually changes ``node/`` alone (one action, not four), and a restarted
    sink whose nodes already hold the topic sends nothing. Until the first replay of the topic
    has ended nothing is written: the reconcile at its end writes the difference once (replaying
    a compacted topic takes seconds; writing every replayed row cost four actions per row and
    node, 400,000 per node for 100,000 phones, most of them overwritten values).
    """

    kind = "astdb"
    full_replay = True
    # Retries of an unavailable node every half second at most, however long it was down: a
    # refused connect costs nothing, and every second of a restarted node's AstDB holding old
    # routing keys is a second of calls sent to the wrong node.
    retry_cap = 0.5

    def __init__(self, settings: AstDbSettings):
        self.settings = settings
        self.family = settings.family
        secret = settings.ami_secret.get_secret_value()
        self.nodes = [
            _Node(AmiClient(h, p, settings.ami_user, secret, timeout=settings.timeout, window=settings.window))
            for h, p in settings.addresses
        ]
        self.endpoints: dict[str, _Endpoint] = {}  # endpoint id -> what its location says
        self.by_resource: dict[str, set[str]] = {}  # resource -> endpoint ids registered for it
        self.mirror: dict[str, dict[str, str]] = {}  # resource -> the keys and values it should have
        self.offsets: dict[str, str] = {}  # offset key -> next offset, as sent to every node
        self.ready = False  # the mirror holds the whole topic (first rebuild finished)
        self.reconciles = 0
        self.actions_sent = 0  # DBPut + DBDel of dialplan keys sent to all nodes
        self.offsets_sent = 0  # DBPut of offsets/ keys sent to all nodes
        self.default_group: str | None = None  # set by setup(): astreg-sink-astdb-<node ids>

    # ----------------------------------------------------------------- contract

    async def setup(self) -> None:
        await asyncio.gather(*(self._connected(n) for n in self.nodes))
        names = []
        for node in self.nodes:
            answer = await node.client.action("CoreSettings")
            names.append(answer[0].get("SystemName", "").strip() or node.client.name.replace(":", "-"))
        # Each node's AstDB needs every endpoint: a sink per node, each in its own group. The
        # default group names the node(s) it writes, so running the same command on every node
        # is right without flags (a shared group would split the partitions between the nodes).
        self.default_group = "astreg-sink-astdb-" + "+".join(sorted(names))

    async def write_batch(
        self, upserts: dict[str, EndpointLocation], deletes: set[str], offsets: dict[Any, int] | None = None
    ) -> None:
        room = MAX_FULL_KEY - len(self.family.encode()) - 2  # "/family/key"
        staged: dict[str, _Endpoint | None] = {ep: None for ep in deletes}
        for ep, loc in upserts.items():
            want = entries(loc)
            too_long = [k for k in all_keys(loc.resource) if len(k.encode()) > room]
            if too_long:  # Asterisk would refuse it on every node, every time: a dead letter
                kind = too_long[0].partition("/")[0]
                raise PermanentWriteError(
                    f"AstDB key {kind}/<resource> of {ep[:64]!r} is {len(too_long[0].encode())} bytes; with family "
                    f"{self.family!r} Asterisk stores keys of at most {room} (MAX_DB_FIELD 256)")
            staged[ep] = _Endpoint(loc.resource, route_rank(loc.technology, loc.primary_node is not None),
                                   loc.technology, want)
        changes: dict[str, Change] = {}
        members: dict[str, set[str]] = {}
        for ep, entry in staged.items():
            old = self.endpoints.get(ep)
            for resource in {e.resource for e in (old, entry) if e is not None} or {resource_of(ep)}:
                if resource not in members:
                    members[resource] = set(self.by_resource.get(resource, ()))
                if entry is not None and entry.resource == resource:
                    members[resource].add(ep)
                else:
                    members[resource].discard(ep)
        def after(ep: str) -> _Endpoint:
            """The endpoint as this batch leaves it (members hold no deleted endpoint)."""
            entry = staged[ep] if ep in staged else self.endpoints[ep]
            assert entry is not None
            return entry

        for resource, eps in members.items():
            # The endpoint that speaks for the resource: sinks.routes' order, on the stored ranks.
            chosen = min((after(ep) for ep in eps), key=lambda e: (e.rank, e.technology), default=None)
            changes[resource] = (all_keys(resource), dict(chosen.keys) if chosen is not None else {})
        marks = {offset_key(tp.topic, tp.partition): str(off) for tp, off in (offsets or {}).items()}
        await self._on_all(lambda n: self._apply(n, changes, marks))
        # Only once every node took the batch (the runner retries it otherwise).
        for ep, entry in staged.items():
            if entry is None:
                self.endpoints.pop(ep, None)
            else:
                self.endpoints[ep] = entry
        for resource, eps in members.items():
            want = changes[resource][1]
            if eps:
                self.by_resource[resource] = eps
            else:
                self.by_resource.pop(resource, None)
            if want:
                self.mirror[resource] = want
            else:
                self.mirror.pop(resource, None)
        self.offsets.update(marks)

    async def read_offsets(self, topic: str) -> dict[int, int]:
        """Check that every node still holds the offsets it was sent (an AstDB emptied by hand,
        ``database deltree``, with the AMI link up); a node that does not is reconciled from the
        mirror at the next write or quiet moment. Returns what was sent: the mirror, not a node,
        is the sink's copy of the topic."""
        if self.ready:
            await self._on_all(self._check_offsets)
        head = f"{OFFSETS_KEY}/{key_part(topic)}/"
        return {int(k[len(head):]): int(v) for k, v in self.offsets.items() if k.startswith(head)}

    async def _check_offsets(self, node: _Node) -> None:
        if node.held is None or node.dirty:
            return
        sent = {k: v for k, v in node.held.items() if k.startswith(f"{OFFSETS_KEY}/")}
        if not sent:
            return
        answer = await node.client.action("DBGetTree", [("Family", self.family), ("Key", OFFSETS_KEY)])
        head = f"/{self.family}/"
        have = {m["Key"][len(head):]: m.get("Val", "") for m in answer[1:]
                if m.get("Event") == "DBGetTreeResponse" and m.get("Key", "").startswith(head)}
        if any(have.get(k) != v for k, v in sent.items()):
            logger.warning("astdb sink: %s no longer holds what it was sent (its AstDB was emptied or restored): "
                           "reconciling it", node.client.name)
            node.dirty = True

    async def reconcile(self, alive: set[str], owned: Callable[[str], bool]) -> int:
        """The mirror now holds the whole topic: make every node's family equal to it."""
        removed = [0]

        async def one(node: _Node) -> None:
            removed[0] += await self._reconcile(node)

        await self._on_all(one)
        self.ready = True
        return removed[0]

    async def flush(self) -> None:
        """Reconcile nodes that reconnected since the last write (idle time is a good moment)."""
        if self.ready and any(node.dirty or not node.client.connected for node in self.nodes):
            await self._on_all(lambda n: self._apply(n, {}, {}))

    async def close(self) -> None:
        for node in self.nodes:
            await node.client.close()

    # ----------------------------------------------------------------- internals

    async def _on_all(self, work: Callable[[_Node], object]) -> None:
        async def guarded(node: _Node) -> None:
            try:
                await self._connected(node)
                await work(node)  # type: ignore[misc]
            except AmiError as exc:
                await node.client.close()
                raise SinkUnavailable(f"AMI {node.client.name}: {exc}", 1.0) from exc

        results = await asyncio.gather(*(guarded(n) for n in self.nodes), return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res

    async def _connected(self, node: _Node) -> None:
        if node.client.connected:
            return
        try:
            await node.client.connect()
        except LoginFailed as exc:  # a wrong user or secret does not heal by retrying
            raise ConfigError(f"AstDB sink: AMI {node.client.name}: {exc} (user {self.settings.ami_user!r})") from exc
        except AmiError as exc:
            raise SinkUnavailable(f"AMI {node.client.name}: {exc}", 1.0) from exc
        node.dirty = True
        logger.info("astdb sink: connected to %s", node.client.name)

    async def _apply(self, node: _Node, changes: dict[str, Change], marks: dict[str, str]) -> None:
        if node.held is None or node.dirty:
            if self.ready:  # before that, the reconcile at the end of the replay writes it all
                await self._reconcile(node, changes, marks)
            return
        held = node.held
        puts: dict[str, str] = {}
        dels: list[str] = []
        for keys, want in changes.values():
            for k in keys:
                v = want.get(k)
                if v is None:
                    if k in held:
                        dels.append(k)
                elif held.get(k) != v:
                    puts[k] = v
        if puts or dels:  # the offsets after the rows: AMI runs one session's actions in order
            puts.update(marks)
        await self._send(node, puts, dels)

    async def _reconcile(self, node: _Node, changes: dict[str, Change] | None = None,
                         marks: dict[str, str] | None = None) -> int:
        """Make the node's family equal to the mirror (and ``changes``, a batch being written)."""
        want: dict[str, str] = {}
        for resource, keys in self.mirror.items():
            if not changes or resource not in changes:
                want.update(keys)
        for _, keys in (changes or {}).values():
            want.update(keys)
        want.update(self.offsets)
        want.update(marks or {})
        answer = await node.client.action("DBGetTree", [("Family", self.family)])
        if answer[0].get("Response") != "Success":
            raise AmiError(f"DBGetTree refused: {answer[0].get('Message', '?')}")
        head = f"/{self.family}/"
        have = {m["Key"][len(head):]: m.get("Val", "") for m in answer[1:]
                if m.get("Event") == "DBGetTreeResponse" and m.get("Key", "").startswith(head)}
        node.held = dict(have)
        puts = {k: v for k, v in want.items() if have.get(k) != v}
        dels = sorted(set(have) - set(want))
        await self._send(node, puts, dels)
        node.dirty = False
        self.reconciles += 1
        logger.info("astdb sink: reconciled %s: %d written, %d removed, %d kept",
                    node.client.name, len(puts), len(dels), len(want) - len(puts))
        return len(dels)

    async def _send(self, node: _Node, puts: dict[str, str], dels: list[str]) -> None:
        """DBPut/DBDel, pipelined; ``node.held`` follows every answer, a refusal included."""
        if not puts and not dels:
            return
        held, family = node.held, self.family
        assert held is not None, "read by _reconcile before any write"
        requests: list[tuple[str, Iterable[tuple[str, str]]]] = [
            ("DBPut", (("Family", family), ("Key", k), ("Val", v))) for k, v in puts.items()]
        requests += [("DBDel", (("Family", family), ("Key", k))) for k in dels]
        offsets = sum(1 for k in puts if k.startswith(f"{OFFSETS_KEY}/"))
        self.actions_sent += len(requests) - offsets
        self.offsets_sent += offsets
        answers = await node.client.actions(requests)
        refused = []
        for (k, v), answer in zip(puts.items(), answers, strict=False):
            if answer[0].get("Response") == "Success":
                held[k] = v
            else:
                held[k] = _UNKNOWN
                refused.append(answer[0].get("Message", "?"))
        undeleted = 0
        for k, answer in zip(dels, answers[len(puts):], strict=True):
            if answer[0].get("Response") == "Success":
                held.pop(k, None)
            else:
                # Only keys the node was known to hold are deleted, so an Error is its database
                # refusing writes, or a key someone else removed meanwhile: keep it unknown and
                # reconcile first on the retry (DBGetTree tells which).
                held[k] = _UNKNOWN
                node.dirty = True
                undeleted += 1
        if undeleted and not refused:
            raise SinkUnavailable(f"AMI {node.client.name} refused {undeleted} DBDel: its AstDB takes no writes", 1.0)
        if refused:
            # DBDel of a missing key answers Error and is fine; a refused DBPut is not. With keys
            # checked against Asterisk's length limit before sending (write_batch), what is left
            # is the node's database refusing writes (disk full, read-only file): the node is
            # unavailable, the batch is retried (offsets held) and nothing is dropped.
            raise SinkUnavailable(f"AMI {node.client.name} refused DBPut ({refused[0]}): its AstDB takes no writes", 1.0)
