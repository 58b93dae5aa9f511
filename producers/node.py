"""The producer of one Asterisk node: AMI link, ordering, snapshots, heartbeats.

:class:`NodeProducer` keeps one AMI session alive (panoramisk's protocol and message parser,
with its weaknesses fixed here: an incremental UTF-8 decoder so a character split across TCP
reads survives, every message handed *synchronously* to one ordered queue instead of
concurrent callback tasks, a Ping whose answer is awaited with a timeout so a half-open link is
noticed, reconnects with backoff, and a parser error dead-letters the frame instead of killing
the link). One consumer task takes the queue in wire order, maps messages with
:func:`producers.ami.to_event`, stamps ``(producer_epoch, seq)`` and hands encoded records to the
:class:`~producers.publisher.Publisher`. Snapshots (SNAPSHOT_BEGIN, list rows, SNAPSHOT_COMPLETE)
run after every login, FullyBooted, ``resync_interval`` and Kafka outage, and their rows travel
through the same queue, so they are ordered against live events exactly as Asterisk sent them.

Run it with ``astreg producer --ami HOST:PORT --ami-user U --ami-secret S --bootstrap B``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from panoramisk import actions as pactions
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message
from pydantic import Field, SecretStr, field_validator

from astreg.amiwire import MAX_FRAME, AmiFramer, header_map
from astreg.auth import Signer, derive_node_key, header_value, load_key, signature_of
from astreg.deadletter import deadletter_headers
from astreg.errors import ConfigError, LoginFailed, MalformedAmiEvent, ProducerFenced, UndecodableRecord
from astreg.settings import AuthSettings, KafkaSettings, TopicSettings
from schemas.codec import Codec
from schemas.models import (
    ContactStatus,
    EventKind,
    LinkState,
    NodeEventKind,
    NodeStatus,
    RegistrationEvent,
    Source,
)
from schemas.validate import node_id_problem, registration_problem

from . import ami
from .metrics import ProducerMetrics
from .publisher import Publisher, Record
from .quality_tap import AMI_CLASS, RTCP_EVENTS, QualityTap
from .refresh import PendingEndpoints, TokenBucket, refreshed

__all__ = [
    "ProducerSettings", "NodeProducer", "AmiProtocol", "next_epoch", "MAX_PENDING", "AmiMessage",
    "parse_frame", "AmiLink",
]

logger = logging.getLogger(__name__)

QUEUE_HIGH = 2000  # AMI messages waiting for the consumer before reading pauses
QUEUE_LOW = 500
SEND_HIGH = 10_000  # records waiting for Kafka (while it is up) before the consumer waits
SEND_LOW = 4_000
MAX_PENDING = MAX_FRAME  # an AMI message without its terminating blank line beyond this is junk
RECONNECT_MIN = 0.5
# A refused or failed connect to AMI costs nothing, while every second of waiting after Asterisk
# is back is a second of registrations the cluster does not see: with a long cap, a node back
# after a few seconds' outage would wait out most of the cap before the next attempt.
RECONNECT_MAX = 5.0
ACTION_TIMEOUT = 30.0
SNAPSHOT_LISTS = (
    ("PJSIPShowContacts", "ContactListComplete"),
    ("SIPpeers", "PeerlistComplete"),
    ("DeviceStateList", "DeviceStateListComplete"),
)


class ProducerSettings(AuthSettings):
    """How one producer reaches its Asterisk node and how it behaves."""

    node_key_file: Path | None = Field(
        None, description="This node's key (astreg keys derive --node N): every record is signed with it.")

    ami: str = Field("127.0.0.1:5038", description="AMI address HOST:PORT of the Asterisk node.")
    ami_user: str = Field("astreg", description="AMI user (manager.conf).")
    ami_secret: SecretStr = Field(SecretStr(""), description="AMI secret (never logged).")
    ami_tls: bool = Field(False, description="Connect to the AMI over TLS (tlsbindaddr).")
    ami_tls_cafile: Path | None = Field(None, description="CA bundle to verify the AMI TLS certificate.")
    ami_md5: bool = Field(False, description="Log in with the MD5 challenge instead of the plain secret.")
    node: str | None = Field(None, description="Node id; default: SystemName from CoreSettings, else the host name.")
    resync_interval: float = Field(300.0, gt=0, description="Seconds between periodic snapshots.")
    heartbeat_interval: float = Field(5.0, gt=0, description="Seconds between heartbeats (and AMI Pings).")
    ping_timeout: float = Field(5.0, gt=0, description="Seconds a Ping may take before the AMI link counts as dead.")
    buffer_size: int = Field(100_000, ge=100, description="Records buffered while Kafka is unreachable.")
    metrics_port: int = Field(0, ge=0, description="Prometheus /metrics port (0 = off).")
    linger_ms: int = Field(0, ge=0, description="Kafka producer linger (ms). 0 sends at once: the client keeps one "
                           "request in flight per broker, so what arrives meanwhile goes out together in the next one.")
    compression: Literal["none", "gzip", "lz4", "zstd"] = Field("lz4", description="Kafka compression.")
    epoch_file: Path | None = Field(None, description="File keeping producer epochs strictly increasing across restarts.")
    quality: bool = Field(True, description="Publish call quality (RTCP, AMI class reporting) and qualify RTT samples on the quality topic.")
    detail_rate: float = Field(
        20.0, gt=0, description="AMI actions per second spent asking the node for contacts' details: refreshes "
        "(after a SuccessfulAuth) and new contacts (user agent, expiry, Call-ID).")
    refresh_scan_interval: float = Field(
        60.0, ge=0, description="Seconds between comparisons of the node's contact expirations, which find the "
        "refreshes of endpoints without authentication (they emit no security event); 0: off.")

    @field_validator("node")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is not None and (problem := node_id_problem(value)):
            raise ValueError(problem)
        return value

    def _has_key(self) -> bool:
        return self.node_key_file is not None or self.cluster_key_file is not None

    def _key_options(self) -> str:
        return "--node-key-file / ASTREG_NODE_KEY_FILE (or --cluster-key-file)"

    def signer(self, node: str) -> Signer | None:
        """How this producer signs the records of ``node`` (None: --insecure-no-auth); ConfigError
        without a key."""
        self._require_key()
        if self.insecure_no_auth:
            return None
        if self.node_key_file is not None:
            return Signer(load_key(self.node_key_file), node)
        if self.cluster_key_file is not None:
            return Signer(derive_node_key(load_key(self.cluster_key_file), node), node)
        return None

    @property
    def ami_host(self) -> str:
        host, _, _ = self.ami.rpartition(":")
        return (host or self.ami).strip("[]")

    @property
    def ami_port(self) -> int:
        _, sep, port = self.ami.rpartition(":")
        return int(port) if sep and port.isdigit() else 5038


def next_epoch(now_ms: int, epoch_file: Path | None) -> int:
    """The producer epoch: now in ms, made larger than any epoch recorded in ``epoch_file``."""
    epoch = now_ms
    if epoch_file is not None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            epoch = max(epoch, int(epoch_file.read_text().strip() or 0) + 1)
        tmp = epoch_file.with_suffix(epoch_file.suffix + ".tmp")
        tmp.write_text(str(epoch))
        os.replace(tmp, epoch_file)
    return epoch


# ---------------------------------------------------------------- the AMI protocol


class AmiMessage(dict[str, str]):
    """One AMI message: headers as AMI spells them, plus the raw text (for dead letters)."""

    __slots__ = ("raw",)
    raw: str


def parse_frame(frame: str) -> AmiMessage:
    """``Key: Value`` lines → AmiMessage by the one AMI header rule (:func:`astreg.amiwire.header_map`:
    a repeated header's first value, as Asterisk reads it). Several times cheaper than
    panoramisk's case-insensitive Message, and AMI spells its headers consistently."""
    msg = AmiMessage(header_map(frame))
    msg.raw = frame
    return msg


class AmiProtocol(AMIProtocol):
    """panoramisk's protocol with lossless framing: incremental UTF-8, per-frame error handling.

    Invalid UTF-8 becomes lone surrogates (``surrogateescape``) so the mapping can reject the
    message and the dead letter can carry the original bytes. Events go to ``on_message``
    synchronously in wire order; responses resolve panoramisk's action futures.
    """

    def __init__(self, link: AmiLink):
        self.link = link
        self.version: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.factory = self.link
        self.encoding = "utf-8"
        self._framer = AmiFramer(banner=True, limit=MAX_PENDING, on_oversize=self._oversize)
        self.last_rx = time.monotonic()
        self.link.protocol_connected(self)

    def _oversize(self, prefix: str, limit: int) -> None:
        self.link.bad_frame(prefix[:ami.MAX_FIELD], f"message longer than {limit} characters")

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        frames = self._framer.feed(data)
        if self.version is None:
            self.version = self._framer.version
        on_message = self.link.on_message
        wanted = self.link.wanted
        for frame in frames:
            if frame.startswith("Event: "):
                # Most AMI traffic is of no interest: decide on the Event header alone, before
                # parsing the rest (list items of our own actions carry an ActionID).
                end = frame.find("\n")
                name = (frame[7:end] if end > 0 else frame[7:]).rstrip("\r")
                if name not in wanted and "\nActionID: " not in frame:
                    continue
            try:
                message = parse_frame(frame)
            except Exception as exc:  # noqa: BLE001 - a parser bug must cost one frame, not the link
                self.link.bad_frame(frame, f"unparseable AMI frame: {type(exc).__name__}: {exc}")
                continue
            if "Event" in message:
                on_message(message)
            elif "Response" in message:
                self.handle_message(Message(message))
            else:
                self.link.bad_frame(frame, "AMI frame without Event or Response header")

    def handle_message(self, message: Message) -> None:
        action = self.responses.pop(message.action_id, None) if message.action_id else None
        if action is not None and not action.future.done():
            action.future.set_result(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for action in self.responses.values():
            if not action.future.done():
                action.future.set_exception(ConnectionError("AMI connection lost"))
                action.future.exception()  # the waiter (if any) still gets it; never logged as lost
        self.responses.clear()
        self.link.protocol_lost(self, exc)


@dataclass
class AmiLink:
    """The parts of the node the protocol calls back (kept small so the protocol is testable)."""

    owner: NodeProducer

    def protocol_connected(self, proto: AmiProtocol) -> None:
        pass

    def protocol_lost(self, proto: AmiProtocol, exc: Exception | None) -> None:
        self.owner._protocol_lost(proto, exc)

    @property
    def wanted(self) -> frozenset[str]:
        return _WANTED_WITH_QUALITY if self.owner._quality is not None else _WANTED

    def on_message(self, message: AmiMessage) -> None:
        self.owner._enqueue(message)

    def bad_frame(self, frame: str, reason: str) -> None:
        self.owner._enqueue(_BadFrame(frame, reason))


# SuccessfulAuth (security class): the only live sign of a refresh REGISTER (producers/refresh.py).
_WANTED = ami.CONSUMED_EVENTS | {"SuccessfulAuth"}
_WANTED_WITH_QUALITY = _WANTED | RTCP_EVENTS

# ---------------------------------------------------------------- queue items


@dataclass
class _BadFrame:
    frame: str
    reason: str


@dataclass
class _Snapshot:
    id: str
    reason: str
    started: float
    begin_seq: int = 0
    contacts: int = 0
    devices: int = 0
    uris: set[str] = field(default_factory=set)
    live_added: set[str] = field(default_factory=set)
    infos: dict[str, ami.ContactInfo] = field(default_factory=dict)


@dataclass
class _Ask:
    """A question to the node outside snapshots: one endpoint's details or the contact list."""

    action: str  # PJSIPShowEndpoint | PJSIPShowContacts
    complete: str  # the event that ends its list
    done: asyncio.Future[None]
    items: list[Mapping[str, Any]] = field(default_factory=list)
    at_ms: int | None = None  # when the signal that prompted it arrived (a SuccessfulAuth)


@dataclass
class _Marker:
    what: str  # "begin" | "complete"
    snap: _Snapshot


@dataclass
class _ListDone:
    """A list action's Complete event was consumed: wakes the snapshot coroutine."""

    future: asyncio.Future[None]


# ---------------------------------------------------------------- the node producer


class NodeProducer:
    """One Asterisk node's producer (see module docstring)."""

    def __init__(
        self,
        settings: ProducerSettings,
        kafka: KafkaSettings,
        topics: TopicSettings,
        *,
        metrics: ProducerMetrics | None = None,
    ):
        self.settings = settings
        self.kafka = kafka
        self.topics = topics
        self.metrics = metrics or ProducerMetrics()
        self.node: str | None = settings.node
        self.epoch = 0
        self.seq = 0
        self.publisher = Publisher(
            kafka,
            buffer_size=settings.buffer_size,
            linger_ms=settings.linger_ms,
            compression=settings.compression,
            metrics=self.metrics,
            on_recovered=self._kafka_recovered,
            # Heartbeats held back this long may have made the workers call the node silent and
            # mark its contacts stale; only a snapshot un-stales them.
            stall_after=2 * settings.heartbeat_interval,
        )
        self._reg_codec = Codec.for_model(RegistrationEvent)
        self._node_codec = Codec.for_model(NodeStatus)
        self._queue: deque[Any] = deque()
        self._queue_event = asyncio.Event()
        self._paused = False
        self._in_counters: dict[str, Any] = {}
        self._protocol: AmiProtocol | None = None
        self._link_up = False
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._snapshot_wanted = asyncio.Event()
        self._lists: dict[str, tuple[_Snapshot, str, asyncio.Future[None]]] = {}
        self._asks: dict[str, _Ask] = {}
        self._pending_details = PendingEndpoints()
        self._asked = 0
        self._chan_sip = False  # decided at every login (ModuleCheck): SIPpeers only where it exists
        self.details_asked = 0  # PJSIPShowEndpoint questions sent (tests, metrics)
        self.refreshes_seen = 0
        self._contacts: dict[str, ami.ContactInfo] = {}
        self._live_uris: set[str] = set()
        self._peer_uris: dict[str, str] = {}
        self._last_snapshot: _Snapshot | None = None
        self._last_snapshot_at = 0
        self._asterisk_version: str | None = None
        self._system_name: str | None = None
        self._ami_version: str | None = None
        self._login_at = 0.0
        self._logins = 0  # successful AMI logins of this process
        self._malformed_seen: set[tuple[str, str]] = set()
        self._producer_name = f"{socket.gethostname()} astreg"
        self._node_known = asyncio.Event()
        self._signer: Signer | None = None
        if self.node is not None:
            self._signer = settings.signer(self.node)
            self._node_known.set()
        # Set when this producer must stop on its own: fenced by a newer producer of its node
        # id, or a node id it cannot speak for. run_forever stops and raises it.
        self.fatal: Exception | None = None
        self._fatal_event = asyncio.Event()
        self.connected = asyncio.Event()  # set while logged in (tests and bench wait on it)
        self.snapshots_completed = 0
        self.malformed = 0
        self._current_snap: _Snapshot | None = None
        self._quality = QualityTap(topics.topic_quality) if settings.quality else None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self.epoch = next_epoch(int(time.time() * 1000), self.settings.epoch_file)
        if self.settings.metrics_port:
            self.metrics.serve(self.settings.metrics_port)
        await self.publisher.start()
        self._tasks = [
            asyncio.create_task(self._consume(), name="ami-consumer"),
            asyncio.create_task(self._connect_loop(), name="ami-connect"),
            asyncio.create_task(self._snapshot_loop(), name="snapshots"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeats"),
            asyncio.create_task(self._resync_loop(), name="resync"),
            asyncio.create_task(self._detail_loop(), name="details"),
            asyncio.create_task(self._scan_loop(), name="refresh-scan"),
            asyncio.create_task(self._fence_loop(), name="fencing"),
        ]
        logger.info(
            "producer started: AMI %s, epoch %d, node %s", self.settings.ami, self.epoch, self.node or "(from AMI)"
        )

    async def stop(self) -> None:
        """Clean shutdown: STOPPED record, bounded flush, close everything (idempotent)."""
        if self._stopping:
            return
        self._stopping = True
        if self.node is not None:
            if not isinstance(self.fatal, ProducerFenced):  # a fenced producer no longer speaks for the node
                self._emit_node(NodeEventKind.STOPPED)
        for task in self._tasks:
            if task.get_name() != "ami-consumer":
                task.cancel()
        # let the consumer finish what is queued, then stop it
        for _ in range(50):
            if not self._queue:
                break
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task stuck in a client call must not hang the stop
            done, stuck = await asyncio.wait(set(self._tasks), timeout=5)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved (as gather did): no "never retrieved" noise
            for task in stuck:
                logger.warning("producer task %s did not stop within 5 s: abandoned", task.get_name())
        if self._protocol is not None:
            self._protocol.transport.close()
        await self.publisher.stop()
        logger.info("producer stopped (%d records sent, %d dropped)", self.publisher.sent, self.publisher.dropped)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; raises :class:`ProducerFenced` (or the node id's error) when
        the producer had to stop on its own."""
        await self.start()
        try:
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._fatal_event.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()
        finally:
            await self.stop()
        if self.fatal is not None:
            raise self.fatal

    def _fail(self, exc: Exception) -> None:
        if self.fatal is None:
            logger.error("%s", exc)
            self.fatal = exc
            self._fatal_event.set()

    # ------------------------------------------------------------ fencing

    async def _fence_loop(self) -> None:
        """Follow the nodes topic for this node id: a record of a newer producer (a larger epoch,
        signed with this node's key) fences this one, as Kafka fences an older transactional
        producer. The table follows the newest producer of a node only (the workers ignore older
        epochs once a newer one is announced), so the older one must stop, not go on unheard."""
        await self._node_known.wait()
        assert self.node is not None
        mine = self.node.encode()
        consumer = AIOKafkaConsumer(**self.kafka.aiokafka_kwargs(), group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="latest", fetch_max_wait_ms=500)
        backoff = RECONNECT_MIN
        while True:
            try:
                await consumer.start()
                break
            except Exception as exc:  # noqa: BLE001 - Kafka not reachable yet: the sender says so too
                logger.debug("fencing watch cannot start yet: %r", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)
        warned: set[int] = set()
        try:
            tp = TopicPartition(self.topics.topic_nodes, 0)
            consumer.assign([tp])
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=1000)
                for records in batches.values():
                    for r in records:
                        ns = self._own_node_record(r, mine)
                        if ns is None or ns.producer_epoch == self.epoch:
                            continue
                        if ns.producer_epoch > self.epoch:
                            self._fail(ProducerFenced(
                                f"producer fenced: a newer producer (epoch {ns.producer_epoch}, {ns.producer or '?'}) "
                                f"speaks for node {self.node}; this one (epoch {self.epoch}) stops. Run one producer "
                                "per node id."))
                            return
                        if ns.kind is not NodeEventKind.STOPPED and ns.producer_epoch not in warned:
                            warned.add(ns.producer_epoch)
                            logger.warning("an older producer (epoch %d, %s) still speaks for node %s: it stops when "
                                           "it reads this one's records", ns.producer_epoch, ns.producer or "?",
                                           self.node)
        finally:
            await consumer.stop()

    def _own_node_record(self, r: Any, mine: bytes) -> NodeStatus | None:
        """A nodes-topic record of this node id signed with its key, decoded; else None."""
        if r.key != mine:
            return None
        signer = self._signer
        if signer is not None:
            sig = header_value(r.headers)
            if sig is None or not hmac.compare_digest(sig, signature_of(signer.key, b"nodes", r.key, r.value)):
                return None  # not this node's: whoever wrote it cannot fence it
        try:
            return self._node_codec.decode(r.value)  # type: ignore[no-any-return]
        except UndecodableRecord:
            return None

    # ------------------------------------------------------------ AMI connection

    async def _connect_loop(self) -> None:
        backoff = RECONNECT_MIN
        first = True
        while not self._stopping:
            if not first:
                self.metrics.ami_reconnects.inc()
            first = False
            logins = self._logins
            problem: BaseException | None
            try:
                await self._session()
                problem = None
            except (TimeoutError, OSError, ConnectionError, LoginFailed) as exc:
                problem = exc
            except Exception as exc:  # noqa: BLE001 - the link must come back whatever went wrong
                logger.exception("AMI %s: unexpected error", self.settings.ami)
                problem = exc
            if self._logins != logins:
                # The session had logged in, however it ended (closed, Ping timeout): a new
                # outage starts over quickly instead of inheriting the last one's backoff.
                backoff = RECONNECT_MIN
            if problem is not None:
                logger.warning("AMI %s: %s; retrying in %.1fs", self.settings.ami,
                               problem or type(problem).__name__, backoff)
            self._set_link(False)
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _session(self) -> None:
        """Connect, log in, watch the link until it dies (then return or raise)."""
        s = self.settings
        ctx = None
        if s.ami_tls:
            ctx = ssl.create_default_context(cafile=str(s.ami_tls_cafile) if s.ami_tls_cafile else None)
        loop = asyncio.get_running_loop()
        link = AmiLink(self)
        lost = loop.create_future()
        self._session_lost = lost
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: AmiProtocol(link), s.ami_host, s.ami_port, ssl=ctx), ACTION_TIMEOUT
        )
        self._protocol = proto
        try:
            await self._login(proto)
            info = await self._action(proto, {"Action": "CoreSettings"})
            self._asterisk_version = info.get("AsteriskVersion") or None
            self._ami_version = info.get("AMIversion") or proto.version
            self._system_name = (info.get("SystemName") or "").strip() or None
            # Asterisk 21+ has no chan_sip: asking SIPpeers there earns a RequestBadFormat
            # security event per snapshot. Asked once per login (a restart may change modules).
            check = await self._action(proto, {"Action": "ModuleCheck", "Module": "chan_sip.so"})
            self._chan_sip = check.get("Response") == "Success"
            if self.node is None:
                node = (info.get("SystemName") or "").strip() or socket.gethostname()
                problem = node_id_problem(node)
                if problem:
                    self._fail(ConfigError(f"{problem} (from {'SystemName' if info.get('SystemName') else 'host name'}):"
                                           " set --node"))
                    return
                self._signer = self.settings.signer(node)
                self.node = node
                logger.info("node id %s (from %s)", self.node, "SystemName" if info.get("SystemName") else "host name")
                self._node_known.set()
            self._login_at = time.monotonic()
            self._logins += 1
            self._set_link(True)
            self.request_snapshot("login")
            await self._watch(proto, lost)
        finally:
            if not proto.closed:
                proto.transport.close()
            self._protocol = None

    async def _login(self, proto: AmiProtocol) -> None:
        s = self.settings
        secret = s.ami_secret.get_secret_value()
        events = f"system,call,security,{AMI_CLASS}" if self._quality is not None else "system,call,security"
        login: dict[str, str] = {"Action": "Login", "Username": s.ami_user, "Events": events}
        if s.ami_md5:
            challenge = await self._action(proto, {"Action": "Challenge", "AuthType": "MD5"})
            key = hashlib.md5((challenge.get("Challenge", "") + secret).encode()).hexdigest()  # noqa: S324 - AMI's protocol
            login.update(AuthType="MD5", Key=key)
        else:
            login["Secret"] = secret
        resp = await self._action(proto, login)
        if resp.get("Response") != "Success":
            raise LoginFailed(f"login as {s.ami_user!r} refused: {resp.get('Message') or resp.get('Response')}")
        logger.info("logged in to AMI %s as %s (AMI %s)", s.ami, s.ami_user, proto.version)

    async def _watch(self, proto: AmiProtocol, lost: asyncio.Future[None]) -> None:
        # panoramisk's own Ping never reads the answer: here a missing answer ends the session.
        interval = self.settings.heartbeat_interval
        while not lost.done():
            done, _ = await asyncio.wait({lost}, timeout=interval)
            if done:
                return
            try:
                await self._action(proto, {"Action": "Ping"}, timeout=self.settings.ping_timeout)
            except (TimeoutError, ConnectionError) as exc:
                if isinstance(exc, TimeoutError) and (
                    self._paused or time.monotonic() - proto.last_rx < self.settings.ping_timeout
                ):
                    # Bytes are flowing (the Pong is queued behind a burst, or we paused reading
                    # ourselves): busy, not half-open.
                    continue
                logger.warning("AMI %s: no answer to Ping within %.1fs: link presumed dead", self.settings.ami,
                               self.settings.ping_timeout)
                proto.transport.abort()
                raise ConnectionError("ping timeout") from exc

    async def _action(self, proto: AmiProtocol, fields: Mapping[str, str], timeout: float = ACTION_TIMEOUT) -> Message:
        action = pactions.Action(dict(fields))
        future = proto.send(action)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            proto.responses.pop(action.id, None)

    def _protocol_lost(self, proto: AmiProtocol, exc: Exception | None) -> None:
        lost = getattr(self, "_session_lost", None)
        if lost is not None and not lost.done():
            lost.set_result(None)
        for action_id, (_snap, _complete, future) in list(self._lists.items()):
            if not future.done():
                future.set_exception(ConnectionError("AMI connection lost during a snapshot"))
                future.exception()  # retrieved: the snapshot may be awaiting another future
            self._lists.pop(action_id, None)
        for ask in self._asks.values():
            if not ask.done.done():
                ask.done.set_exception(ConnectionError("AMI connection lost during a question"))
                ask.done.exception()
        self._asks.clear()
        self._pending_details.clear()  # the snapshot after the next login covers them

    def _set_link(self, up: bool) -> None:
        if up == self._link_up:
            return
        self._link_up = up
        self.metrics.ami_up.set(1 if up else 0)
        if up:
            self.connected.set()
        else:
            self.connected.clear()
            logger.warning("AMI link %s down", self.settings.ami)
        if self.node is not None and not self._stopping:
            self._emit_node(NodeEventKind.AMI_UP if up else NodeEventKind.AMI_DOWN)

    # ------------------------------------------------------------ ordered queue

    def _enqueue(self, item: Any) -> None:
        self._queue.append(item)
        if not self._queue_event.is_set():
            self._queue_event.set()
        if len(self._queue) > QUEUE_HIGH and not self._paused and self._protocol is not None:
            # TCP flow control instead of an unbounded queue: Asterisk waits, memory stays flat.
            self._paused = True
            self._protocol.transport.pause_reading()

    async def _consume(self) -> None:
        queue = self._queue
        handled = 0
        while True:
            if not queue:
                self._queue_event.clear()
                await self._queue_event.wait()
                continue
            if self.node is None:
                # Before the first CoreSettings answer the node id is unknown: hold the queue
                # (the per-session FullyBooted arrives before it) instead of dropping events.
                await self._node_known.wait()
            if self.publisher.depth > SEND_HIGH and self.publisher.kafka_up:
                # Kafka is up but slower than the AMI: let the queue (and then TCP) hold the
                # backlog instead of the send buffer, which is sized for outages.
                await self.publisher.wait_below(SEND_LOW)
            item = queue.popleft()
            try:
                if isinstance(item, dict):
                    self._handle(item)
                else:
                    self._handle_control(item)
            except Exception:  # noqa: BLE001 - one bad message must never stop the producer
                logger.exception("unexpected error handling %r", item)
            handled += 1
            if self._paused and len(queue) < QUEUE_LOW:
                self._paused = False
                if self._protocol is not None and not self._protocol.closed:
                    self._protocol.transport.resume_reading()
            if handled % 500 == 0:
                await asyncio.sleep(0)  # let the sender and the reader breathe in a burst

    def _handle(self, msg: Mapping[str, Any]) -> None:
        name = msg.get("Event", "")
        ask_id = msg.get("ActionID", "")
        if ask_id and ask_id in self._asks:
            self._ask_item(msg, name, ask_id)
            return
        if name == "SuccessfulAuth":
            if msg.get("Service") == "PJSIP" and msg.get("AccountID"):
                # a REGISTER (or INVITE): look; a refresh found is dated by this event
                self._pending_details.add(msg["AccountID"], int(time.time() * 1000))
            return
        if name in RTCP_EVENTS and self._quality is not None:
            self._quality_records(self._quality.rtcp, msg)
            return
        if name not in ami.CONSUMED_EVENTS:
            action_id = msg.get("ActionID", "")
            if action_id and action_id in self._lists:
                self._list_item(msg, name, action_id)
            return
        counter = self._in_counters.get(name)
        if counter is None:
            counter = self._in_counters[name] = self.metrics.events_in.labels(name)
        counter.inc()
        node = self.node
        assert node is not None  # _consume waits for it
        action_id = msg.get("ActionID", "")
        snap: _Snapshot | None = None
        source = Source.LIVE
        if action_id:
            entry = self._lists.get(action_id)
            if entry is None:
                return  # an answer to an action of an earlier, aborted snapshot
            snap = entry[0]
            source = Source.SNAPSHOT
        if name == "FullyBooted" or name == "Shutdown":
            self._node_event(msg, node)
            return
        now = int(time.time() * 1000)
        try:
            ev = ami.to_event(
                msg, node=node, now_ms=now, epoch=self.epoch, seq=self.seq + 1, source=source,
                snapshot_id=snap.id if snap else None, contacts=self._contacts, peer_uris=self._peer_uris,
                system_name=self._system_name,
            )
        except MalformedAmiEvent as exc:
            self._malformed(msg, exc)
            return
        if ev is None:
            return
        problem = registration_problem(ev, now)
        if problem is not None:
            self._malformed(msg, MalformedAmiEvent(f"out of range: {problem}", name))
            return
        self.seq += 1
        self._track(msg, name, ev, snap)
        self._put_registration(ev)
        if name == "ContactStatus" and self._quality is not None:
            self._quality_records(self._quality.contact, msg)

    def _quality_records(self, tap: Any, msg: Mapping[str, Any]) -> None:
        """Quality samples of one message, numbered with the producer's one counter."""
        assert self.node is not None
        try:
            records = tap(msg, node=self.node, now_ms=int(time.time() * 1000), epoch=self.epoch, seq=self.seq + 1)
        except MalformedAmiEvent as exc:
            self._malformed(msg, exc)
            return
        self.seq += len(records)
        for r in records:
            r.headers = self._signed(b"quality", r.key, r.value)
            self.publisher.put(r)

    def _track(self, msg: Mapping[str, Any], name: str, ev: RegistrationEvent, snap: _Snapshot | None) -> None:
        uri = ev.contact_uri
        if ev.kind is EventKind.DEVICE:
            if snap is not None:
                snap.devices += 1
            return
        if uri is None:
            return
        if (name == "ContactStatus" and snap is None and uri not in self._contacts
                and ev.endpoint.startswith("PJSIP/")):
            self._pending_details.add(ev.endpoint[6:])  # a new contact: its details at once
        if ev.contact_status is ContactStatus.REMOVED:
            self._live_uris.discard(uri)
            self._contacts.pop(uri, None)
            if not ev.endpoint.startswith("PJSIP/"):
                self._peer_uris.pop(ev.endpoint, None)
            return
        self._live_uris.add(uri)
        if snap is None and self._current_snap is not None:
            self._current_snap.live_added.add(uri)
        if not ev.endpoint.startswith("PJSIP/"):
            self._peer_uris[ev.endpoint] = uri
        if name == "ContactList":
            self._contacts[uri] = ami.contact_info(msg, self.node or "")
        if snap is not None:
            snap.contacts += 1
            snap.uris.add(uri)
            if name == "ContactList":
                snap.infos[uri] = self._contacts[uri]

    def _list_item(self, msg: Mapping[str, Any], name: str, action_id: str) -> None:
        snap, complete, future = self._lists[action_id]
        if name == complete:
            self._lists.pop(action_id, None)
            if not future.done():
                future.set_result(None)

    def _node_event(self, msg: Mapping[str, Any], node: str) -> None:
        ns = ami.to_node_status(msg, node=node, now_ms=int(time.time() * 1000), epoch=self.epoch, seq=self.seq + 1)
        if ns is None:
            return
        self.seq += 1
        ns = _with_state(ns, self)
        self._put_node(ns)
        if ns.kind is NodeEventKind.BOOTED and time.monotonic() - self._login_at > 2.0:
            # A FullyBooted right after Login is the per-session one (login already snapshots);
            # a later one means Asterisk (re)booted under a live link.
            self.request_snapshot("FullyBooted")
        if ns.kind is NodeEventKind.SHUTDOWN:
            logger.warning("Asterisk %s announced Shutdown (%s)", node, msg.get("Shutdown", "?"))

    def _handle_control(self, item: Any) -> None:
        if isinstance(item, _BadFrame):
            self._malformed(None, MalformedAmiEvent(item.reason, "?"), raw=item.frame)
        elif isinstance(item, _Marker):
            snap = item.snap
            if item.what == "begin":
                self._current_snap = snap
                snap.begin_seq = self._emit_node(NodeEventKind.SNAPSHOT_BEGIN, snapshot_id=snap.id)
            else:
                self._emit_node(
                    NodeEventKind.SNAPSHOT_COMPLETE, snapshot_id=snap.id, snapshot_begin_seq=snap.begin_seq,
                    snapshot_contacts=snap.contacts, snapshot_devices=snap.devices,
                )
                self._current_snap = None
                self._snapshot_completed(snap)

    def _snapshot_completed(self, snap: _Snapshot) -> None:
        # Contacts neither listed by the snapshot nor announced live since it began are gone
        # from the node (removals since then already left _live_uris).
        self._live_uris &= snap.uris | snap.live_added
        self._contacts = {u: i for u, i in self._contacts.items() if u in self._live_uris}
        self._last_snapshot = snap
        self._last_snapshot_at = int(time.time() * 1000)
        self.snapshots_completed += 1
        duration = time.monotonic() - snap.started
        self.metrics.snapshot_size.set(snap.contacts + snap.devices)
        self.metrics.snapshot_seconds.set(duration)
        self.metrics.snapshots.labels("complete").inc()
        logger.info("snapshot %s (%s) complete: %d contacts, %d devices in %.2fs", snap.id, snap.reason,
                    snap.contacts, snap.devices, duration)

    # ------------------------------------------------------------ emitting

    def _emit_node(self, kind: NodeEventKind, **fields: Any) -> int:
        assert self.node is not None
        self.seq += 1
        ns = NodeStatus(
            node=self.node, producer_epoch=self.epoch, seq=self.seq, event_time_ms=int(time.time() * 1000),
            kind=kind, **fields,
        )
        self._put_node(_with_state(ns, self))
        return self.seq

    def _put_node(self, ns: NodeStatus) -> None:
        coalesce = ("node", ns.kind) if ns.kind is NodeEventKind.HEARTBEAT else None
        key, value = ns.node.encode(), self._node_codec.encode(ns)
        self.publisher.put(Record(self.topics.topic_nodes, key, value, coalesce, ns.kind.value,
                                  self._signed(b"nodes", key, value)))

    def _put_registration(self, ev: RegistrationEvent) -> None:
        key, value = ev.endpoint.encode(), self._reg_codec.encode(ev)
        self.publisher.put(Record(self.topics.topic_registrations, key, value, (ev.endpoint, ev.kind, ev.contact_uri),
                                  ev.kind.value, self._signed(b"registrations", key, value)))

    def _signed(self, kind: bytes, key: bytes, value: bytes) -> list[tuple[str, bytes]] | None:
        """The signature header of a record (astreg/auth.py); None with --insecure-no-auth."""
        signer = self._signer
        return None if signer is None else signer.headers(kind, key, value)

    def _malformed(self, msg: Mapping[str, Any] | None, exc: MalformedAmiEvent, raw: str | None = None) -> None:
        reason_kind = ami.reason_kind(exc.reason)
        self.metrics.malformed.labels(reason_kind).inc()
        self.malformed += 1
        text = raw if raw is not None else (getattr(msg, "raw", None) or _message_text(msg))
        key_seen = (exc.event, reason_kind)
        if key_seen not in self._malformed_seen:
            self._malformed_seen.add(key_seen)
            logger.warning("%s (logged once per kind; dead-lettered): %r", exc, text[:2048])
        else:
            logger.debug("%s: %r", exc, text[:2048])
        key = (self.node or socket.gethostname()).encode()
        if msg is not None:
            for header, tech in (("EndpointName", "PJSIP/"), ("Endpoint", "PJSIP/"), ("Peer", ""), ("Device", "")):
                value = msg.get(header, "")
                if isinstance(value, str) and value and len(value) < 256:
                    key = (tech + value).encode("utf-8", "surrogateescape")
                    break
        self.publisher.put(
            Record(
                self.topics.topic_deadletter,
                key,
                text.encode("utf-8", "surrogateescape"),
                None,
                "deadletter",
                deadletter_headers(exc.reason, component="producer", error=type(exc).__name__),
            )
        )

    # ------------------------------------------------------------ snapshots

    def request_snapshot(self, reason: str) -> None:
        self._snapshot_reason = reason
        self._snapshot_wanted.set()

    def _kafka_recovered(self) -> None:
        if self._link_up:
            self.request_snapshot("Kafka back")

    async def _snapshot_loop(self) -> None:
        count = 0
        while True:
            await self._snapshot_wanted.wait()
            self._snapshot_wanted.clear()
            proto = self._protocol
            if proto is None or not self._link_up:
                continue
            count += 1
            snap = _Snapshot(f"{self.node}-{self.epoch}-{count}", getattr(self, "_snapshot_reason", "?"), time.monotonic())
            try:
                await self._snapshot(proto, snap)
            except Exception as exc:  # noqa: BLE001 - a failed snapshot must not stop later ones
                self.metrics.snapshots.labels("aborted").inc()
                if isinstance(exc, TimeoutError | ConnectionError | OSError):
                    logger.warning("snapshot %s aborted: %s", snap.id, exc or type(exc).__name__)
                else:
                    logger.exception("snapshot %s aborted", snap.id)
                for action_id in [a for a, e in self._lists.items() if e[0] is snap]:
                    self._lists.pop(action_id, None)

    async def _snapshot(self, proto: AmiProtocol, snap: _Snapshot) -> None:
        self._enqueue(_Marker("begin", snap))
        loop = asyncio.get_running_loop()
        for action, complete in SNAPSHOT_LISTS:
            if action == "SIPpeers" and not self._chan_sip:
                continue
            action_id = f"astreg/{snap.id}/{action}"
            done: asyncio.Future[None] = loop.create_future()
            self._lists[action_id] = (snap, complete, done)
            resp = await self._action(proto, {"Action": action, "ActionID": action_id})
            if resp.get("Response") != "Success":
                self._lists.pop(action_id, None)
                message = resp.get("Message", "")
                if "No Contacts found" in message or "Invalid/unknown command" in message \
                        or "No such command" in message:
                    continue  # nothing to list / chan_sip not loaded
                raise ConnectionError(f"{action} failed: {message}")
            await asyncio.wait_for(done, ACTION_TIMEOUT)
        # The rows are in the queue ahead of this marker, so COMPLETE follows all of them.
        self._enqueue(_Marker("complete", snap))

    # ------------------------------------------------------------ refreshes and details

    def _ask_item(self, msg: Mapping[str, Any], name: str, action_id: str) -> None:
        """An item of a question's list; at its end, what it says (in wire order, so an answer
        that crossed a contact's removal cannot bring the contact back: see rules.py)."""
        ask = self._asks[action_id]
        if name in ("ContactStatusDetail", "ContactList"):
            ask.items.append(msg)
            return
        if name != ask.complete:
            return  # EndpointDetail, AorDetail, AuthDetail, TransportDetail
        self._asks.pop(action_id, None)
        for item in ask.items:
            self._contact_news(item, scan=ask.action == "PJSIPShowContacts", at_ms=ask.at_ms)
        if not ask.done.done():
            ask.done.set_result(None)

    def _contact_news(self, item: Mapping[str, Any], *, scan: bool, at_ms: int | None = None) -> None:
        """What a contact's row in an answer says: a refresh (dated ``at_ms``, the signal that
        prompted the question, when there was one), its details, or nothing new."""
        node = self.node
        assert node is not None
        if scan:  # a ContactList row, in the spellings of a ContactStatusDetail
            own = self._system_name or node
            if (item.get("RegServer") or own).strip() != own:
                return
            item = {"URI": item.get("Uri", ""), "EndpointName": item.get("Endpoint", ""),
                    "AOR": (item.get("ObjectName") or "").split(";@", 1)[0], "UserAgent": item.get("UserAgent", ""),
                    "RegExpire": item.get("ExpirationTime", ""), "CallID": item.get("CallId", ""),
                    "QualifyFrequency": item.get("QualifyFrequency", "")}
        uri = item.get("URI") or ""
        info = ami.contact_info(item, node)
        known = self._contacts.get(uri)
        verdict = refreshed(info, known)
        if verdict is None or (scan and known is None):
            return  # nothing new; a contact the scan finds unknown is the next snapshot's
        try:
            ev = ami.contact_detail(item, node=node, now_ms=at_ms or int(time.time() * 1000), epoch=self.epoch,
                                    seq=self.seq + 1, refresh=verdict,
                                    source=Source.SNAPSHOT if scan else Source.LIVE)
        except MalformedAmiEvent as exc:
            self._malformed(item, exc)
            return
        problem = registration_problem(ev, int(time.time() * 1000))
        if problem is not None:
            self._malformed(item, MalformedAmiEvent(f"out of range: {problem}", "ContactStatusDetail"))
            return
        self.seq += 1
        self._contacts[uri] = ami.ContactInfo(
            user_agent=info.user_agent, expires_at_ms=info.expires_at_ms, aor=info.aor, qualify_s=info.qualify_s,
            call_id=info.call_id, reg_server=known.reg_server if known else None)
        self._live_uris.add(uri)
        if verdict:
            self.refreshes_seen += 1
        self._put_registration(ev)

    async def _ask(self, proto: AmiProtocol, fields: dict[str, str], complete: str, at_ms: int | None = None) -> None:
        self._asked += 1
        action_id = f"astreg/ask/{self.epoch}/{self._asked}"
        ask = _Ask(fields["Action"], complete, asyncio.get_running_loop().create_future(), at_ms=at_ms)
        self._asks[action_id] = ask
        try:
            resp = await self._action(proto, {**fields, "ActionID": action_id})
            if resp.get("Response") != "Success":
                return  # unknown endpoint, no contacts, or an Asterisk without the action
            await asyncio.wait_for(ask.done, ACTION_TIMEOUT)
        finally:
            self._asks.pop(action_id, None)

    async def _detail_loop(self) -> None:
        """One endpoint at a time, at most ``detail_rate`` questions per second."""
        bucket = TokenBucket(self.settings.detail_rate, burst=max(1, int(self.settings.detail_rate)))
        while True:
            endpoint, at_ms = await self._pending_details.next_signal()
            await bucket.take()
            proto = self._protocol
            if proto is None or not self._link_up:
                continue  # the snapshot after the next login covers it
            self.details_asked += 1
            try:
                await self._ask(proto, {"Action": "PJSIPShowEndpoint", "Endpoint": endpoint}, "EndpointDetailComplete",
                                at_ms=at_ms)
            except (TimeoutError, ConnectionError) as exc:
                logger.debug("details of %s not read: %s", endpoint, exc or type(exc).__name__)

    async def _scan_loop(self) -> None:
        """Refreshes of endpoints without authentication: compare the node's expirations."""
        interval = self.settings.refresh_scan_interval
        if not interval:
            return
        while True:
            await asyncio.sleep(interval)  # the scan's period (docs/producer.md: worst delay)
            proto = self._protocol
            if proto is None or not self._link_up:
                continue
            try:
                await self._ask(proto, {"Action": "PJSIPShowContacts"}, "ContactListComplete")
            except (TimeoutError, ConnectionError) as exc:
                logger.debug("refresh scan not read: %s", exc or type(exc).__name__)

    # ------------------------------------------------------------ timers

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            if self.node is not None:
                try:
                    self._emit_node(NodeEventKind.HEARTBEAT)
                except Exception:  # noqa: BLE001 - heartbeats go on
                    logger.exception("heartbeat failed")

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval)
            self.request_snapshot("periodic")


def _message_text(msg: Mapping[str, Any] | None) -> str:
    if msg is None:
        return ""
    return "\r\n".join(f"{k}: {v}" for k, v in msg.items())


def _with_state(ns: NodeStatus, p: NodeProducer) -> NodeStatus:
    """Every NodeStatus repeats the producer's state (the topic is compacted)."""
    last = p._last_snapshot
    return NodeStatus(
        node=ns.node, producer_epoch=ns.producer_epoch, seq=ns.seq, event_time_ms=ns.event_time_ms,
        kind=ns.kind, ami_link=LinkState.UP if p._link_up else LinkState.DOWN,
        heartbeat_interval_ms=int(p.settings.heartbeat_interval * 1000),
        asterisk_version=p._asterisk_version, ami_version=p._ami_version,
        boot_time_ms=ns.boot_time_ms, reload_time_ms=ns.reload_time_ms,
        snapshot_id=ns.snapshot_id, snapshot_begin_seq=ns.snapshot_begin_seq,
        snapshot_contacts=ns.snapshot_contacts, snapshot_devices=ns.snapshot_devices,
        last_snapshot_id=last.id if last else None,
        last_snapshot_begin_seq=last.begin_seq if last else None,
        last_snapshot_at_ms=p._last_snapshot_at or None,
        contacts=len(p._live_uris), events_sent=p.publisher.sent, buffered=p.publisher.depth,
        producer=p._producer_name,
    )
