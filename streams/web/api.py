"""The pure half of the query API: table rows → JSON, endpoint-id resolution, list queries.

Nothing here does I/O or knows Faust: :mod:`streams.web.views` reads the table, calls these
functions and writes the HTTP answer, so every rule of the API (what a row looks like, when a
bare ``1001`` means ``PJSIP/1001``, how the list is filtered, sorted and paged with an opaque
cursor, how the pages of several workers merge into one) is unit-tested on plain values::

    q = parse_query({"state": "registered", "limit": "50"})
    page = local_page(rows, q)             # on every worker, over its own partitions
    answer = merge_pages([page, ...], q)   # on the worker that received the request

Rows are :class:`schemas.models.EndpointLocation`; list items are the flat dicts of
:func:`summary_json`, and the sort key is read the same way from either.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import enum
import gc
import heapq
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from astreg.errors import BadQuery
from schemas.models import (
    Contact,
    DeviceState,
    EndpointLocation,
    LocationStatus,
    split_endpoint,
)
from streams.web.settings import DEFAULT_TECHNOLOGIES

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_TECHNOLOGIES",
    "EndpointQuery",
    "LocalPage",
    "MAX_LIMIT",
    "NodeCounts",
    "Resolution",
    "RowIndex",
    "SORT_FIELDS",
    "candidate_ids",
    "contact_json",
    "count_by_node",
    "decode_cursor",
    "encode_cursor",
    "local_page",
    "location_json",
    "matches",
    "merge_counts",
    "merge_pages",
    "node_state",
    "node_summaries",
    "parse_query",
    "paused_gc",
    "resolve",
    "sort_key",
    "summary_json",
]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR = 2048  # characters; an endpoint id is at most 128, a cursor holds one sort key
MAX_SEARCH = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Sort fields whose values are integers (the others are text).
_NUMERIC_SORTS = frozenset({"rtt", "last_change"})
#: ``sort=`` names → the attribute of EndpointLocation (and key of summary_json) sorted on.
SORT_FIELDS: dict[str, str] = {
    "endpoint": "endpoint",
    "node": "primary_node",
    "address": "ip",
    "status": "status",
    "device_state": "device_state",
    "rtt": "rtt_us",
    "user_agent": "user_agent",
    "last_change": "updated_at_ms",
}


# ------------------------------------------------------------------ rows → JSON


def contact_json(c: Contact) -> dict[str, Any]:
    return {
        "node": c.node,
        "uri": c.uri,
        "aor": c.aor,
        "status": str(c.status),
        "ip": c.ip,
        "port": c.port,
        "transport": c.transport,
        "user_agent": c.user_agent,
        "rtt_us": c.rtt_us,
        "expires_at_ms": c.expires_at_ms,
        "registered_at_ms": c.registered_at_ms,
        "updated_at_ms": c.updated_at_ms,
        "stale": c.stale,
        "primary": c.primary,
    }


def _primary_json(loc: EndpointLocation) -> dict[str, Any]:
    """What the full row and a list line share: the endpoint and its primary contact."""
    return {
        "endpoint": loc.endpoint,
        "technology": loc.technology,
        "resource": loc.resource,
        "primary_node": loc.primary_node,
        "status": str(loc.status),
        "device_state": str(loc.device_state),
        "contact_uri": loc.contact_uri,
        "ip": loc.ip,
        "port": loc.port,
        "transport": loc.transport,
        "user_agent": loc.user_agent,
        "rtt_us": loc.rtt_us,
    }


def location_json(loc: EndpointLocation, *, stale: bool = False) -> dict[str, Any]:
    """The full row of ``GET /api/v1/endpoints/{endpoint}``.

    ``stale`` marks an answer read from a standby copy during a rebalance (it may lag).
    """
    return {
        **_primary_json(loc),
        "expires_at_ms": loc.expires_at_ms,
        "nodes": list(loc.nodes),
        "contacts": [contact_json(c) for c in loc.contacts],
        "updated_at_ms": loc.updated_at_ms,
        "last_event_time_ms": loc.last_event_time_ms,
        "version": loc.version,
        "stale": stale,
    }


def summary_json(loc: EndpointLocation) -> dict[str, Any]:
    """One line of the endpoint list (the primary contact only, plus the contact count)."""
    return {
        **_primary_json(loc),
        "nodes": list(loc.nodes),
        "contacts": len(loc.contacts),
        "updated_at_ms": loc.updated_at_ms,
    }


# ------------------------------------------------------------------ endpoint ids


@dataclass(frozen=True)
class Resolution:
    """What an endpoint argument named: one endpoint, several (ambiguous), or none."""

    endpoint: str | None
    candidates: tuple[str, ...] = ()

    @property
    def ambiguous(self) -> bool:
        return self.endpoint is None and len(self.candidates) > 1


def candidate_ids(raw: str, technologies: Sequence[str] = DEFAULT_TECHNOLOGIES) -> list[str]:
    """Endpoint ids an argument may mean: ``PJSIP/1001`` itself, or ``T/1001`` for each technology.

    Raises :class:`BadQuery` for an empty name or an empty half (``PJSIP/``, ``/1001``).
    """
    raw = raw.strip()
    tech, resource = split_endpoint(raw)
    if not resource or (raw.find("/") >= 0 and not tech):
        raise BadQuery(f"not an endpoint id: {raw!r} (expected TECH/resource, e.g. PJSIP/1001, or 1001)")
    if tech:
        return [raw]
    return [f"{t}/{resource}" for t in technologies]


def resolve(raw: str, existing: Iterable[str], technologies: Sequence[str] = DEFAULT_TECHNOLOGIES) -> Resolution:
    """Pick the endpoint ``raw`` names among the candidate ids found in the table.

    A full id resolves to itself when present; a bare resource resolves when exactly one
    technology has it, and is ambiguous (candidates listed in technology order) otherwise.
    """
    wanted = candidate_ids(raw, technologies)
    present = set(existing)
    found = tuple(c for c in wanted if c in present)
    if len(found) == 1:
        return Resolution(found[0], found)
    return Resolution(None, found)


# ------------------------------------------------------------------ list queries


@dataclass(frozen=True)
class EndpointQuery:
    """``GET /api/v1/endpoints`` parameters, validated."""

    node: str | None = None
    state: LocationStatus | None = None
    device_state: DeviceState | None = None
    q: str | None = None
    limit: int = DEFAULT_LIMIT
    sort: str = "endpoint"
    desc: bool = False
    after: tuple[Any, ...] | None = None  # the decoded cursor: sort key of the last row served

    def params(self) -> dict[str, str]:
        """Query string that asks another worker the same question (``limit`` and cursor kept)."""
        out: dict[str, str] = {"limit": str(self.limit), "sort": self.sort, "order": "desc" if self.desc else "asc"}
        if self.node is not None:
            out["node"] = self.node
        if self.state is not None:
            out["state"] = self.state.value
        if self.device_state is not None:
            out["device_state"] = self.device_state.value
        if self.q:
            out["q"] = self.q
        if self.after is not None:
            out["cursor"] = encode_cursor(self, self.after)
        return out


def _enum_param(params: Mapping[str, str], name: str, enum_type: type[Any]) -> Any:
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    symbols = [m.value for m in enum_type]
    value = raw.upper()
    if value not in symbols:
        raise BadQuery(f"{name}={raw!r} is not one of {', '.join(symbols)}")
    return enum_type(value)


def parse_query(params: Mapping[str, str]) -> EndpointQuery:
    """Validate the query string of the list endpoint; :class:`BadQuery` says what is wrong."""
    limit_raw = params.get("limit") or ""
    # ASCII digits only: int() also takes "١٢", " 12", "+12" and "1_000", which no client means.
    if limit_raw and not (limit_raw.isascii() and limit_raw.isdigit() and len(limit_raw) <= 6):
        raise BadQuery(f"limit={limit_raw[:20]!r} is not a number of 1 to 6 ASCII digits")
    limit = int(limit_raw) if limit_raw else DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQuery(f"limit={limit} is outside 1..{MAX_LIMIT}")
    sort = (params.get("sort") or "endpoint").strip().lower()
    if sort not in SORT_FIELDS:
        raise BadQuery(f"sort={sort!r} is not one of {', '.join(SORT_FIELDS)}")
    order = (params.get("order") or "asc").strip().lower()
    if order not in ("asc", "desc"):
        raise BadQuery(f"order={order!r} is not asc or desc")
    node = (params.get("node") or "").strip() or None
    q = (params.get("q") or "").strip() or None
    if q is not None and (len(q) > MAX_SEARCH or _CONTROL.search(q)):
        # Control characters would let a search span two fields of a row (the index joins
        # them with NUL); no endpoint, node, address or user agent contains one.
        raise BadQuery(f"q must be at most {MAX_SEARCH} characters without control characters")
    query = EndpointQuery(
        node=node,
        state=_enum_param(params, "state", LocationStatus),
        device_state=_enum_param(params, "device_state", DeviceState),
        q=q,
        limit=limit,
        sort=sort,
        desc=order == "desc",
    )
    cursor = (params.get("cursor") or "").strip()
    if cursor:
        return EndpointQuery(**{**query.__dict__, "after": decode_cursor(cursor, query)})
    return query


def _get(row: EndpointLocation | Mapping[str, Any], attr: str) -> Any:
    return row.get(attr) if isinstance(row, Mapping) else getattr(row, attr)


def sort_key(row: EndpointLocation | Mapping[str, Any], sort: str = "endpoint") -> tuple[Any, ...]:
    """Total order of rows for ``sort``: the field (missing values last), then the endpoint id."""
    value = _get(row, SORT_FIELDS[sort])
    if value is None:
        return (1, "", _get(row, "endpoint"))
    if isinstance(value, str):  # enums are str subclasses: compare their symbols as text
        value = str(value)
    return (0, value, _get(row, "endpoint"))


def encode_cursor(query: EndpointQuery, key: tuple[Any, ...]) -> str:
    """Opaque, URL-safe cursor: the sort order and the key of the last row served."""
    raw = json.dumps({"s": query.sort, "d": query.desc, "k": list(key)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, query: EndpointQuery) -> tuple[Any, ...]:
    """The key a cursor carries; :class:`BadQuery` if it is garbled or from another sort order.

    A cursor longer than any this API hands out is refused before it is decoded, and deep
    nesting (``[[[[...``, which makes the JSON parser raise RecursionError) is a bad cursor too."""
    if len(cursor) > MAX_CURSOR:
        raise BadQuery("cursor is not one this API handed out (too long)")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        key = data["k"]
        sort, desc = data["s"], data["d"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BadQuery("cursor is not one this API handed out") from exc
    if (
        not isinstance(key, list)
        or len(key) != 3
        or key[0] not in (0, 1)
        or not isinstance(key[2], str)
        or not _cursor_value_fits(key[0], key[1], str(sort))
    ):
        raise BadQuery("cursor is not one this API handed out")
    if sort != query.sort or bool(desc) != query.desc:
        raise BadQuery(f"cursor belongs to sort={sort} order={'desc' if desc else 'asc'}; start again without it")
    return tuple(key)


def _cursor_value_fits(missing: int, value: Any, sort: str) -> bool:
    """A forged cursor must not make sort keys of different types meet (TypeError)."""
    if missing == 1:
        return value == ""
    if sort in _NUMERIC_SORTS:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def matches(loc: EndpointLocation, query: EndpointQuery) -> bool:
    """Whether a row passes the filters (not the cursor).

    ``node`` matches an endpoint with a contact on that node; ``q`` is a case-insensitive
    substring of the endpoint id, primary node, address, contact URI or user agent.
    """
    if query.node is not None and query.node != loc.primary_node and query.node not in loc.nodes:
        return False
    if query.state is not None and loc.status != query.state:
        return False
    if query.device_state is not None and loc.device_state != query.device_state:
        return False
    if query.q:
        needle = query.q.casefold()
        hay = (loc.endpoint, loc.primary_node, loc.ip, loc.contact_uri, loc.user_agent)
        if not any(h and needle in h.casefold() for h in hay):
            return False
    return True


@dataclass
class LocalPage:
    """One worker's answer for its own partitions: the first ``limit`` matches after the cursor."""

    items: list[dict[str, Any]]
    more: bool
    total: int
    partitions: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"items": self.items, "more": self.more, "total": self.total, "partitions": self.partitions}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LocalPage:
        return cls(list(data["items"]), bool(data["more"]), int(data["total"]), list(data.get("partitions", [])))


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Build large lists of tuples without the cyclic GC re-scanning every live object each
    few hundred allocations (most of the time of a large sort otherwise)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class RowIndex:
    """One worker's rows, ready for many list questions: sorted orders and search text, built
    lazily once per sort field and reused until the rows change (a new snapshot)."""

    def __init__(self, rows: Iterable[EndpointLocation]) -> None:
        self.rows = list(rows)
        self._orders: dict[str, tuple[list[tuple[Any, ...]], list[EndpointLocation]]] = {}
        self._text: dict[str, str] | None = None
        self._totals: dict[tuple[Any, ...], int] = {}

    def _order(self, sort: str) -> tuple[list[tuple[Any, ...]], list[EndpointLocation]]:
        if sort not in self._orders:
            attr = SORT_FIELDS[sort]

            def key(r: EndpointLocation) -> tuple[Any, ...]:  # sort_key without its generality: hot
                v = getattr(r, attr)
                if v is None:
                    return (1, "", r.endpoint)
                return (0, v.value if isinstance(v, enum.Enum) else v, r.endpoint)

            with paused_gc():
                keyed = sorted(((key(r), r) for r in self.rows), key=itemgetter(0))
                self._orders[sort] = ([k for k, _ in keyed], [r for _, r in keyed])
        return self._orders[sort]

    def _search_text(self) -> dict[str, str]:
        if self._text is None:
            with paused_gc():
                self._text = self._build_text()
        return self._text

    def _build_text(self) -> dict[str, str]:
        return {
            r.endpoint: "\x00".join(
                h.casefold() for h in (r.endpoint, r.primary_node, r.ip, r.contact_uri, r.user_agent) if h
            )
            for r in self.rows
        }

    def _predicate(self, query: EndpointQuery) -> Callable[[EndpointLocation], bool] | None:
        """The filters as one function (None: no filter), same meaning as :func:`matches`."""
        if query.node is None and query.state is None and query.device_state is None and not query.q:
            return None
        text = self._search_text() if query.q else {}
        needle = (query.q or "").casefold()
        node, state, device = query.node, query.state, query.device_state

        def keep(loc: EndpointLocation) -> bool:
            if node is not None and node != loc.primary_node and node not in loc.nodes:
                return False
            if state is not None and loc.status != state:
                return False
            if device is not None and loc.device_state != device:
                return False
            return not needle or needle in text[loc.endpoint]

        return keep

    def page(self, query: EndpointQuery, partitions: Iterable[int] = ()) -> LocalPage:
        """The first ``limit`` matches after the cursor; ``total`` counts every match."""
        keys, locs = self._order(query.sort)
        keep = self._predicate(query)
        if query.desc:
            end = bisect.bisect_left(keys, query.after) if query.after is not None else len(keys)
            positions: Iterable[int] = range(end - 1, -1, -1)
        else:
            start = bisect.bisect_right(keys, query.after) if query.after is not None else 0
            positions = range(start, len(keys))
        items: list[dict[str, Any]] = []
        more = False
        for i in positions:
            loc = locs[i]
            if keep is None or keep(loc):
                if len(items) == query.limit:
                    more = True
                    break
                items.append(summary_json(loc))
        filters = (query.node, query.state, query.device_state, query.q)
        total = self._totals.get(filters)
        if total is None:
            total = len(self.rows) if keep is None else sum(1 for r in self.rows if keep(r))
            self._totals[filters] = total
        return LocalPage(items=items, more=more, total=total, partitions=sorted(partitions))


def local_page(rows: Iterable[EndpointLocation], query: EndpointQuery, partitions: Iterable[int] = ()) -> LocalPage:
    """Filter, sort and cut this worker's rows; ``total`` counts every match (cursor ignored)."""
    return RowIndex(rows).page(query, partitions)


def merge_pages(pages: Sequence[LocalPage], query: EndpointQuery) -> dict[str, Any]:
    """The cluster-wide page from every worker's local page.

    Each local page holds that worker's first ``limit`` rows after the cursor, so the first
    ``limit`` of their merge are the cluster's. ``next_cursor`` is null on the last page.
    """
    merged = heapq.merge(
        *[p.items for p in pages], key=lambda item: sort_key(item, query.sort), reverse=query.desc
    )
    items: list[dict[str, Any]] = []
    more = any(p.more for p in pages)
    for item in merged:
        if len(items) == query.limit:
            more = True
            break
        items.append(item)
    next_cursor = encode_cursor(query, sort_key(items[-1], query.sort)) if more and items else None
    return {
        "items": items,
        "total": sum(p.total for p in pages),
        "limit": query.limit,
        "sort": query.sort,
        "order": "desc" if query.desc else "asc",
        "next_cursor": next_cursor,
    }


# ------------------------------------------------------------------ nodes


@dataclass
class NodeCounts:
    """What the table holds for one node: contacts, endpoints it is primary for, stale contacts."""

    contacts: int = 0
    primary: int = 0
    stale: int = 0

    def to_json(self) -> dict[str, int]:
        return {"contacts": self.contacts, "primary": self.primary, "stale": self.stale}


def count_by_node(rows: Iterable[EndpointLocation]) -> dict[str, NodeCounts]:
    counts: dict[str, NodeCounts] = {}
    for loc in rows:
        for c in loc.contacts:
            n = counts.setdefault(c.node, NodeCounts())
            n.contacts += 1
            n.stale += c.stale
        if loc.primary_node is not None:
            counts.setdefault(loc.primary_node, NodeCounts()).primary += 1
    return counts


def merge_counts(parts: Iterable[Mapping[str, Mapping[str, int]]]) -> dict[str, NodeCounts]:
    """Sum the per-node counts of several workers (as sent in JSON)."""
    total: dict[str, NodeCounts] = {}
    for part in parts:
        for node, c in part.items():
            n = total.setdefault(node, NodeCounts())
            n.contacts += int(c.get("contacts", 0))
            n.primary += int(c.get("primary", 0))
            n.stale += int(c.get("stale", 0))
    return total


_DOWN_KINDS = frozenset({"SHUTDOWN", "STOPPED"})


def node_state(view: Mapping[str, Any], node_grace_ms: int | None = None) -> str:
    """``up``, ``stale`` or ``down`` from what the worker knows of a node.

    Down: the producer said the node shut down or stopped, or it has been stale longer than
    the grace after which its contacts are removed. A lost AMI link alone is ``stale``
    (Asterisk may be fine and its phones still registered).
    """
    if str(view.get("last_kind") or "") in _DOWN_KINDS:
        return "down"
    if not view.get("stale"):
        return "up"
    ago = view.get("seen_ms_ago")
    if node_grace_ms is not None and isinstance(ago, int) and ago > node_grace_ms:
        return "down"
    return "stale"


def node_summaries(views: Mapping[str, Mapping[str, Any]], counts: Mapping[str, NodeCounts]) -> list[dict[str, Any]]:
    """Every node known from its status records or from contacts in the table, sorted by name.

    ``views`` maps node id → what :func:`streams.tables.node_view` says about it (state,
    AMI link, heartbeat, version, snapshot); a node only seen in contacts has state ``unknown``.
    """
    out = []
    for node in sorted(set(views) | set(counts)):
        view = dict(views.get(node) or {})
        view.setdefault("node", node)
        view.setdefault("state", "unknown")
        view["table"] = (counts.get(node) or NodeCounts()).to_json()
        out.append(view)
    return out
