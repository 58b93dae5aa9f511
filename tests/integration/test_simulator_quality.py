"""The simulator's call quality and flapping: RTCP every interval with the configured jitter and
loss (read back through the producer's pure mapping), and the ``flapping`` scenario."""

from __future__ import annotations

import pytest

from astreg.errors import SimulatorError
from producers.quality import rtcp_samples
from producers.simulator import SimConfig, Simulator
from producers.simulator.scenarios import run_scenario
from schemas.quality import ReportDirection
from tests.support.amiclient import RawAmi
from tests.support.transcripts import parse_messages

CFG = dict(nodes=2, phones=4, ami_port=0, ami_user="admin", ami_secret="amipass", initial="spread",
           security_events=False, qualify_every=1)


async def _login(sim: Simulator, node: str) -> RawAmi:
    c = await RawAmi.connect("127.0.0.1", sim.ports[node])
    await c.send(b"Action: Login\r\nUsername: admin\r\nSecret: amipass\r\nEvents: on\r\n\r\n")
    await c.read_all(quiet=0.2)
    return c


async def test_bad_call_reports_its_jitter_and_loss_until_hangup() -> None:
    async with Simulator(SimConfig(**CFG, rtcp_interval=0.1)) as sim:  # type: ignore[arg-type]
        c = await _login(sim, "node1")
        try:
            # Phone 1 is on node1, phone 2 on node2: node1 has the phone leg and a trunk leg.
            result = await run_scenario(sim, "bad_call", caller=1, callee=2, seconds=0.45, jitter_ms=40.0, loss=0.25)
            assert result["seconds"] == 0.45
            msgs = [dict(parse_messages(m)) for m in await c.read_all(quiet=0.4)]
        finally:
            await c.close()
    samples = [s for m in msgs for s in rtcp_samples(m, node="node1", now_ms=0, epoch=1, seq=1)]
    phone = [s for s in samples if s.endpoint == "PJSIP/1001"]
    trunk = [s for s in samples if s.endpoint == "PJSIP/node2"]
    assert len(phone) >= 6 and len(trunk) >= 6  # >= 3 intervals, Sent + Received each
    assert {s.direction for s in phone} == {ReportDirection.SENT, ReportDirection.RECEIVED}
    assert all(40 * 0.85 - 0.125 <= s.jitter_ms <= 40 * 1.15 + 0.125 for s in phone)  # type: ignore[operator]
    assert {s.fraction_lost for s in phone} == {64 / 256}
    assert {s.jitter_ms for s in trunk} == {0.0} and {s.fraction_lost for s in trunk} == {0.0}
    assert any(s.rtt_ms for s in phone if s.direction is ReportDirection.RECEIVED)
    # No report after the hangup: the last message is the DeviceStateChange back to NOT_INUSE.
    assert msgs[-1]["Event"] == "DeviceStateChange" and msgs[-1]["State"] == "NOT_INUSE"


async def test_rtcp_interval_zero_means_no_reports() -> None:
    async with Simulator(SimConfig(**CFG, rtcp_interval=0)) as sim:  # type: ignore[arg-type]
        c = await _login(sim, "node1")
        try:
            await run_scenario(sim, "bad_call", caller=1, callee=3, seconds=0.2)
            events = {dict(parse_messages(m)).get("Event") for m in await c.read_all(quiet=0.3)}
        finally:
            await c.close()
    assert "DeviceStateChange" in events and not events & {"RTCPSent", "RTCPReceived"}


async def test_flapping_alternates_reachable_and_unreachable() -> None:
    async with Simulator(SimConfig(**CFG)) as sim:  # type: ignore[arg-type]
        c = await _login(sim, "node2")
        try:
            await run_scenario(sim, "flapping", phone=2, changes=5, window=0.25)
            msgs = [dict(parse_messages(m)) for m in await c.read_all(quiet=0.3)]
        finally:
            await c.close()
        assert sim.truth()["nodes"]["node2"]["contacts"]  # still registered
    statuses = [m["ContactStatus"] for m in msgs if m.get("Event") == "ContactStatus"]
    # The contact was already Reachable (qualified at start), so the five changes are all there is.
    assert statuses == ["Unreachable", "Reachable", "Unreachable", "Reachable", "Unreachable"]
    assert all(m["EndpointName"] == "1002" for m in msgs if m.get("Event") == "ContactStatus")


async def test_bad_parameters_are_refused() -> None:
    async with Simulator(SimConfig(**CFG)) as sim:  # type: ignore[arg-type]
        with pytest.raises(SimulatorError, match="bad call quality"):
            await sim.call(1, 2, loss=2.0)
        with pytest.raises(SimulatorError, match="changes"):
            await run_scenario(sim, "flapping", phone=1, changes=0)
