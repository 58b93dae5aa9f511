"""AstDB sink: the dialplan of every Asterisk node reads ``${DB(astreg/node/${EXTEN})}``.

``astreg sink astdb --ami HOST:PORT[,HOST:PORT...] --ami-user U --ami-secret S`` writes, per
endpoint, the keys ``node/<resource>`` (primary node), ``addr/<resource>`` (ip:port),
``state/<resource>`` (device state) and ``contact/<resource>`` (contact URI) of family
``astreg`` on every listed node with AMI ``DBPut``/``DBDel``; a key whose value is unknown is
deleted, a tombstone deletes all four. The sink mirrors the whole topic in memory (it always
replays it from the start, which a compacted topic makes cheap) so that on start, and after every
AMI reconnect (a restarted node may have lost its AstDB), it reconciles the node with
``DBGetTree``: keys no longer wanted are deleted, missing or different ones written again.
Actions are pipelined: up to ``--window`` in flight per node, matched by ActionID.

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
from urllib.parse import quote

from astreg.errors import PermanentWriteError, SinkUnavailable
from schemas.models import EndpointLocation

from .settings import AstDbSettings

__all__ = ["AstDbSink", "AstDbSettings", "AmiClient", "entries", "key_part", "value_text", "KINDS"]

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


class AmiError(Exception):
    """The AMI link failed (closed, timed out, refused the login)."""


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
            raise AmiError(f"login refused: {answer[0].get('Message', '?')}")

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
        lines = [("Action", name), *headers]
        for k, v in lines:
            if "\r" in v or "\n" in v or "\r" in k or "\n" in k:
                raise ValueError(f"AMI header {k!r} contains CR/LF")  # encoded values never do
        async with self._window:
            if self._writer is None or not self.connected:
                raise AmiError("not connected")
            action_id = f"astreg-{next(self._ids)}"
            fut: asyncio.Future[list[dict[str, str]]] = asyncio.get_running_loop().create_future()
            self._pending[action_id] = (fut, [])
            text = "".join(f"{k}: {v}\r\n" for k, v in lines) + f"ActionID: {action_id}\r\n\r\n"
            self._writer.write(text.encode("utf-8"))
            try:
                return await asyncio.wait_for(fut, self.timeout)
            except TimeoutError as exc:
                raise AmiError(f"no answer to {name} within {self.timeout}s") from exc
            finally:
                self._pending.pop(action_id, None)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                self._dispatch(_parse(raw))
        except (asyncio.IncompleteReadError, OSError, asyncio.LimitOverrunError) as exc:
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


def _parse(raw: bytes) -> dict[str, str]:
    msg: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if sep:
            msg.setdefault(key.strip(), value[1:] if value.startswith(" ") else value)
    return msg


class _Node:
    def __init__(self, client: AmiClient):
        self.client = client
        self.dirty = True  # a fresh connection: the node's AstDB may differ from the topic


class AstDbSink:
    """Write locations to the AstDB of one or more nodes (see the module docstring)."""

    kind = "astdb"
    full_replay = True

    def __init__(self, settings: AstDbSettings):
        self.settings = settings
        self.family = settings.family
        secret = settings.ami_secret.get_secret_value()
        self.nodes = [
            _Node(AmiClient(h, p, settings.ami_user, secret, timeout=settings.timeout, window=settings.window))
            for h, p in settings.addresses
        ]
        self.mirror: dict[str, dict[str, str]] = {}  # endpoint -> its keys and values
        self.ready = False  # the mirror holds the whole topic (first rebuild finished)
        self.reconciles = 0

    # ----------------------------------------------------------------- contract

    async def setup(self) -> None:
        await asyncio.gather(*(self._connected(n) for n in self.nodes))

    async def write_batch(self, upserts: dict[str, EndpointLocation], deletes: set[str]) -> None:
        mirror = dict(self.mirror)
        puts: dict[str, str] = {}
        dels: set[str] = set()
        for ep in deletes:
            mirror.pop(ep, None)
            dels.update(all_keys(ep.partition("/")[2] or ep))
        for ep, loc in upserts.items():
            new = entries(loc)
            mirror[ep] = new
            dels.update(set(all_keys(loc.resource)) - set(new))
            puts.update(new)
        dels -= set(puts)
        await self._on_all(lambda n: self._apply(n, mirror, puts, dels))
        self.mirror = mirror

    async def reconcile(self, alive: set[str], owned: Callable[[str], bool]) -> int:
        """The mirror now holds the whole topic: make every node's family equal to it."""
        removed = [0]

        async def one(node: _Node) -> None:
            removed[0] += await self._reconcile(node, self.mirror)

        await self._on_all(one)
        self.ready = True
        return removed[0]

    async def flush(self) -> None:
        """Reconcile nodes that reconnected since the last write (idle time is a good moment)."""
        if not self.ready:
            return
        for node in self.nodes:
            if node.dirty or not node.client.connected:
                await self._on_all(lambda n: self._apply(n, self.mirror, {}, set()))
                return

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
        except AmiError as exc:
            raise SinkUnavailable(f"AMI {node.client.name}: {exc}", 1.0) from exc
        node.dirty = True
        logger.info("astdb sink: connected to %s", node.client.name)

    async def _apply(self, node: _Node, mirror: dict[str, dict[str, str]], puts: dict[str, str], dels: set[str]) -> None:
        if node.dirty and self.ready:
            await self._reconcile(node, mirror)
            return
        await self._send(node, puts, dels)

    async def _reconcile(self, node: _Node, mirror: dict[str, dict[str, str]]) -> int:
        want: dict[str, str] = {}
        for keys in mirror.values():
            want.update(keys)
        answer = await node.client.action("DBGetTree", [("Family", self.family)])
        if answer[0].get("Response") != "Success":
            raise AmiError(f"DBGetTree refused: {answer[0].get('Message', '?')}")
        head = f"/{self.family}/"
        have = {m["Key"][len(head):]: m.get("Val", "") for m in answer[1:]
                if m.get("Event") == "DBGetTreeResponse" and m.get("Key", "").startswith(head)}
        puts = {k: v for k, v in want.items() if have.get(k) != v}
        dels = set(have) - set(want)
        await self._send(node, puts, dels)
        node.dirty = False
        self.reconciles += 1
        logger.info("astdb sink: reconciled %s: %d written, %d removed, %d kept",
                    node.client.name, len(puts), len(dels), len(want) - len(puts))
        return len(dels)

    async def _send(self, node: _Node, puts: dict[str, str], dels: set[str]) -> None:
        client = node.client
        calls = [client.action("DBPut", [("Family", self.family), ("Key", k), ("Val", v)]) for k, v in puts.items()]
        calls += [client.action("DBDel", [("Family", self.family), ("Key", k)]) for k in sorted(dels)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        for answer in answers:
            if isinstance(answer, AmiError):
                raise answer
            if isinstance(answer, BaseException):
                raise AmiError(f"{type(answer).__name__}: {answer}") from answer
        refused = [a[0].get("Message", "?") for a in answers[: len(puts)]  # type: ignore[index]
                   if a[0].get("Response") != "Success"]  # type: ignore[index]
        if refused:
            # DBDel of a missing key answers Error and is fine; a refused DBPut is not.
            raise PermanentWriteError(f"AMI {client.name} refused DBPut: {refused[0]}")
