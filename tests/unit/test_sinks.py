"""Pure parts of the sinks: coalescing, partitioning, stale keys, rows and the AstDB encoding."""

from __future__ import annotations

import json
from urllib.parse import unquote

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from astreg.partition import partition_for as partition_of
from schemas.models import DeviceState
from sinks.astdb import AmiClient, all_keys, entries, key_part, value_text
from sinks.base import coalesce, stale_keys
from sinks.redis import hash_of
from sinks.sql import TABLE, row_of
from tests.support.sink_records import location


def test_coalesce_keeps_the_last_value_and_tombstones_win_over_earlier_values() -> None:
    a1, a2, b = location("PJSIP/a", version=1), location("PJSIP/a", version=2), location("PJSIP/b")
    batch = coalesce([("a", a1), ("b", b), ("a", None), ("a", a2), ("b", None)])
    assert batch.upserts == {"a": a2}
    assert batch.deletes == {"b"}
    assert len(batch) == 2


@given(st.text(min_size=1, max_size=40), st.integers(1, 64))
def test_partition_of_agrees_with_the_producer(key: str, partitions: int) -> None:
    parts = list(range(partitions))
    assert partition_of(key, partitions) == DefaultPartitioner()(key.encode("utf-8"), parts, parts)


def test_stale_keys_only_touch_owned_keys_missing_from_the_topic() -> None:
    assert stale_keys(["a", "b", "c", "d"], {"a"}, lambda k: k != "d") == ["b", "c"]


def test_sql_row_has_every_column_and_json_contacts() -> None:
    row = row_of("PJSIP/1001", location("PJSIP/1001", "node2", state=DeviceState.INUSE))
    assert set(row) == {c.name for c in TABLE.columns}
    assert (row["node"], row["device_state"], row["status"]) == ("node2", "INUSE", "REGISTERED")
    assert row["contacts"][0]["status"] == "REACHABLE"
    assert json.loads(json.dumps(row["contacts"])) == row["contacts"]


def test_redis_hash_leaves_out_unknown_values() -> None:
    h = hash_of("PJSIP/1001", location("PJSIP/1001", None, user_agent=None))
    assert "node" not in h and "user_agent" not in h
    assert h["status"] == "STALE" and h["port"] == "5060"


def test_astdb_entries_for_the_dialplan() -> None:
    got = entries(location("PJSIP/1001", "node1", ip="192.0.2.7", port=5062))
    assert got == {
        "node/1001": "node1",
        "addr/1001": "192.0.2.7:5062",
        "state/1001": "NOT_INUSE",
        "contact/1001": "sip:1001@192.0.2.7:5062;transport=udp",
    }
    assert all_keys("a/b") == ["node/a%2Fb", "addr/a%2Fb", "state/a%2Fb", "contact/a%2Fb"]


@given(st.text(max_size=60))
def test_astdb_key_is_one_safe_segment_and_decodes_back(text: str) -> None:
    k = key_part(text)
    assert all(ch.isascii() and (ch.isalnum() or ch in "-._~%!*'()") for ch in k)
    assert unquote(k) == text


@given(st.text(max_size=60))
def test_astdb_value_never_breaks_an_ami_line_and_decodes_back(text: str) -> None:
    v = value_text(text)
    assert "\r" not in v and "\n" not in v
    assert v == v.strip(" ")
    assert unquote(v) == text


def test_astdb_ordinary_values_are_unchanged() -> None:
    for v in ("node1", "NOT_INUSE", "[2001:db8::1]:5060", "sip:1001@10.0.0.1:5060;transport=tcp;ob"):
        assert value_text(v) == v


async def test_ami_client_refuses_cr_lf_in_any_header() -> None:
    client = AmiClient("127.0.0.1", 1, "u", "s", timeout=1, window=1)
    try:
        await client.action("DBPut", [("Family", "astreg"), ("Key", "x"), ("Val", "a\r\nAction: Logoff")])
    except ValueError as exc:
        assert "CR/LF" in str(exc)
    else:
        raise AssertionError("a CR/LF header was accepted")


def test_public_api_is_honest() -> None:
    import sinks.astdb
    import sinks.base
    import sinks.redis
    import sinks.settings
    import sinks.sql

    for mod in (sinks.base, sinks.sql, sinks.redis, sinks.astdb, sinks.settings):
        for name in mod.__all__:
            assert hasattr(mod, name), f"{mod.__name__}.{name}"
    assert sinks.__doc__


def test_contact_dict_equals_the_codec_conversion() -> None:
    from schemas.codec import to_dict
    from sinks.sql import contact_dict

    loc = location("PJSIP/1001")
    assert [contact_dict(c) for c in loc.contacts] == to_dict(loc)["contacts"]


def test_astdb_settings_parse_node_lists_and_refuse_bad_addresses() -> None:
    import pytest
    from pydantic import ValidationError

    from sinks.settings import AstDbSettings

    assert AstDbSettings(ami="pbx1:5038, [::1]:5039").addresses == [("pbx1", 5038), ("::1", 5039)]
    with pytest.raises(ValidationError, match="not HOST:PORT"):
        AstDbSettings(ami="pbx1")


def test_postgres_arrays_are_the_rows_column_by_column() -> None:
    from sinks.sql import _COLUMNS, _pg_arrays

    part = [("PJSIP/1001", location("PJSIP/1001")), ("PJSIP/x", location("PJSIP/x", None, user_agent=None))]
    arrays = _pg_arrays(part)
    for i, (key, loc) in enumerate(part):
        row = row_of(key, loc)
        got = {c: arrays[j][i] for j, c in enumerate(_COLUMNS)}
        assert json.loads(got.pop("contacts")) == row.pop("contacts")
        assert got == row


# ------------------------------------------------------------------ error classes and the route rule


class _PgError(Exception):
    def __init__(self, sqlstate: str):
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


@pytest.mark.parametrize(("orig", "kind"), [
    (_PgError("42P01"), "lost"),          # undefined_table: dropped and recreated
    (_PgError("28P01"), "fatal"),         # wrong password
    (_PgError("42501"), "fatal"),         # no privilege
    (_PgError("3D000"), "database"),      # no such database
    (_PgError("22001"), "row"),           # value too long
    (_PgError("23505"), "row"),           # unique violation
    (_PgError("57P01"), "transient"),     # admin shutdown
    (_PgError("55000"), "transient"),     # database does not allow connections
    (Exception(1146, "Table 'x.astreg_locations' doesn't exist"), "lost"),
    (Exception(1045, "Access denied"), "fatal"),
    (Exception(1049, "Unknown database"), "database"),
    (Exception(1406, "Data too long"), "row"),
    (Exception(2013, "Lost connection"), "transient"),
    (Exception("no such table: astreg_locations"), "lost"),  # SQLite
    (Exception("database is locked"), "transient"),
])
def test_sql_errors_are_classified(orig: Exception, kind: str) -> None:
    from sqlalchemy.exc import DBAPIError

    from sinks.sql import classify

    assert classify(DBAPIError("stmt", None, orig)) == kind


@pytest.mark.parametrize(("exc", "kind"), [
    ("OutOfMemoryError", "transient"),
    ("ReadOnlyError", "transient"),
    ("BusyLoadingError", "transient"),
    ("ConnectionError", "transient"),
    ("TimeoutError", "transient"),
    ("AuthenticationError", "fatal"),
    ("NoPermissionError", "fatal"),
])
def test_redis_errors_are_classified(exc: str, kind: str) -> None:
    from redis import exceptions

    from sinks.redis import classify

    assert classify(getattr(exceptions, exc)("message")) == kind


@pytest.mark.parametrize(("message", "kind"), [
    ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist", "transient"),
    ("BUSY Redis is busy running a script", "transient"),
    ("NOAUTH Authentication required.", "fatal"),
    ("WRONGPASS invalid username-password pair", "fatal"),
    ("ERR Error running script: bad argument", "row"),
])
def test_redis_error_replies_are_classified(message: str, kind: str) -> None:
    from redis.exceptions import ResponseError

    from sinks.redis import classify

    assert classify(ResponseError(message)) == kind


def test_the_route_rule_prefers_routable_then_pjsip_sip_iax2() -> None:
    from sinks.routes import preferred, route_rank

    pjsip, sip, iax = (location(f"{t}/7777", "node1", technology=t) for t in ("PJSIP", "SIP", "IAX2"))
    dahdi = location("DAHDI/7777", "node1", technology="DAHDI")
    unroutable_pjsip = location("PJSIP/7777", None, technology="PJSIP")
    assert preferred([iax, sip, pjsip, dahdi]) is pjsip
    assert preferred([iax, sip]) is sip
    assert preferred([dahdi, iax]) is iax
    assert preferred([unroutable_pjsip, sip]) is sip  # a routable endpoint first
    assert preferred([unroutable_pjsip]) is unroutable_pjsip
    assert preferred([]) is None
    assert [route_rank(t, True) for t in ("PJSIP", "SIP", "IAX2", "X")] == [0, 1, 2, 3]
    assert route_rank("PJSIP", False) == 100
