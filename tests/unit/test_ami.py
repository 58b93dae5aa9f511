"""producers.ami: every event of the recorded transcripts maps to the expected record or is ignored."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astreg.errors import MalformedAmiEvent
from producers.ami import (
    CONSUMED_EVENTS,
    ContactInfo,
    event_time_ms,
    parse_hostport,
    parse_uri,
    reason_kind,
    to_event,
    to_node_status,
)
from schemas.codec import Codec
from schemas.models import (
    ContactStatus,
    DeviceState,
    EventKind,
    NodeEventKind,
    PeerStatus,
    RegistrationEvent,
    Source,
)
from tests.support.ami_frames import events, raw_files

NOW = 1_800_000_000_000
CODEC = Codec.for_model(RegistrationEvent)


def mapped(path: str, node: str = "node1") -> list[tuple[str, str, str | None]]:
    """(endpoint, kind, status) of every record a transcript produces, in order."""
    out = []
    for m in events(path):
        ev = to_event(m, node=node, now_ms=NOW)
        if ev is None:
            continue
        status = ev.contact_status or ev.peer_status or ev.device_state
        out.append((ev.endpoint, ev.kind.value, status.value if status else None))
    return out


def test_every_transcript_event_maps_or_is_ignored() -> None:
    seen = set()
    for path in raw_files():
        for m in events(path):
            name = m["Event"]
            ev = to_event(m, node="node1", now_ms=NOW)
            ns = to_node_status(m, node="node1", now_ms=NOW)
            seen.add(name)
            if name in ("ContactStatus", "PeerStatus", "ContactList"):
                assert ev is not None, (path.name, m)
            elif name == "DeviceStateChange":
                assert ev is not None and ev.kind is EventKind.DEVICE
            elif name in ("FullyBooted", "Shutdown"):
                assert ev is None and ns is not None
            else:
                assert ev is None and ns is None, (path.name, name)
            if ev is not None:
                assert ev.endpoint.count("/") == 1 and ev.endpoint.split("/")[1]
                assert ev.node == "node1" and ev.event_time_ms == NOW
                back = CODEC.decode(CODEC.encode(ev))
                assert back == ev
    assert {"ContactStatus", "PeerStatus", "DeviceStateChange", "ContactList", "FullyBooted", "Shutdown"} <= seen
    assert "VarSet" in seen and "SuccessfulAuth" in seen  # the ignored bulk was exercised too


def test_register_transcript() -> None:
    assert mapped("02_register_pjsip.node1.rx.raw") == [
        ("PJSIP/1001", "CONTACT", "NON_QUALIFIED"),
        ("PJSIP/1001", "PEER", "REACHABLE"),
        ("PJSIP/1001", "DEVICE", "NOT_INUSE"),
        ("PJSIP/1001", "CONTACT", "REACHABLE"),
        ("PJSIP/1006", "PEER", "REACHABLE"),
        ("PJSIP/1006", "DEVICE", "NOT_INUSE"),
        ("PJSIP/1006", "CONTACT", "NON_QUALIFIED"),
        ("PJSIP/1006", "CONTACT", "NON_QUALIFIED"),
        ("PJSIP/1006", "CONTACT", "REMOVED"),
    ]
    first = to_event(events("02_register_pjsip.node1.rx.raw", "ContactStatus")[1], node="node1", now_ms=NOW)
    assert first is not None
    assert (first.contact_uri, first.ip, first.port, first.rtt_us, first.aor, first.source) == (
        "sip:1001@127.0.0.1:6101", "127.0.0.1", 6101, 449, "1001", Source.LIVE)


def test_refresh_produces_nothing_beyond_the_first_registration() -> None:
    recs = mapped("03_reregister_refresh.node1.rx.raw")
    contacts = [r for r in recs if r[1] == "CONTACT"]
    assert contacts == [
        ("PJSIP/1007", "CONTACT", "NON_QUALIFIED"),
        ("PJSIP/1002", "CONTACT", "NON_QUALIFIED"),
        ("PJSIP/1002", "CONTACT", "REACHABLE"),
    ]


def test_unregister_expiry_and_qualify_transcripts() -> None:
    unreg = [r for r in mapped("04_unregister.node1.rx.raw") if r[1] == "CONTACT" and r[2] == "REMOVED"]
    assert [r[0] for r in unreg] == ["PJSIP/1003", "PJSIP/1008", "PJSIP/1004"]
    exp = [r for r in mapped("05_expiry.node1.rx.raw") if r[1] == "CONTACT"]
    assert exp[-1] == ("PJSIP/1009", "CONTACT", "REMOVED") and ("PJSIP/1004", "CONTACT", "REMOVED") in exp
    q = [r[2] for r in mapped("06_qualify_reachable_unreachable.node1.rx.raw") if r[1] == "CONTACT"]
    assert q == ["NON_QUALIFIED", "REACHABLE", "UNREACHABLE", "REACHABLE", "REMOVED"]


def test_call_device_states() -> None:
    states = [r[2] for r in mapped("09_call_device_states.node1.rx.raw") if r[0] == "PJSIP/1006" and r[1] == "DEVICE"]
    # ring, answer, hold (the held party, 1007, goes ONHOLD), resume, hang up
    assert states[-1] == "NOT_INUSE" and "INUSE" in states
    held = [r[2] for r in mapped("09_call_device_states.node1.rx.raw") if r[0] == "PJSIP/1007" and r[1] == "DEVICE"]
    assert "RINGING" in held and "ONHOLD" in held


def test_snapshot_rows_carry_enrichment_and_filter_other_nodes() -> None:
    rows = events("10_actions_snapshot.node1.rx.raw", "ContactList")
    evs = [to_event(r, node="node1", now_ms=NOW, source=Source.SNAPSHOT, snapshot_id="s1") for r in rows]
    assert all(e is not None for e in evs)
    e = evs[0]
    assert e is not None
    assert (e.endpoint, e.contact_uri, e.user_agent, e.expires_at_ms, e.reg_server, e.aor, e.rtt_us) == (
        "PJSIP/1001", "sip:1001@127.0.0.1:6101", "sipp-1001", 1795742196000, "node1", "1001", 917)
    assert e.source is Source.SNAPSHOT and e.snapshot_id == "s1"
    assert evs[1] is not None and evs[1].rtt_us is None  # RoundtripUsec: N/A
    # A shared realtime ps_contacts lists node2's contacts too: not ours.
    assert all(to_event(r, node="node2", now_ms=NOW) is None for r in rows)
    # RegServer is Asterisk's SystemName, not a --node override
    assert all(to_event(r, node="pbx-a", now_ms=NOW, system_name="node1") is not None for r in rows)
    assert all(to_event(r, node="pbx-a", now_ms=NOW, system_name="node2") is None for r in rows)


def test_live_contact_event_enriched_from_cache() -> None:
    uri = "sip:1001@127.0.0.1:6101"
    msg = {"Event": "ContactStatus", "URI": uri, "ContactStatus": "Unreachable", "AOR": "1001",
           "EndpointName": "1001", "RoundtripUsec": "0"}
    cache = {uri: ContactInfo(user_agent="Yealink", expires_at_ms=5, reg_server="node1", aor="1001")}
    ev = to_event(msg, node="node1", now_ms=NOW, contacts=cache, epoch=7, seq=9)
    assert ev is not None
    assert (ev.user_agent, ev.expires_at_ms, ev.reg_server, ev.rtt_us, ev.producer_epoch, ev.seq) == (
        "Yealink", 5, "node1", None, 7, 9)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("NonQualified", ContactStatus.NON_QUALIFIED), ("Created", ContactStatus.NON_QUALIFIED),
     ("Reachable", ContactStatus.REACHABLE), ("Unreachable", ContactStatus.UNREACHABLE),
     ("Removed", ContactStatus.REMOVED)],
)
def test_contact_status_values(status: str, expected: ContactStatus) -> None:
    msg = {"Event": "ContactStatus", "URI": "sip:1@h", "ContactStatus": status, "AOR": "1", "EndpointName": "1"}
    ev = to_event(msg, node="n", now_ms=NOW)
    assert ev is not None and ev.contact_status is expected


def test_legacy_updated_is_rejected_as_unknown_value() -> None:
    # 2016 builds said "Updated" without saying to what: no state can be derived from it.
    msg = {"Event": "ContactStatus", "URI": "sip:1@h", "ContactStatus": "Updated", "AOR": "1", "EndpointName": "1"}
    with pytest.raises(MalformedAmiEvent, match="unknown ContactStatus"):
        to_event(msg, node="n", now_ms=NOW)


def test_chan_sip_peer_status() -> None:
    reg = {"Event": "PeerStatus", "ChannelType": "SIP", "Peer": "SIP/alice", "PeerStatus": "Registered",
           "Address": "10.0.0.5:5062"}
    ev = to_event(reg, node="n", now_ms=NOW)
    assert ev is not None
    assert (ev.endpoint, ev.kind, ev.contact_uri, ev.ip, ev.port, ev.contact_status, ev.peer_status) == (
        "SIP/alice", EventKind.CONTACT, "sip:alice@10.0.0.5:5062", "10.0.0.5", 5062,
        ContactStatus.NON_QUALIFIED, PeerStatus.REGISTERED)
    uris = {"SIP/alice": "sip:alice@10.0.0.5:5062"}
    unreg = {"Event": "PeerStatus", "ChannelType": "SIP", "Peer": "SIP/alice", "PeerStatus": "Unregistered",
             "Cause": "Expired"}
    ev = to_event(unreg, node="n", now_ms=NOW, peer_uris=uris)
    assert ev is not None and ev.contact_status is ContactStatus.REMOVED and ev.cause == "Expired"
    assert ev.contact_uri == "sip:alice@10.0.0.5:5062"
    lag = {"Event": "PeerStatus", "ChannelType": "SIP", "Peer": "SIP/alice", "PeerStatus": "Lagged", "Time": "250"}
    ev = to_event(lag, node="n", now_ms=NOW, peer_uris=uris)
    assert ev is not None and ev.peer_status is PeerStatus.LAGGED and ev.rtt_us == 250_000
    rej = {"Event": "PeerStatus", "ChannelType": "SIP", "Peer": "SIP/bob", "PeerStatus": "Rejected",
           "Address": "10.0.0.6:5060"}
    ev = to_event(rej, node="n", now_ms=NOW)
    assert ev is not None and ev.kind is EventKind.PEER and ev.contact_uri is None
    iax = {"Event": "PeerStatus", "ChannelType": "IAX2", "Peer": "IAX2/trunk", "PeerStatus": "Registered",
           "Address": "[2001:db8::1]:4569"}
    ev = to_event(iax, node="n", now_ms=NOW)
    assert ev is not None and ev.contact_uri == "iax2:trunk@[2001:db8::1]:4569" and ev.ip == "2001:db8::1"
    unreach = {"Event": "PeerStatus", "ChannelType": "SIP", "Peer": "SIP/x", "PeerStatus": "Unreachable"}
    ev = to_event(unreach, node="n", now_ms=NOW)
    assert ev is not None and ev.kind is EventKind.PEER and ev.peer_status is PeerStatus.UNREACHABLE


def test_sippeers_rows() -> None:
    row = {"Event": "PeerEntry", "Channeltype": "SIP", "ObjectName": "alice", "Dynamic": "yes",
           "IPaddress": "10.0.0.5", "IPport": "5062", "Status": "OK (12 ms)"}
    ev = to_event(row, node="n", now_ms=NOW, source=Source.SNAPSHOT)
    assert ev is not None and ev.contact_status is ContactStatus.REACHABLE and ev.rtt_us == 12000
    assert to_event({**row, "IPaddress": "-none-", "IPport": "0"}, node="n", now_ms=NOW) is None
    assert to_event({**row, "Dynamic": "no"}, node="n", now_ms=NOW) is None


def test_device_state_filters_non_endpoints() -> None:
    for dev in ("Queue:support_avail", "Custom:foo", "Local/1@x", "DAHDI/1"):
        assert to_event({"Event": "DeviceStateChange", "Device": dev, "State": "INUSE"}, node="n", now_ms=NOW) is None
    ev = to_event({"Event": "DeviceStateChange", "Device": "SIP/x", "State": "RINGINUSE"}, node="n", now_ms=NOW)
    assert ev is not None and ev.device_state is DeviceState.RINGINUSE


@pytest.mark.parametrize(
    ("msg", "kind"),
    [
        ({"Event": "ContactStatus", "URI": "", "ContactStatus": "Reachable", "EndpointName": "1"}, "missing_header"),
        ({"Event": "ContactStatus", "URI": "sip:1@h", "ContactStatus": "Reachable"}, "missing_header"),
        ({"Event": "ContactStatus", "URI": "sip:1@h", "ContactStatus": "Bogus", "EndpointName": "1"}, "unknown_value"),
        ({"Event": "ContactStatus", "URI": "sip:1@h", "ContactStatus": "Reachable", "EndpointName": "x" * 9000}, "oversize"),
        ({"Event": "ContactStatus", "URI": "sip:1@h", "ContactStatus": "Reachable", "EndpointName": "10\udcc301"}, "bad_utf8"),
        ({"Event": "PeerStatus", "Peer": "PJSIP/1", "PeerStatus": "Sleeping"}, "unknown_value"),
        ({"Event": "PeerStatus", "Peer": "PJSIP/", "PeerStatus": "Reachable"}, "bad_endpoint"),
        ({"Event": "DeviceStateChange", "Device": "PJSIP/1", "State": "DANCING"}, "unknown_value"),
        ({"Event": "DeviceStateChange", "Device": "", "State": "INUSE"}, "missing_header"),
        ({"Event": "DeviceStateChange", "Device": "PJSIP/", "State": "INUSE"}, "bad_endpoint"),
        ({"Event": "ContactList", "Uri": "sip:1@h", "Endpoint": "", "RegServer": ""}, "missing_header"),
    ],
)
def test_malformed_events_raise_with_reason(msg: dict[str, str], kind: str) -> None:
    with pytest.raises(MalformedAmiEvent) as info:
        to_event(msg, node="n", now_ms=NOW)
    assert reason_kind(info.value.reason) == kind
    assert info.value.event == msg["Event"]


def test_node_status_from_fullybooted_and_shutdown() -> None:
    booted = events("01_login_banner_and_fullybooted.node2_running.rx.raw", "FullyBooted")[0]
    ns = to_node_status(booted, node="node2", now_ms=NOW, epoch=1, seq=2)
    assert ns is not None and ns.kind is NodeEventKind.BOOTED
    assert ns.boot_time_ms == NOW - int(booted["Uptime"]) * 1000
    shut = events("13_shutdown.node1.rx.raw", "Shutdown")[0]
    ns = to_node_status(shut, node="node1", now_ms=NOW)
    assert ns is not None and ns.kind is NodeEventKind.SHUTDOWN


def test_uri_and_hostport_parsing() -> None:
    u = parse_uri("sip:1001@1.2.3.4:5060;transport=TCP")
    assert (u.host, u.port, u.transport) == ("1.2.3.4", 5060, "tcp")
    u = parse_uri("sip:1001@[::1]:5061;transport=tls;ob")
    assert (u.host, u.port, u.transport) == ("::1", 5061, "tls")
    u = parse_uri("sips:1001@example.com")
    assert (u.host, u.port, u.transport) == ("example.com", None, "tls")
    u = parse_uri("<sip:[2001:db8::2]>")
    assert (u.host, u.port) == ("2001:db8::2", None)
    assert parse_uri("garbage").host is None
    assert parse_hostport("-none-") == (None, None)
    assert parse_hostport("1.2.3.4:99999") == ("1.2.3.4", None)


def test_contact_uri_user_part_never_becomes_the_ip() -> None:
    # RFC 3261 lets a user part hold ';' and "'": the address is what follows the '@'.
    uri = "sip:x;y@10.0.0.1:5070;transport=TCP"
    msg = {"Event": "ContactStatus", "URI": uri, "ContactStatus": "Reachable", "AOR": "1001",
           "EndpointName": "1001", "RoundtripUsec": "1200"}
    ev = to_event(msg, node="n", now_ms=NOW)
    assert ev is not None
    assert (ev.contact_uri, ev.ip, ev.port, ev.transport) == (uri, "10.0.0.1", 5070, "tcp")
    row = {"Event": "ContactList", "Uri": "sip:o'brien;x=1@10.0.0.2:5080", "Endpoint": "1002", "Status": "Unknown",
           "RegServer": ""}
    ev = to_event(row, node="n", now_ms=NOW, source=Source.SNAPSHOT)
    assert ev is not None and (ev.ip, ev.port) == ("10.0.0.2", 5080)
    # Not a SIP URI: the contact is kept, without an address (never a guessed one).
    for bad in ("sip:x;y@999.1.1.1", "sip:x@10.0.0.1:99999", "sip:<script>@10.0.0.1"):
        ev = to_event({**msg, "URI": bad}, node="n", now_ms=NOW)
        assert ev is not None and ev.contact_uri == bad and (ev.ip, ev.port, ev.transport) == (None, None, None)


def test_iax2_peer_keeps_its_address_from_the_last_known_contact() -> None:
    # The producer writes IAX2 contacts as iax2:<peer>@host:port; an Unregistered names none.
    unreg = {"Event": "PeerStatus", "ChannelType": "IAX2", "Peer": "IAX2/trunk", "PeerStatus": "Unregistered"}
    ev = to_event(unreg, node="n", now_ms=NOW, peer_uris={"IAX2/trunk": "iax2:trunk@[2001:db8::1]:4569"})
    assert ev is not None and ev.contact_status is ContactStatus.REMOVED
    assert (ev.ip, ev.port) == ("2001:db8::1", 4569)


def test_event_time_from_timestamp_header() -> None:
    assert event_time_ms({"Timestamp": "1795742196.123456"}, NOW) == 1795742196123
    assert event_time_ms({"Timestamp": "junk"}, NOW) == NOW
    assert event_time_ms({}, NOW) == NOW


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["Event", "URI", "ContactStatus", "EndpointName", "AOR", "Peer", "PeerStatus",
                                        "Device", "State", "Address", "Uri", "Endpoint", "Status", "RegServer",
                                        "ChannelType", "Timestamp", "Time", "ObjectName", "Dynamic", "IPaddress",
                                        "IPport"]),
                       st.one_of(st.sampled_from(sorted(CONSUMED_EVENTS)), st.text(max_size=30))))
def test_never_crashes_never_empty_key(msg: dict[str, str]) -> None:
    try:
        ev = to_event(msg, node="n", now_ms=NOW)
        to_node_status(msg, node="n", now_ms=NOW)
    except MalformedAmiEvent:
        return
    if ev is not None:
        tech, _, resource = ev.endpoint.partition("/")
        assert tech and resource and "/" not in resource
