"""What a real Asterisk 22 does that the producer must follow, reproduced by the simulator.

Each behaviour is the simulator's side of a registration case the pipeline must see: a refresh
REGISTER emits only the security events and moves the contact's expiration; an unknown action
(``SIPpeers`` without chan_sip) is refused with a RequestBadFormat security event; ``ModuleCheck``
finds no chan_sip; a restarted node lists the contacts it reloaded ``NonQualified`` until its
first qualify; ``PJSIPShowEndpoint`` gives one endpoint's contacts with their details.
"""

from __future__ import annotations

import time

import pytest

from producers.simulator import SimConfig, Simulator
from tests.support.amiclient import RawAmi
from tests.support.transcripts import parse_messages

pytestmark = pytest.mark.integration


def events(msgs: list[bytes]) -> list[dict[str, str]]:
    return [dict(parse_messages(m)) for m in msgs]


async def client(sim: Simulator, node: str = "node1") -> RawAmi:
    c = await RawAmi.connect("127.0.0.1", sim.ports[node])
    await c.login()
    await c.read_all(quiet=0.2)  # FullyBooted, SuccessfulAuth of the login
    return c


async def show_endpoint(c: RawAmi, endpoint: str) -> list[dict[str, str]]:
    await c.action(("Action", "PJSIPShowEndpoint"), ("Endpoint", endpoint), ("ActionID", "e1"))
    out: list[dict[str, str]] = []
    while not out or out[-1].get("Event") != "EndpointDetailComplete":
        got = events(await c.read(1, timeout=3.0))
        assert got, f"no EndpointDetailComplete after {out}"
        out += [m for m in got if m.get("ActionID") == "e1"]
    return out


async def test_a_refresh_emits_only_the_security_events_and_moves_the_expiration() -> None:
    async with Simulator(SimConfig(nodes=1, phones=4, ami_port=0, initial="none", expires=60)) as sim:
        await sim.register(3, "node1", qualify=False)
        c = await client(sim)
        try:
            before = next(m for m in await show_endpoint(c, "1003") if m.get("Event") == "ContactStatusDetail")
            t = time.time()
            while time.time() < t + 1.05:  # RegExpire has a resolution of one second
                await c.read(1, timeout=0.1)
            await sim.refresh(3, "node1")
            got = events(await c.read_all(quiet=0.3))
            assert [m["Event"] for m in got] == ["ChallengeSent", "SuccessfulAuth"]
            assert got[1]["AccountID"] == "1003" and got[1]["Service"] == "PJSIP"
            assert got[1]["RemoteAddress"].startswith("IPV4/UDP/")
            after = next(m for m in await show_endpoint(c, "1003") if m.get("Event") == "ContactStatusDetail")
            assert int(after["RegExpire"]) > int(before["RegExpire"])
            assert after["CallID"] == before["CallID"] and after["URI"] == before["URI"]
        finally:
            await c.close()


async def test_show_endpoint_lists_the_contacts_with_their_details_and_refuses_an_unknown_one() -> None:
    async with Simulator(SimConfig(nodes=1, phones=4, ami_port=0, initial="none")) as sim:
        await sim.register(1, "node1", qualify=True, user_agent="Yealink T46U", ip="10.1.2.3", port=5070)
        c = await client(sim)
        try:
            response, *items = await show_endpoint(c, "1001")
            assert (response["Response"], response["EventList"]) == ("Success", "start")
            assert [m.get("Event") for m in items] == ["EndpointDetail", "AuthDetail", "TransportDetail",
                                                       "AorDetail", "ContactStatusDetail", "EndpointDetailComplete"]
            aor, detail = items[3], items[4]
            assert (aor["QualifyFrequency"], aor["TotalContacts"]) == ("5", "1")
            assert (detail["URI"], detail["UserAgent"], detail["ViaAddress"]) == (
                "sip:1001@10.1.2.3:5070", "Yealink T46U", "10.1.2.3:5070")
            assert items[-1]["ListItems"] == "5"
            await c.action(("Action", "PJSIPShowEndpoint"), ("Endpoint", "9999"), ("ActionID", "e2"))
            (err,) = events(await c.read(1))
            assert err == {"Response": "Error", "ActionID": "e2", "Message": "Unable to retrieve endpoint 9999"}
            assert b"Unable to retrieve endpoint 9999\n\r\n\r\n" in c.raw  # Asterisk's bare LF
        finally:
            await c.close()


async def test_no_chan_sip_module_check_and_request_bad_format_for_sippeers() -> None:
    async with Simulator(SimConfig(nodes=1, phones=2, ami_port=0)) as sim:
        c = await client(sim)
        try:
            await c.action(("Action", "ModuleCheck"), ("Module", "chan_sip.so"), ("ActionID", "m1"))
            assert events(await c.read(1)) == [{"Response": "Error", "ActionID": "m1", "Message": "Module not loaded"}]
            await c.action(("Action", "ModuleCheck"), ("Module", "res_pjsip"), ("ActionID", "m2"))
            assert events(await c.read(1)) == [{"Response": "Success", "ActionID": "m2", "Version": ""}]
            await c.action(("Action", "SIPpeers"), ("ActionID", "s1"))
            got = events(await c.read(2))
            assert got[0]["Message"].startswith("Invalid/unknown command: SIPpeers.")
            assert got[1]["Event"] == "RequestBadFormat" and got[1]["RequestType"] == "Action: SIPpeers"
        finally:
            await c.close()


async def test_a_restarted_node_lists_reloaded_contacts_nonqualified_until_its_first_qualify() -> None:
    cfg = SimConfig(nodes=1, phones=4, ami_port=0, initial="none", restart_delay=0.05, boot_qualify_delay=0.6)
    async with Simulator(cfg) as sim:
        await sim.register(1, "node1", qualify=True)
        await sim.register(2, "node1", qualify=False)
        await sim.restart("node1")
        c = await client(sim)
        try:
            await c.action(("Action", "PJSIPShowContacts"), ("ActionID", "c1"))
            listed = [m for m in events(await c.read(4, timeout=3.0)) if m.get("Event") == "ContactList"]
            status = {m["Endpoint"]: (m["Status"], m["RoundtripUsec"], m["QualifyFrequency"]) for m in listed}
            assert status == {"1001": ("NonQualified", "N/A", "5"), "1002": ("NonQualified", "N/A", "0")}
            got = events(await c.read_all(quiet=1.0))
            reach = [m for m in got if m.get("Event") == "ContactStatus"]
            assert [(m["EndpointName"], m["ContactStatus"]) for m in reach] == [("1001", "Reachable")]
            assert any(m.get("Event") == "DeviceStateChange" and m["Device"] == "PJSIP/1001"
                       and m["State"] == "NOT_INUSE" for m in got)
        finally:
            await c.close()
