"""Pure parts of the simulator (wire format, AstDB, contact state) and the transcript parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from astreg.tools.bench.simulator import bench_events
from producers.simulator.astdb import AstDB
from producers.simulator.config import SimConfig
from producers.simulator.state import ALL_CLASSES, CALL, SECURITY, SYSTEM, Contact, class_mask
from producers.simulator.wire import ActionParser, encode
from tests.support.transcripts import FIXTURES, load_transcript, raw_rx, shape, split_messages


def test_transcript_parser_rebuilds_every_raw_stream_byte_for_byte() -> None:
    files = sorted(FIXTURES.glob("*.txt"))
    assert len(files) >= 20
    for path in files:
        frames = load_transcript(path)
        assert {f.direction for f in frames} <= {"RX", "TX", "NOTE", "CLOSED"}
        assert b"".join(f.raw for f in frames if f.direction == "RX") == raw_rx(path), path.name
        rx = [f for f in frames if f.direction == "RX"]
        assert rx[0].kind == "Banner" and all(f.node.startswith("node") for f in frames)
        msgs, rest = split_messages(raw_rx(path))
        assert rest == b"" and len(msgs) == len(rx)


def test_frame_headers_keep_order_and_empty_values() -> None:
    frames = load_transcript(FIXTURES / "02_register_pjsip.node1.txt")
    challenge = next(f for f in frames if f.kind == "Event: ChallengeSent")
    assert challenge.headers[-1] == ("Challenge", "")
    assert [k for k, _ in challenge.headers][:3] == ["Event", "Privilege", "SystemName"]
    assert shape([("RoundtripUsec", "449"), ("ContactStatus", "Reachable")]) == (
        ("RoundtripUsec", "9"), ("ContactStatus", "Reachable"))


@given(st.binary(max_size=300), st.lists(st.integers(1, 50), max_size=20))
def test_action_parser_never_raises_on_garbage_and_ignores_split_points(data: bytes, cuts: list[int]) -> None:
    whole = ActionParser()
    try:
        expected = [a.headers for a in whole.feed(data)]
    except ValueError:
        return
    parser, got, pos = ActionParser(), [], 0
    for n in cuts:
        got += [a.headers for a in parser.feed(data[pos : pos + n])]
        pos += n
    got += [a.headers for a in parser.feed(data[pos:])]
    assert got == expected


def test_action_parser_accepts_lf_and_crlf_and_bounds_size() -> None:
    p = ActionParser()
    acts = p.feed(b"Action: Login\nUsername: a\r\nSecret: b: c\r\n\r\nAction: Ping\r\n\r\n")
    assert [a.name for a in acts] == ["Login", "Ping"]
    assert acts[0].get("secret") == "b: c" and acts[0].get("missing") == ""
    with pytest.raises(ValueError):
        ActionParser(limit=100).feed(b"X" * 200)


def test_encode_is_crlf_framed() -> None:
    assert encode([("Response", "Success"), ("Message", "x")]) == b"Response: Success\r\nMessage: x\r\n\r\n"


def test_event_masks() -> None:
    assert class_mask("on") == ALL_CLASSES and class_mask("off") == 0
    m = class_mask("system,call")
    assert m & SYSTEM and m & CALL and not m & SECURITY


def test_astdb_semantics_like_asterisk() -> None:
    db = AstDB()
    db.put("cluster", "1001", "node1")
    db.put("cluster/sub", "1003", "node1")
    db.put("clusterx", "1", "other")
    db.put("cluster", "1005", "")
    assert db.get("cluster", "1005") == ""
    assert [k for k, _ in db.tree("cluster")] == ["/cluster/1001", "/cluster/1005", "/cluster/sub/1003"]
    assert db.tree("cluster", "sub") == [("/cluster/sub/1003", "node1")]
    assert db.tree("nosuch") == []
    assert db.delete("cluster", "1001") and not db.delete("cluster", "1001")
    assert db.delete_tree("cluster") == 2 and db.delete_tree("cluster") == 0
    assert db.get("clusterx", "1") == "other"
    db.close()


def test_contact_expiry_for_live_and_quiet_phones() -> None:
    c = Contact(1, None, 5060, "udp", None, False, 60, 1000.0, 1, 1)
    assert c.expires_at(1010.0) == 1060 and c.expires_at(1130.0) == 1180  # refreshes just in time
    c.alive = False
    assert c.expires_at(1130.0) == 1060
    assert c.uri("1001") == "sip:1001@10.0.0.1:5060"
    assert c.object_name("1001").startswith("1001;@") and len(c.object_name("1001")) == 6 + 32


def test_config_rejects_bad_endpoint_format() -> None:
    with pytest.raises(ValueError):
        SimConfig(endpoint_format="{phone}")
    assert SimConfig(endpoint_format="ext{n}").endpoint_format == "ext{n}"


def test_bench_events_delivers_what_it_generates() -> None:
    figures = bench_events(nodes=2, phones=100, seconds=0.2)
    assert figures["events"] > 0 and figures["events_per_s"] > 0
