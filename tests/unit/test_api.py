"""streams/web/api.py: row JSON, endpoint resolution, filters, sorting, cursor paging, merging."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astreg.errors import BadQuery
from schemas.models import Contact, ContactStatus, DeviceState, EndpointLocation, LocationStatus
from streams.web import api
from streams.web.api import LocalPage


def loc(
    endpoint: str,
    node: str | None = "node1",
    *,
    status: LocationStatus = LocationStatus.REGISTERED,
    device: DeviceState = DeviceState.NOT_INUSE,
    ip: str | None = "10.0.0.1",
    ua: str | None = "Yealink",
    rtt: int | None = 500,
    updated: int = 1_000,
    extra_nodes: tuple[str, ...] = (),
) -> EndpointLocation:
    tech, _, res = endpoint.partition("/")
    contacts = []
    if node is not None:
        contacts.append(Contact(node=node, uri=f"sip:{res}@{ip}:5060", registered_at_ms=1, updated_at_ms=2,
                                status=ContactStatus.REACHABLE, ip=ip, port=5060, transport="udp",
                                user_agent=ua, rtt_us=rtt, expires_at_ms=9, primary=True))
    for n in extra_nodes:
        contacts.append(Contact(node=n, uri=f"sip:{res}@old:5060", registered_at_ms=0, updated_at_ms=0, stale=True))
    return EndpointLocation(
        endpoint=endpoint, technology=tech, resource=res, updated_at_ms=updated, primary_node=node,
        status=status, device_state=device, contact_uri=f"sip:{res}@{ip}:5060", ip=ip, port=5060,
        transport="udp", user_agent=ua, rtt_us=rtt, contacts=tuple(contacts),
        nodes=tuple(([node] if node else []) + list(extra_nodes)), version=3,
    )


# ------------------------------------------------------------------ JSON


def test_location_json_has_every_contact_and_plain_values() -> None:
    row = loc("PJSIP/1001", "node1", extra_nodes=("node2",), ua="<script>alert(1)</script>")
    data = api.location_json(row, stale=True)
    assert data["endpoint"] == "PJSIP/1001"
    assert data["primary_node"] == "node1"
    assert data["status"] == "REGISTERED" and type(data["status"]) is str
    assert data["device_state"] == "NOT_INUSE" and type(data["device_state"]) is str
    assert [c["node"] for c in data["contacts"]] == ["node1", "node2"]
    first = data["contacts"][0]
    assert first == {
        "node": "node1", "uri": "sip:1001@10.0.0.1:5060", "aor": None, "status": "REACHABLE",
        "ip": "10.0.0.1", "port": 5060, "transport": "udp", "user_agent": "<script>alert(1)</script>",
        "rtt_us": 500, "expires_at_ms": 9, "registered_at_ms": 1, "updated_at_ms": 2, "stale": False,
        "primary": True,
    }
    assert data["contacts"][1]["stale"] is True
    assert data["stale"] is True
    assert data["nodes"] == ["node1", "node2"]


def test_summary_json_counts_contacts() -> None:
    data = api.summary_json(loc("PJSIP/1001", extra_nodes=("node2",)))
    assert data["contacts"] == 2
    assert data["status"] == "REGISTERED"
    assert set(data) >= {"endpoint", "primary_node", "ip", "user_agent", "rtt_us", "updated_at_ms"}


# ------------------------------------------------------------------ resolution


def test_full_id_is_its_own_candidate() -> None:
    assert api.candidate_ids("PJSIP/1001") == ["PJSIP/1001"]
    assert api.candidate_ids(" SIP/alice ") == ["SIP/alice"]


def test_bare_resource_tries_each_technology() -> None:
    assert api.candidate_ids("1001") == ["PJSIP/1001", "SIP/1001", "IAX2/1001"]
    assert api.candidate_ids("1001", ("PJSIP",)) == ["PJSIP/1001"]


@pytest.mark.parametrize("raw", ["", "  ", "PJSIP/", "/1001"])
def test_bad_endpoint_ids_are_refused(raw: str) -> None:
    with pytest.raises(BadQuery, match="not an endpoint id"):
        api.candidate_ids(raw)


def test_resolve_unambiguous_bare_name() -> None:
    r = api.resolve("1001", ["PJSIP/1001", "PJSIP/1002"])
    assert r.endpoint == "PJSIP/1001" and not r.ambiguous


def test_resolve_ambiguous_bare_name_lists_candidates() -> None:
    r = api.resolve("1001", ["SIP/1001", "PJSIP/1001"])
    assert r.endpoint is None and r.ambiguous
    assert r.candidates == ("PJSIP/1001", "SIP/1001")


def test_resolve_unknown() -> None:
    r = api.resolve("1001", ["PJSIP/1002"])
    assert r.endpoint is None and not r.ambiguous and r.candidates == ()
    assert api.resolve("PJSIP/9", []).endpoint is None


def test_full_id_is_never_ambiguous() -> None:
    assert api.resolve("SIP/1001", ["SIP/1001", "PJSIP/1001"]).endpoint == "SIP/1001"


# ------------------------------------------------------------------ query parsing


def test_parse_defaults() -> None:
    q = api.parse_query({})
    assert q == api.EndpointQuery()
    assert q.limit == api.DEFAULT_LIMIT and q.sort == "endpoint" and not q.desc


def test_parse_everything_case_insensitively() -> None:
    q = api.parse_query({"node": "node2", "state": "registered", "device_state": "inuse",
                         "q": " yea ", "limit": "25", "sort": "RTT", "order": "DESC"})
    assert q.node == "node2" and q.state is LocationStatus.REGISTERED
    assert q.device_state is DeviceState.INUSE and q.q == "yea"
    assert q.limit == 25 and q.sort == "rtt" and q.desc


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "x"}, "limit='x' is not a number of 1 to 6 ASCII digits"),
        ({"limit": "0"}, "limit=0 is outside"),
        ({"limit": "1001"}, "limit=1001 is outside"),
        ({"state": "gone"}, "state='gone' is not one of"),
        ({"device_state": "idle"}, "device_state='idle' is not one of"),
        ({"sort": "colour"}, "sort='colour' is not one of"),
        ({"order": "up"}, "order='up' is not asc or desc"),
        ({"cursor": "!!!"}, "cursor is not one this API handed out"),
        ({"cursor": "eyJ4IjoxfQ"}, "cursor is not one this API handed out"),
    ],
)
def test_parse_refuses_bad_parameters(params: dict[str, str], message: str) -> None:
    with pytest.raises(BadQuery, match=message):
        api.parse_query(params)


def test_cursor_of_another_sort_is_refused() -> None:
    q = api.parse_query({"sort": "rtt"})
    cursor = api.encode_cursor(q, (0, 5, "PJSIP/1"))
    with pytest.raises(BadQuery, match="cursor belongs to sort=rtt"):
        api.parse_query({"sort": "endpoint", "cursor": cursor})


def test_forged_cursor_cannot_mix_types() -> None:
    q = api.parse_query({"sort": "rtt"})
    forged = api.encode_cursor(q, (0, "text", "PJSIP/1"))
    with pytest.raises(BadQuery):
        api.parse_query({"sort": "rtt", "cursor": forged})


def test_params_round_trip() -> None:
    q = api.parse_query({"node": "n1", "state": "stale", "q": "x", "limit": "7", "sort": "node", "order": "desc"})
    q2 = api.EndpointQuery(**{**q.__dict__, "after": (0, "n1", "PJSIP/5")})
    assert api.parse_query(q2.params()) == q2


# ------------------------------------------------------------------ filters


def test_filters() -> None:
    a = loc("PJSIP/1001", "node1", ua="Yealink T46")
    b = loc("PJSIP/1002", "node2", status=LocationStatus.STALE, device=DeviceState.INUSE, ip="192.168.1.7",
            ua="Polycom")
    c = loc("SIP/2001", "node2", extra_nodes=("node1",), ua="Grandstream")

    def ids(**params: str) -> list[str]:
        q = api.parse_query(params)
        return [r.endpoint for r in (a, b, c) if api.matches(r, q)]

    assert ids() == ["PJSIP/1001", "PJSIP/1002", "SIP/2001"]
    assert ids(node="node1") == ["PJSIP/1001", "SIP/2001"]  # a contact on node1 is enough
    assert ids(state="stale") == ["PJSIP/1002"]
    assert ids(device_state="INUSE") == ["PJSIP/1002"]
    assert ids(q="yealink") == ["PJSIP/1001"]
    assert ids(q="192.168") == ["PJSIP/1002"]
    assert ids(q="sip/2") == ["SIP/2001"]
    assert ids(q="nothing") == []


# ------------------------------------------------------------------ paging


def _walk(rows: list[EndpointLocation], shards: int, **params: str) -> list[str]:
    """Page through ``rows`` split over ``shards`` workers, as the API does."""
    parts = [rows[i::shards] for i in range(shards)]
    seen: list[str] = []
    cursor = None
    for _ in range(1000):
        q = api.parse_query({**params, **({"cursor": cursor} if cursor else {})})
        answer = api.merge_pages([api.local_page(p, q) for p in parts], q)
        assert answer["total"] == sum(1 for r in rows if api.matches(r, q))
        seen += [item["endpoint"] for item in answer["items"]]
        cursor = answer["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


def test_paging_by_endpoint_covers_everything_once_in_order() -> None:
    rows = [loc(f"PJSIP/{n}", f"node{n % 3}") for n in range(1000, 1250)]
    random.Random(4).shuffle(rows)
    got = _walk(rows, 3, limit="17")
    assert got == sorted(r.endpoint for r in rows)


@pytest.mark.parametrize("sort", sorted(api.SORT_FIELDS))
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_paging_any_sort_is_a_total_stable_order(sort: str, order: str) -> None:
    rng = random.Random(7)
    rows = [
        loc(f"PJSIP/{n}", rng.choice(["n1", "n2", None]), rtt=rng.choice([None, 100, 200]),
            ip=rng.choice([None, "10.0.0.1", "10.0.0.2"]), ua=rng.choice([None, "A", "B"]),
            updated=rng.choice([1, 2, 3]), status=rng.choice(list(LocationStatus)),
            device=rng.choice(list(DeviceState)))
        for n in range(120)
    ]
    got = _walk(rows, 2, limit="9", sort=sort, order=order)
    expected = sorted(rows, key=lambda r: api.sort_key(r, sort), reverse=order == "desc")
    assert got == [r.endpoint for r in expected]
    # missing values sort last in ascending order
    if order == "asc":
        keys = [api.sort_key(r, sort)[0] for r in expected]
        assert keys == sorted(keys)


def test_paging_with_filter() -> None:
    rows = [loc(f"PJSIP/{n}", "node1" if n % 2 else "node2") for n in range(300)]
    got = _walk(rows, 4, limit="10", node="node1")
    assert got == sorted(r.endpoint for r in rows if r.primary_node == "node1")


def test_rows_added_between_pages_do_not_shift_the_cursor() -> None:
    rows = [loc(f"PJSIP/{n:04d}") for n in range(0, 100, 2)]
    q = api.parse_query({"limit": "10"})
    first = api.merge_pages([api.local_page(rows, q)], q)
    assert first["items"][-1]["endpoint"] == "PJSIP/0018"
    rows.append(loc("PJSIP/0001"))  # lands before the cursor: not served again, nothing skipped
    rows.append(loc("PJSIP/0019"))
    q2 = api.parse_query({"limit": "10", "cursor": first["next_cursor"]})
    second = api.merge_pages([api.local_page(rows, q2)], q2)
    assert [i["endpoint"] for i in second["items"]][:2] == ["PJSIP/0019", "PJSIP/0020"]


def test_last_page_has_no_cursor_and_empty_is_fine() -> None:
    q = api.parse_query({"limit": "5"})
    assert api.merge_pages([api.local_page([], q)], q) == {
        "items": [], "total": 0, "limit": 5, "sort": "endpoint", "order": "asc", "next_cursor": None,
    }
    exact = [loc(f"PJSIP/{n}") for n in range(5)]
    assert api.merge_pages([api.local_page(exact, q)], q)["next_cursor"] is None


def test_local_page_json_round_trip() -> None:
    q = api.parse_query({"limit": "2"})
    page = api.local_page([loc("PJSIP/1"), loc("PJSIP/2"), loc("PJSIP/3")], q, partitions=[3, 1])
    again = LocalPage.from_json(page.to_json())
    assert again == page and again.more and again.total == 3 and again.partitions == [1, 3]


@settings(max_examples=60, deadline=None)
@given(
    ids=st.sets(st.integers(0, 500), max_size=80),
    shards=st.integers(1, 5),
    limit=st.integers(1, 30),
)
def test_paging_property(ids: set[int], shards: int, limit: int) -> None:
    rows = [loc(f"PJSIP/{n}") for n in ids]
    assert _walk(rows, shards, limit=str(limit)) == sorted(r.endpoint for r in rows)


# ------------------------------------------------------------------ nodes


def test_count_and_merge_by_node() -> None:
    rows = [loc("PJSIP/1", "a"), loc("PJSIP/2", "a", extra_nodes=("b",)), loc("PJSIP/3", "b")]
    local = api.count_by_node(rows)
    assert local["a"].to_json() == {"contacts": 2, "primary": 2, "stale": 0}
    assert local["b"].to_json() == {"contacts": 2, "primary": 1, "stale": 1}
    merged = api.merge_counts([{k: v.to_json() for k, v in local.items()}, {"a": {"contacts": 1, "primary": 1}}])
    assert merged["a"].to_json() == {"contacts": 3, "primary": 3, "stale": 0}


def test_node_summaries_list_nodes_from_either_source() -> None:
    views = {"a": {"node": "a", "state": "up", "asterisk_version": "22.1"}}
    counts = {"a": api.NodeCounts(3, 2, 0), "z": api.NodeCounts(1, 0, 1)}
    out = api.node_summaries(views, counts)
    assert [n["node"] for n in out] == ["a", "z"]
    assert out[0]["state"] == "up" and out[0]["table"] == {"contacts": 3, "primary": 2, "stale": 0}
    assert out[1]["state"] == "unknown" and out[1]["table"]["stale"] == 1


@pytest.mark.parametrize(
    ("view", "grace", "expected"),
    [
        ({"stale": False, "last_kind": "HEARTBEAT"}, None, "up"),
        ({"stale": True, "last_kind": "AMI_DOWN", "seen_ms_ago": 5_000}, 120_000, "stale"),
        ({"stale": True, "last_kind": "HEARTBEAT", "seen_ms_ago": 200_000}, 120_000, "down"),
        ({"stale": True, "last_kind": "HEARTBEAT", "seen_ms_ago": 200_000}, None, "stale"),
        ({"stale": True, "last_kind": "SHUTDOWN", "seen_ms_ago": 1}, 120_000, "down"),
        ({"stale": False, "last_kind": "STOPPED"}, None, "down"),
    ],
)
def test_node_state(view: dict[str, object], grace: int | None, expected: str) -> None:
    assert api.node_state(view, grace) == expected


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize("cursor", [
    "W" * 4000,  # longer than any cursor the API hands out
    __import__("base64").urlsafe_b64encode(b"[" * 1500).decode(),  # JSON nesting: RecursionError
    __import__("base64").urlsafe_b64encode(b'{"s":"endpoint","d":false,"k":' + b"[" * 1400 + b"]" * 1400 + b"}").decode(),
    "%%%", "eyJr", "bnVsbA",  # not base64, truncated JSON, JSON null
])
def test_a_malformed_or_deeply_nested_cursor_is_a_bad_query(cursor: str) -> None:
    with pytest.raises(BadQuery, match="cursor"):
        api.parse_query({"cursor": cursor})


@pytest.mark.parametrize("limit", ["١٢", "１２", " 12", "12 ", "+12", "1_0", "0x10", "12.0", "-1", "1e2", "9" * 40])
def test_limit_takes_ascii_digits_only(limit: str) -> None:
    with pytest.raises(BadQuery, match="limit"):
        api.parse_query({"limit": limit})
    assert api.parse_query({"limit": "12"}).limit == 12


def test_search_does_not_match_across_fields() -> None:
    """The end of one field and the start of the next are not one text: the index joins the
    fields with NUL, and a search may not contain a control character."""
    row = loc("PJSIP/1001", "node1", ua="Yealink")
    for q in ("1001\x00node1", "1001\x00", "\x00node1"):
        with pytest.raises(BadQuery, match="control characters"):
            api.parse_query({"q": q})
    index = api.RowIndex([row])
    for q in ("1001node1", "1001 node1", "10.0.0.1sip"):
        query = api.parse_query({"q": q})
        assert not api.matches(row, query)
        assert index.page(query).items == []
    assert index.page(api.parse_query({"q": "node1"})).total == 1
