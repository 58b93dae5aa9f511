"""The query page and JSON API, served by the Faust web server of every worker.

``install(app, locations=..., nodes=..., settings=WebSettings(...))`` adds the views to a Faust
app before it starts; ``astreg worker --web-port P`` then answers on port P:

* ``GET /api/v1/endpoints/{endpoint}`` (row JSON) and ``.../{endpoint}/node`` (plain-text
  primary node, for Asterisk's ``CURL()``), answered by the worker owning the key: a worker that
  does not own it forwards the request to the owner (Faust's assignor knows every member's URL).
* ``GET /api/v1/endpoints?...`` and ``GET /api/v1/nodes``: the receiving worker asks every
  worker of the group for its own partitions (``/api/v1/_local/...``) and merges the answers.
* ``GET /`` the page (``streams/web/``), ``/metrics``, ``/healthz``, ``/readyz``.

Never a wrong answer during a rebalance: a partition is read only when this worker owns it
and its recovery finished; otherwise the row comes from a standby copy marked ``stale`` (JSON
only, never the plain-text node) or the answer is 503 with ``Retry-After``. The rules of the
answers themselves (JSON shape, filters, paging) live in the pure :mod:`streams.web.api`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import faust
from faust.types import TP
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST
from yarl import URL

from astreg.auth import derive_node_key
from astreg.errors import BadQuery, WorkerUnavailable
from astreg.partition import partition_for
from astreg.patches.web import drop_blueprints, on_every_response
from schemas.models import EndpointLocation
from streams.metrics import StreamMetrics
from streams.web import api
from streams.web.settings import WebSettings

__all__ = [
    "WebSettings", "WebService", "install", "register", "CSP", "Lookup", "Snapshot",
    "EndpointView", "quality_of", "EndpointNodeView", "EndpointListView", "LocalEndpointsView",
    "LocalCountsView", "NodesView", "HealthView", "ReadyView", "MetricsView", "IndexView", "ScriptView",
    "StyleView", "peer_key_of", "SECURITY_HEADERS",
]

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "static"

#: The page loads only its own script and style and talks only to its own origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
FORWARDED = "X-Astreg-Forwarded"
SERVED_BY = "X-Astreg-Served-By"
PEER = "X-Astreg-Peer"  # a worker's credential on a request it forwards to another worker
PEER_WINDOW_S = 30  # a peer credential is good this long (clocks of workers within it)
#: On every response (API, page, static files, probes, /metrics, error pages): docs/web.md.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
}
RETRY_AFTER_S = 1

# Faust's built-in views would serve "/" and table contents without our auth check.
_FAUST_BLUEPRINTS_REPLACED = {
    "faust.web.apps.production_index:blueprint",
    "faust.web.apps.router:blueprint",
    "faust.web.apps.tables.blueprint",
    "faust.web.apps.graph:blueprint",
    "faust.web.apps.stats:blueprint",
    "faust.web.apps.metrics:blueprint",
}

@dataclass
class Lookup:
    """One endpoint id looked up where it lives: its row JSON (None: absent), and how fresh."""

    row: dict[str, Any] | None
    stale: bool
    served_by: str


@dataclass
class Snapshot:
    """This worker's rows of its active, recovered partitions at one moment."""

    rows: list[EndpointLocation]
    partitions: list[int]
    generation: int
    taken: float
    counts: dict[str, api.NodeCounts] = field(default_factory=dict)
    index: api.RowIndex = field(default_factory=lambda: api.RowIndex(()))


def _ident(url: URL | str) -> tuple[str, int]:
    u = URL(str(url))
    return (u.host or "", int(u.port or 80))


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WebService:
    """Everything the views need: the app, the tables, the settings and a short-lived snapshot."""

    def __init__(
        self,
        app: faust.App,
        locations: Any,
        nodes: Any,
        settings: WebSettings,
        location_of: Callable[[Any], EndpointLocation | None],
        node_view: Callable[[Any], dict[str, Any]],
        metrics: StreamMetrics,
        node_grace_s: float | None = None,
        peer_key: bytes | None = None,
        cut_off_s: float | None = None,
    ) -> None:
        self.app = app
        # A worker that has heard nothing from the cluster for longer than its group session
        # timeout may have lost its partitions to another worker without knowing it yet: it
        # stops claiming them (not ready) until the cluster answers again.
        self.cut_off_ms = None if cut_off_s is None else int(cut_off_s * 1000)
        # Workers vouch for the requests they forward with a MAC under this key (derived from the
        # cluster secret), never with the caller's token (docs/web.md "Authentication").
        self.peer_key = peer_key
        self.locations = locations
        self.nodes = nodes
        self.settings = settings
        self.location_of = location_of
        self.node_view = node_view
        self.metrics = metrics  # the worker's registry: /metrics serves it whole
        self.node_grace_ms = None if node_grace_s is None else int(node_grace_s * 1000)
        self._snapshot: Snapshot | None = None
        self._snapshot_lock = asyncio.Lock()
        self._partition_of: dict[Any, int] = {}  # memo: murmur2 in pure Python is slow
        self._static = {name: (WEB_DIR / name).read_bytes() for name in ("index.html", "app.js", "style.css")}

    # ------------------------------------------------------------ identity and readiness

    @property
    def url(self) -> str:
        return str(self.app.conf.canonical_url).rstrip("/")

    @property
    def changelog_topic(self) -> str:
        return str(self.locations.changelog_topic.get_topic_name())

    def not_ready_reason(self) -> str | None:
        """Why this worker may not answer from its partitions now (None: it may)."""
        app = self.app
        if getattr(app, "rebalancing", False):
            return "rebalancing"
        recovery = app.tables.recovery  # type: ignore[attr-defined]  # concrete TableManager only
        if getattr(app, "in_recovery", False) or not recovery.completed.is_set():
            return "table recovery in progress"
        fetched = getattr(self.nodes, "fetched_at_ms", None)
        if self.cut_off_ms is not None and fetched is not None:
            silent = int(time.time() * 1000) - fetched
            if silent > self.cut_off_ms:
                return (f"no answer from the Kafka cluster for {silent / 1000:.0f} s: its partitions may "
                        "belong to another worker now")
        if not self.active_partitions():
            return "owns no partition of the table"
        return None

    def active_partitions(self) -> set[int]:
        topic = self.changelog_topic
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def partition_of(self, key: str) -> int:
        """Kafka's default partition of an endpoint id (murmur2, as every astreg producer uses).

        Not ``app.producer.key_partition``: with aiokafka 0.14 it ignores the serialized key and
        picks a random partition, which also makes Faust's ``app.router.key_store`` (and so
        ``table_route``) name a wrong owner.
        """
        part = self._partition_of.get(key)
        if part is None:
            count = int(self.locations.partitions or self.app.conf.topic_partitions)
            part = self._partition_of[key] = partition_for(key, count)
        return part

    def owner_of(self, part: int) -> str | None:
        """Web URL of the worker the last assignment gave this partition to."""
        for url, parts in self.members().items():
            if part in parts:
                return url
        return None

    # ------------------------------------------------------------ one endpoint

    def _read_local(self, key: str) -> dict[str, Any] | None:
        value = self.locations.get(key)
        loc = self.location_of(value) if value is not None else None
        return None if loc is None else api.location_json(loc)

    async def lookup(self, endpoint_id: str, request: Request, forwarded: bool) -> Lookup:
        """The row of one full endpoint id, from here or from the worker owning it."""
        part = self.partition_of(endpoint_id)
        tp = TP(self.changelog_topic, part)
        reason = self.not_ready_reason()
        if reason is None and self.app.assignor.is_active(tp):
            return Lookup(self._read_local(endpoint_id), False, self.url)
        if not forwarded:
            try:
                owner = self.owner_of(part)
            except WorkerUnavailable:
                owner = None
            if owner and _ident(owner) != _ident(self.url):
                try:
                    return await self._lookup_remote(owner, endpoint_id, request)
                except WorkerUnavailable:
                    if not self.app.assignor.is_standby(tp):
                        raise
        if self.app.assignor.is_standby(tp):
            row = self._read_local(endpoint_id)
            if row is not None:
                row["stale"] = True
            return Lookup(row, True, self.url)
        raise WorkerUnavailable(f"partition {part} of {endpoint_id} is not served right now ({reason or 'moving'})")

    async def lookup_node(self, endpoint_id: str, request: Request) -> tuple[int, str | None, str]:
        """(status, primary node, served by) of a full id: never from a standby copy."""
        api.candidate_ids(endpoint_id)  # BadQuery on "PJSIP/" and the like
        part = self.partition_of(endpoint_id)
        reason = self.not_ready_reason()
        if reason is None and self.app.assignor.is_active(TP(self.changelog_topic, part)):
            value = self.locations.get(endpoint_id)
            loc = self.location_of(value) if value is not None else None
            node = loc.primary_node if loc is not None else None
            return (200 if node else 404), node, self.url
        owner = None if request.headers.get(FORWARDED) == "1" else self.owner_of(part)
        if owner is None or _ident(owner) == _ident(self.url):
            raise WorkerUnavailable(f"partition {part} of {endpoint_id} is not served right now ({reason or 'moving'})")
        url = f"{owner}/api/v1/endpoints/{quote(endpoint_id, safe='')}/node"
        status, body, headers = await self._peer_get(url, request, kind="node")
        if status == 200 and body:
            return 200, body, headers.get(SERVED_BY, owner)
        if status == 404:
            return 404, None, owner
        raise WorkerUnavailable(f"owner {owner} answered {status} for {endpoint_id}")

    async def _lookup_remote(self, owner: str, endpoint_id: str, request: Request) -> Lookup:
        url = f"{owner}/api/v1/endpoints/{quote(endpoint_id, safe='')}"
        status, body, headers = await self._peer_get(url, request, kind="lookup")
        if status == 200:
            row = json.loads(body)
            return Lookup(row, bool(row.get("stale")), headers.get(SERVED_BY, owner))
        if status == 404:
            return Lookup(None, False, headers.get(SERVED_BY, owner))
        raise WorkerUnavailable(f"owner {owner} answered {status} for {endpoint_id}")

    async def find(self, raw: str, request: Request) -> tuple[api.Resolution, Lookup | None]:
        """Resolve ``raw`` (full id or bare resource) and look the endpoint up."""
        forwarded = request.headers.get(FORWARDED) == "1"
        candidates = api.candidate_ids(raw, self.settings.technology_list)
        results = await asyncio.gather(*(self.lookup(c, request, forwarded) for c in candidates))
        present = {c: r for c, r in zip(candidates, results, strict=True) if r.row is not None}
        resolution = api.resolve(raw, present, self.settings.technology_list)
        if resolution.endpoint is None:
            stale = any(r.stale for r in results)
            return resolution, (Lookup(None, stale, self.url) if stale else None)
        return resolution, present[resolution.endpoint]

    # ------------------------------------------------------------ this worker's partitions

    async def snapshot(self) -> Snapshot:
        reason = self.not_ready_reason()
        if reason is not None:
            raise WorkerUnavailable(reason)
        generation = int(getattr(self.app, "consumer_generation_id", 0) or 0)
        async with self._snapshot_lock:
            snap = self._snapshot
            fresh = time.monotonic() - self.settings.web_snapshot_ms / 1000.0
            if snap is None or snap.generation != generation or snap.taken < fresh:
                with api.paused_gc():
                    snap = self._snapshot = self._take_snapshot(generation)
        return snap

    def _take_snapshot(self, generation: int) -> Snapshot:
        actives = self.active_partitions()
        rows: list[EndpointLocation] = []
        for key, value in list(self.locations.items()):
            # The memory store also holds standby partitions: serve only what this worker owns.
            if self.partition_of(key) not in actives:
                continue
            loc = self.location_of(value)
            if loc is not None:
                rows.append(loc)
        self.metrics.web.local_rows.set(len(rows))
        return Snapshot(rows, sorted(actives), generation, time.monotonic(), api.count_by_node(rows),
                        api.RowIndex(rows))

    async def local_endpoints(self, query: api.EndpointQuery) -> api.LocalPage:
        snap = await self.snapshot()
        return snap.index.page(query, snap.partitions)

    async def local_counts(self) -> dict[str, Any]:
        snap = await self.snapshot()
        return {"partitions": snap.partitions, "counts": {n: c.to_json() for n, c in snap.counts.items()}}

    # ------------------------------------------------------------ the whole group

    def members(self) -> dict[str, set[int]]:
        """Web URL of every worker → the table partitions it owns (from the last assignment)."""
        topic = self.changelog_topic
        out: dict[str, set[int]] = {}
        for url, topics in self.app.assignor.tables_metadata().items():
            parts = set(topics.get(topic, ()))
            if parts:
                out[str(url).rstrip("/")] = parts
        if not out:
            raise WorkerUnavailable("no partition assignment known yet")
        return out

    async def gather(
        self, path: str, params: Mapping[str, str], request: Request,
        local: Callable[[], Awaitable[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        """Ask every member for its partitions; refuse a merge that would miss or double one."""
        members = self.members()

        async def ask(url: str) -> dict[str, Any]:
            if _ident(url) == _ident(self.url):
                return await local()
            query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
            status, body, _ = await self._peer_get(f"{url}{path}?{query}", request, kind=path.rsplit("/", 1)[-1])
            if status != 200:
                raise WorkerUnavailable(f"worker {url} answered {status} for its partitions")
            return dict(json.loads(body))

        answers = await asyncio.gather(*(ask(url) for url in members))
        for (url, expected), answer in zip(members.items(), answers, strict=True):
            if set(answer.get("partitions", ())) != expected:
                raise WorkerUnavailable(f"worker {url} serves partitions {answer.get('partitions')}, expected {sorted(expected)}")
        return answers

    async def _peer_get(self, url: str, request: Request, kind: str) -> tuple[int, str, Mapping[str, str]]:
        """GET ``url`` of another worker of the group. The caller's token is never passed on:
        the request carries this worker's credential for exactly this path, for a short time."""
        target = URL(url, encoded=True)
        headers = {FORWARDED: "1"}
        if self.peer_key is not None:
            headers[PEER] = self.peer_credential(target.raw_path_qs, int(time.time()))
        elif self.settings.api_token is not None:  # no cluster secret (--insecure-no-auth)
            headers["Authorization"] = f"Bearer {self.settings.api_token.get_secret_value()}"
        timeout = aiohttp.ClientTimeout(total=self.settings.web_peer_timeout)
        try:
            # Faust's own client session: opened and closed with the app.
            async with self.app.http_client.get(target, headers=headers, timeout=timeout) as resp:
                body = await resp.text()
                self.metrics.web.forwarded.labels(kind, str(resp.status)).inc()
                return resp.status, body, dict(resp.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self.metrics.web.forwarded.labels(kind, "error").inc()
            logger.warning("worker at %s did not answer: %s", url, exc)
            raise WorkerUnavailable(f"worker at {URL(url).origin()} did not answer ({type(exc).__name__})") from exc

    # ------------------------------------------------------------ nodes

    def node_views(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if self.nodes is None:
            return out
        for node, value in list(self.nodes.items()):
            if value is None:
                continue
            view = dict(self.node_view(value))
            view["state"] = api.node_state(view, self.node_grace_ms)
            out[str(view.get("node") or node)] = view
        return out

    # ------------------------------------------------------------ auth

    def peer_credential(self, path_qs: str, at_s: int) -> str:
        """``<unix time>.<MAC>``: GET of this path and query, by a worker, at that time."""
        assert self.peer_key is not None
        mac = hashlib.blake2b(f"GET\0{path_qs}\0{at_s}".encode(), key=self.peer_key, digest_size=32).hexdigest()
        return f"{at_s}.{mac}"

    def peer_vouched(self, request: Request) -> bool:
        """Whether another worker of the group forwarded this request (a valid peer credential)."""
        given = request.headers.get(PEER, "")
        if self.peer_key is None or not given or request.method != "GET":
            return False
        at, _, _mac = given.partition(".")
        if not (at.isascii() and at.isdigit()) or abs(time.time() - int(at)) > PEER_WINDOW_S:
            return False
        raw_path = request.raw_path  # type: ignore[attr-defined]  # aiohttp's request, as sent
        return hmac.compare_digest(given, self.peer_credential(raw_path, int(at)))

    def authorized(self, request: Request) -> bool:
        token = self.settings.api_token
        if token is None:
            return True
        if self.peer_vouched(request):
            return True
        want = token.get_secret_value().encode()
        header = request.headers.get("Authorization", "")
        got = header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
        return hmac.compare_digest(got.encode(), want)


# ---------------------------------------------------------------- views


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": CSP,
    }
    out.update(extra or {})
    return out


class _Base(View):
    """Auth check, error mapping and security headers for every astreg view."""

    service: WebService
    open_access = False

    async def dispatch(self, request: Any) -> Any:
        name = type(self).__name__
        if not self.open_access and not self.service.authorized(request):
            response = self._error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        else:
            try:
                response = await super().dispatch(request)
            except BadQuery as exc:
                response = self._error(400, str(exc))
            except WorkerUnavailable as exc:
                response = self._error(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})
        self.service.metrics.web.requests.labels(name, str(response.status)).inc()
        return response

    def _error(self, status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> Response:
        return self.json({"error": message, **extra}, status=status, headers=_headers(headers))

    def ok_json(self, value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return self.json(value, status=status, headers=_headers(headers))


class EndpointView(_Base):
    async def get(self, request: Request, endpoint: str) -> Response:
        resolution, found = await self.service.find(endpoint, request)
        if resolution.ambiguous:
            return self._error(409, "ambiguous endpoint name", candidates=list(resolution.candidates))
        if found is None or found.row is None:
            headers = {"X-Astreg-Stale": "1"} if found is not None and found.stale else None
            return self._error(404, "endpoint not registered", headers, endpoint=endpoint)
        headers = {SERVED_BY: found.served_by}
        if found.stale:
            headers["X-Astreg-Stale"] = "1"
        row = found.row
        if self.service.settings.quality_url and not request.headers.get(FORWARDED) and isinstance(row, dict):
            row = {**row, "quality": await quality_of(self.service, str(row.get("endpoint", endpoint)))}
        return self.ok_json(row, headers=headers)


async def quality_of(service: WebService, endpoint: str) -> dict[str, Any] | None:
    """The endpoint's call quality from the alerter (streams/alerts/runner.py), None when it has none.

    Quality is advisory, never routing: an alerter that is down or slow costs the row its
    figures, not its answer (docs/quality.md explains why the alerter owns these figures).
    """
    url = f"{service.settings.quality_url.rstrip('/')}/quality/{quote(endpoint, safe='')}"  # type: ignore[union-attr]
    timeout = aiohttp.ClientTimeout(total=min(1.0, service.settings.web_peer_timeout))
    try:
        async with service.app.http_client.get(URL(url, encoded=True), timeout=timeout) as resp:
            if resp.status != 200:
                return None
            value = await resp.json()
            return value if isinstance(value, dict) else None
    except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
        logger.debug("no quality figures for %s from %s: %s", endpoint, url, exc)
        return None


class EndpointNodeView(_Base):
    """What Asterisk's CURL() reads: the node name alone, or an empty body."""

    async def get(self, request: Request, endpoint: str) -> Response:
        if "/" in endpoint:  # full id: the short path (no JSON row on the way)
            try:
                status, node, served_by = await self.service.lookup_node(endpoint, request)
            except WorkerUnavailable:
                return self._text("", 503, {"Retry-After": str(RETRY_AFTER_S)})
            return self._text(node or "", status, {SERVED_BY: served_by} if status == 200 else None)
        try:
            resolution, found = await self.service.find(endpoint, request)
        except WorkerUnavailable:
            return self._text("", 503, {"Retry-After": str(RETRY_AFTER_S)})
        if resolution.ambiguous:
            return self._text("", 409)
        if found is None or found.row is None or not found.row.get("primary_node"):
            return self._text("", 404)
        if found.stale:  # a lagging copy could name the node the phone just left
            return self._text("", 503, {"Retry-After": str(RETRY_AFTER_S)})
        return self._text(str(found.row["primary_node"]), 200, {SERVED_BY: found.served_by})

    def _text(self, body: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
        return self.text(body, content_type="text/plain", status=status, headers=_headers(headers))


class EndpointListView(_Base):
    async def get(self, request: Request) -> Response:
        query = api.parse_query(request.query)
        params = query.params()
        answers = await self.service.gather(
            "/api/v1/_local/endpoints", params, request,
            lambda: self._local(query),
        )
        return self.ok_json(api.merge_pages([api.LocalPage.from_json(a) for a in answers], query))

    async def _local(self, query: api.EndpointQuery) -> dict[str, Any]:
        return (await self.service.local_endpoints(query)).to_json()


class LocalEndpointsView(_Base):
    async def get(self, request: Request) -> Response:
        query = api.parse_query(request.query)
        return self.ok_json((await self.service.local_endpoints(query)).to_json())


class LocalCountsView(_Base):
    async def get(self, request: Request) -> Response:
        return self.ok_json(await self.service.local_counts())


class NodesView(_Base):
    async def get(self, request: Request) -> Response:
        answers = await self.service.gather("/api/v1/_local/counts", {}, request, self.service.local_counts)
        counts = api.merge_counts(a["counts"] for a in answers)
        nodes = api.node_summaries(self.service.node_views(), counts)
        return self.ok_json({"nodes": nodes, "now_ms": int(time.time() * 1000)})


class HealthView(_Base):
    open_access = True

    async def get(self, request: Request) -> Response:
        return self.ok_json({"status": "ok"})


class ReadyView(_Base):
    open_access = True

    async def get(self, request: Request) -> Response:
        reason = self.service.not_ready_reason()
        if reason is not None:
            return self._error(503, reason, {"Retry-After": str(RETRY_AFTER_S)}, ready=False)
        return self.ok_json({"status": "ready", "partitions": sorted(self.service.active_partitions())})


class MetricsView(_Base):
    open_access = True

    async def get(self, request: Request) -> Response:
        try:
            await self.service.snapshot()  # refreshes the row gauge
        except WorkerUnavailable:
            pass
        body = self.service.metrics.exposition()
        return self.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


class _StaticView(_Base):
    """The page is a public shell without data; every data request carries the token."""

    open_access = True
    filename = "index.html"
    content_type = "text/html"

    async def get(self, request: Request) -> Response:
        body = self.service._static[self.filename]
        return self.bytes(body, content_type=self.content_type, headers=_headers())


class IndexView(_StaticView):
    pass


class ScriptView(_StaticView):
    filename = "app.js"
    content_type = "application/javascript"


class StyleView(_StaticView):
    filename = "style.css"
    content_type = "text/css"


ROUTES: list[tuple[str, type[_Base]]] = [
    ("/", IndexView),
    ("/static/app.js", ScriptView),
    ("/static/style.css", StyleView),
    ("/healthz", HealthView),
    ("/readyz", ReadyView),
    ("/metrics", MetricsView),
    ("/api/v1/nodes", NodesView),
    ("/api/v1/endpoints", EndpointListView),
    ("/api/v1/endpoints/{endpoint}", EndpointView),
    ("/api/v1/endpoints/{endpoint}/node", EndpointNodeView),
    ("/api/v1/_local/endpoints", LocalEndpointsView),
    ("/api/v1/_local/counts", LocalCountsView),
]


def install(
    app: faust.App,
    *,
    locations: Any,
    nodes: Any = None,
    settings: WebSettings | None = None,
    location_of: Callable[[Any], EndpointLocation | None] | None = None,
    node_view: Callable[[Any], dict[str, Any]] | None = None,
    metrics: StreamMetrics | None = None,
    node_grace_s: float | None = None,
    faust_metrics: bool = True,
    peer_key: bytes | None = None,
    cut_off_s: float | None = None,
) -> WebService:
    """Add the page and API to ``app`` (call before the app starts).

    ``metrics``: the worker's (its registry gets the web series and, with ``faust_metrics``,
    Faust's sensor; ``/metrics`` serves it); None: a registry of the views' own."""
    if location_of is None or node_view is None:
        from streams import tables  # the stream app's converters, unless a caller brings its own

        location_of = location_of or tables.location_of
        node_view = node_view or tables.node_view
    settings = settings or WebSettings()
    metrics = metrics or StreamMetrics()
    service = WebService(app, locations, nodes, settings, location_of, node_view, metrics, node_grace_s, peer_key,
                         cut_off_s)
    on_every_response(app, _security_headers)
    drop_blueprints(app, _FAUST_BLUEPRINTS_REPLACED)
    for path, view in ROUTES:
        bound = type(view.__name__, (view,), {"service": service})
        app.page(path, name=view.__name__)(bound)
    if faust_metrics:
        _install_faust_metrics(app, metrics)
    if settings.api_token is None and not _is_loopback(str(app.conf.web_bind)):
        logger.warning(
            "web API on %s:%s without an API token (--api-token-file): anyone who can reach it can read every "
            "registration; set ASTREG_API_TOKEN or bind to 127.0.0.1",
            app.conf.web_bind, app.conf.web_port,
        )

    return service


async def _security_headers(request: Any, response: Any) -> None:
    """Every response of the worker's web server carries the documented headers, those of
    aiohttp itself (404, 405, 500 pages) and of /metrics included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _install_faust_metrics(app: faust.App, metrics: StreamMetrics) -> None:
    """Faust's own Prometheus sensor (messages, lag, rebalances) into the worker's registry."""
    from faust.sensors.prometheus import PrometheusMonitor

    if not isinstance(app.monitor, PrometheusMonitor):
        app.monitor = metrics.faust_monitor()


def register(stream: Any, settings: WebSettings | None = None) -> WebService:
    """Attach the page and API to a :class:`streams.stream_app.StreamApp` (``astreg worker`` calls this)."""
    from streams import tables

    worker = stream.settings
    return install(
        stream.app,
        locations=stream.locations,
        nodes=stream.nodes,
        settings=settings,
        location_of=tables.location_of,
        # Judged at the last moment the worker heard the cluster: its own outage, or its own
        # lateness, is not node silence.
        node_view=lambda value: tables.node_view(
            value, now_ms=stream.nodes.judged_now(int(time.time() * 1000)), node_timeout=worker.node_timeout),
        metrics=stream.metrics,
        node_grace_s=worker.node_grace,
        peer_key=peer_key_of(stream.verifier.secret),
        cut_off_s=6.0 if stream.kafka.embedded else stream.kafka.session_timeout,
    )


def peer_key_of(secret: bytes | None) -> bytes | None:
    """The key workers vouch for forwarded requests with, derived from the cluster secret."""
    return None if secret is None else derive_node_key(secret, "\0web-peers")
