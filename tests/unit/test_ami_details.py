"""A contact's details from the node (PJSIPShowEndpoint's ContactStatusDetail, ContactList rows):
the recorded messages of a real Asterisk 22 mapped to refreshes and details."""

from __future__ import annotations

from producers import ami
from schemas.models import ContactStatus, EventKind, Source
from tests.support.transcripts import FIXTURES, load_transcript


def recorded(event: str, endpoint: str = "1001") -> dict[str, str]:
    for f in load_transcript(FIXTURES / "10_actions_snapshot.node1.txt"):
        d = dict(f.headers) if f.headers else {}
        if d.get("Event") == event and endpoint in (d.get("EndpointName"), d.get("Endpoint")):
            return d
    raise AssertionError(f"no {event} of {endpoint} in the recording")


def test_contact_status_detail_of_a_real_asterisk_becomes_a_refresh() -> None:
    msg = recorded("ContactStatusDetail")
    ev = ami.contact_detail(msg, node="node1", now_ms=1, epoch=7, seq=9, refresh=True)
    assert (ev.endpoint, ev.kind, ev.source, ev.contact_uri) == (
        "PJSIP/1001", EventKind.REFRESH, Source.LIVE, "sip:1001@127.0.0.1:6101")
    assert (ev.ip, ev.port, ev.user_agent, ev.expires_at_ms) == ("127.0.0.1", 6101, "sipp-1001", 1795742196000)
    assert (ev.call_id, ev.qualify_frequency_s, ev.aor) == ("1-22627@127.0.0.1", 5, "1001")
    assert ev.contact_status is None  # a refresh says nothing about reachability


def test_details_of_a_new_contact_carry_what_contactstatus_does_not() -> None:
    ev = ami.contact_detail(recorded("ContactStatusDetail"), node="node1", now_ms=1, epoch=7, seq=9, refresh=False)
    assert ev.kind is EventKind.CONTACT and ev.contact_status is None and ev.cause == "details"
    assert ev.user_agent == "sipp-1001" and ev.expires_at_ms is not None


def test_contact_list_rows_carry_call_id_and_qualify_frequency() -> None:
    msg = recorded("ContactList")
    ev = ami.to_event(msg, node="node1", now_ms=1, source=Source.SNAPSHOT, snapshot_id="s")
    assert ev is not None and ev.kind is EventKind.CONTACT
    assert ev.qualify_frequency_s == int(msg["QualifyFrequency"]) and ev.call_id == msg["CallId"]
    info = ami.contact_info(msg, "node1")
    live = ami.to_event({"Event": "ContactStatus", "URI": msg["Uri"], "ContactStatus": "Reachable", "AOR": "1001",
                         "EndpointName": "1001", "RoundtripUsec": "500"}, node="node1", now_ms=1,
                        contacts={msg["Uri"]: info})
    assert live is not None and live.contact_status is ContactStatus.REACHABLE
    assert (live.call_id, live.qualify_frequency_s, live.user_agent) == (info.call_id, info.qualify_s, info.user_agent)
