"""The simulator against real clients: panoramisk 1.4, many raw AMI clients, the control HTTP
server, the ``astreg simulate`` command, and the Python API's state changes (truth)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import httpx
import pytest
from panoramisk import Manager

from astreg.errors import SimulatorError
from producers.simulator import SimConfig, Simulator
from producers.simulator.control import ControlServer
from producers.simulator.scenarios import run_scenario
from tests.support.amiclient import RawAmi
from tests.support.transcripts import parse_messages
from tests.support.wait import until


def cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = dict(nodes=2, phones=6, ami_port=0, auth_fail_delay=0.05, restart_delay=0.05)
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


async def test_panoramisk_logs_in_gets_events_and_list_actions() -> None:
    async with Simulator(cfg()) as sim:
        manager = Manager(host="127.0.0.1", port=sim.ports["node1"], username="astreg", secret="astreg",
                          ping_delay=60, reconnect_timeout=60)
        seen: list[dict[str, str]] = []
        logged_in = asyncio.Event()

        def on_event(_mgr: Manager, message: object) -> None:
            seen.append(dict(message))  # type: ignore[call-overload]

        manager.register_event("ContactStatus", on_event)
        manager.on_login = lambda _m: logged_in.set()
        await manager.connect()
        try:
            await asyncio.wait_for(logged_in.wait(), 5)
            await sim.register(2, "node1", ip="10.1.0.2", port=5062)
            contacts = await asyncio.wait_for(manager.send_action({"Action": "PJSIPShowContacts"}), 5)
            states = await asyncio.wait_for(manager.send_action({"Action": "DeviceStateList"}), 5)
            await until(lambda: len([e for e in seen if e.get("URI") == "sip:1002@10.1.0.2:5062"]) >= 2, 5,
                        what="two ContactStatus events of the new contact")
        finally:
            manager.close()
        assert [e["ContactStatus"] for e in seen if e.get("URI") == "sip:1002@10.1.0.2:5062"] == ["NonQualified", "Reachable"]
        items = [dict(m) for m in contacts if m.get("Event") == "ContactList"]
        # spread: phones 1,3,5 on node1, plus 1002 just registered
        assert sorted(i["Endpoint"] for i in items) == ["1001", "1002", "1003", "1005"]
        assert dict(contacts[-1])["ListItems"] == "4"
        dev = {m["Device"]: m["State"] for m in states if m.get("Event") == "DeviceStateChange"}
        assert dev["PJSIP/1002"] == "NOT_INUSE" and dev["PJSIP/1004"] == "UNAVAILABLE" and dev["PJSIP/node2"] == "NOT_INUSE"


async def test_fifty_concurrent_clients_all_get_every_event() -> None:
    async with Simulator(cfg(initial="none", security_events=False)) as sim:
        clients = [await RawAmi.connect("127.0.0.1", sim.ports["node2"]) for _ in range(50)]
        try:
            await asyncio.gather(*(c.login() for c in clients))
            for c in clients:
                await c.read(1)  # FullyBooted
            await sim.register(4, "node2", qualify=False)
            got = await asyncio.gather(*(c.read(3) for c in clients))
            kinds = {tuple(parse_messages(m)[0][1] for m in msgs) for msgs in got}
            assert kinds == {("PeerStatus", "DeviceStateChange", "ContactStatus")}
            assert sim.stats()["node2"]["clients"] == 50
        finally:
            for c in clients:
                await c.close()


async def test_truth_follows_register_move_expire_and_calls() -> None:
    async with Simulator(cfg(initial="none")) as sim:
        await sim.register(1, "node1")
        first = sim.truth()["nodes"]["node1"]["contacts"][0]
        await sim.move(1, "node2", ip="10.2.0.1")
        t = sim.truth()
        moved = t["nodes"]["node2"]["contacts"][0]
        assert moved["registered_seq"] > first["registered_seq"]
        assert moved["uri"] == "sip:1001@10.2.0.1:5060" and moved["status"] == "Reachable"
        assert len(t["nodes"]["node1"]["contacts"]) == 1  # the old node keeps it until expiry
        assert sim.location(1) == "node2"
        await sim.expire(1, "node1")
        assert sim.truth()["nodes"]["node1"]["contacts"] == []
        await sim.register(2, "node2", qualify=False)
        await sim.call(1, 2)
        assert sim.truth()["nodes"]["node2"]["device_states"] == {"PJSIP/1001": "INUSE", "PJSIP/1002": "INUSE"}
        await sim.hold(1, 2)
        assert sim.truth()["nodes"]["node2"]["device_states"]["PJSIP/1002"] == "ONHOLD"
        await sim.hangup(1, 2)
        assert set(sim.truth()["nodes"]["node2"]["device_states"].values()) == {"NOT_INUSE"}
        with pytest.raises(SimulatorError):
            await sim.device_state(1, "node2", "DANCING")
        with pytest.raises(SimulatorError):
            await sim.register(99, "node1")


async def test_stale_contact_is_expired_by_the_expiration_check() -> None:
    async with Simulator(cfg(initial="none", expiration_check_interval=0.1)) as sim:
        await sim.register(3, "node1", expires=1, keepalive=False)
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            await c.login()
            msgs = [parse_messages(m) for m in await c.read(5, timeout=5)]
            statuses = [dict(h).get("ContactStatus") for h in msgs if dict(h).get("Event") == "ContactStatus"]
            assert statuses == ["Removed"]
            assert sim.truth()["nodes"]["node1"]["contacts"] == []
        finally:
            await c.close()


async def test_restart_sends_shutdown_then_boots_with_new_uptime_and_keeps_contacts() -> None:
    async with Simulator(cfg()) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        await c.login()
        before = sim.truth()["nodes"]["node1"]
        sim.nodes["node1"].boot_time -= 100  # as if booted 100 s ago
        await c.read(2)  # FullyBooted, SuccessfulAuth
        await sim.restart("node1")
        msgs = [parse_messages(m) for m in await c.read(5)]
        assert [dict(h).get("Event") for h in msgs] == ["Shutdown"]
        assert dict(msgs[0])["Restart"] == "True" and c.eof
        c2 = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            await c2.login()
            booted = dict(parse_messages((await c2.read(1))[0]))
            assert booted["Event"] == "FullyBooted" and int(booted["Uptime"]) < 5
            after = sim.truth()["nodes"]["node1"]
            assert after["boot_time"] >= before["boot_time"]

            def kept(contacts: list[dict]) -> list[dict]:  # reloaded from the AstDB: all but the qualify result
                return [{k: v for k, v in x.items() if k not in ("status", "rtt_us")} for x in contacts]

            assert kept(after["contacts"]) == kept(before["contacts"])
            # listed NonQualified until the node's first qualify (boot_qualify_delay)
            assert {x["status"] for x in after["contacts"]} == {"NonQualified"}
        finally:
            await c2.close()


async def test_crash_close_refuses_then_recover_answers() -> None:
    async with Simulator(cfg()) as sim:
        port = sim.ports["node1"]
        c = await RawAmi.connect("127.0.0.1", port)
        await c.login()
        await sim.crash("node1", "close")
        assert await c.closed(timeout=2)
        with pytest.raises(OSError):
            await RawAmi.connect("127.0.0.1", port)
        assert sim.truth()["nodes"]["node1"]["ami"] == "crashed"
        await sim.recover("node1")
        c2 = await RawAmi.connect("127.0.0.1", port)
        try:
            assert dict((await c2.login())[0])["Message"] == "Authentication accepted"
        finally:
            await c2.close()


async def test_crash_halfopen_keeps_socket_open_and_silent() -> None:
    async with Simulator(cfg()) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        await c.login()
        await c.read(2)
        await sim.crash("node1", "halfopen")
        await c.action(("Action", "Ping"))
        await sim.register(2, "node1")
        assert await c.read(1, timeout=0.5) == [] and not c.eof
        fresh = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        assert await fresh.read(1, timeout=0.3) == []  # not even a banner
        await sim.recover("node1")
        assert await c.closed(timeout=2)  # stuck sessions are gone after recovery
        await fresh.close()
        c3 = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            assert dict((await c3.login())[0])["Response"] == "Success"
        finally:
            await c3.close()
        await c.close()


async def test_control_http_truth_action_scenario_stats() -> None:
    async with Simulator(cfg(initial="none")) as sim:
        control = ControlServer(sim, "127.0.0.1", 0)
        await control.start()
        try:
            async with httpx.AsyncClient(base_url=control.url) as http:
                r = await http.post("/action", json={"op": "register", "params": {"phone": 2, "node": "node2"}})
                assert r.status_code == 200, r.text
                truth = (await http.get("/truth")).json()
                assert [c["endpoint"] for c in truth["nodes"]["node2"]["contacts"]] == ["PJSIP/1002"]
                r = await http.post("/scenario", json={"name": "move", "params": {"count": 3}})
                assert r.json()["result"] == {"moved": 3}
                r = await http.post("/scenario", json={"name": "nope"})
                assert r.status_code == 400 and "unknown scenario" in r.json()["error"]
                r = await http.post("/action", json={"op": "register", "params": {"phone": 2}})
                assert r.status_code == 400
                r = await http.post("/action", content=b"{not json")
                assert r.status_code == 400
                stats = (await http.get("/stats")).json()
                assert stats["node2"]["events"] >= 3
        finally:
            await control.stop()


async def test_scenarios_are_deterministic_per_seed() -> None:
    async def run(seed: int) -> dict[str, object]:
        async with Simulator(cfg(seed=seed, phones=50, nodes=3)) as sim:
            for name in ("churn", "move", "calls", "steady"):
                await run_scenario(sim, name)
            await run_scenario(sim, "storm", node="node3")
            t = sim.truth()
            for n in t["nodes"].values():
                for c in n["contacts"]:
                    c.pop("expires_at")
                    c.pop("rtt_us")
            t["nodes"] = {k: {kk: vv for kk, vv in v.items() if kk != "boot_time"} for k, v in t["nodes"].items()}
            return t

    a, b = await run(7), await run(7)
    assert a == b
    assert a["nodes"]["node3"]["ami"] == "crashed"
    # storm: every phone of node3 also registered on another node, more recently
    assert all(c["registered_seq"] < a["seq"] for c in a["nodes"]["node3"]["contacts"])


async def test_rate_caps_events_per_second_in_scenarios() -> None:
    async with Simulator(cfg(initial="none", rate=200.0, phones=20, security_events=False)) as sim:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await run_scenario(sim, "churn", count=60)
        elapsed = loop.time() - start
        events = sum(s["events"] for s in sim.stats().values())
        # A lower bound only (a loaded machine can only make it slower): the bucket starts empty.
        assert events > 60 and elapsed >= (events - 8) / 200


async def test_astreg_simulate_command_prints_ports_and_stops_on_sigterm() -> None:
    env = dict(os.environ, ASTREG_NODES="2", ASTREG_PHONES="4", ASTREG_AMI_PORT="0")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "astreg.tools.cli", "simulate", "--scenario", "churn",
                                                "--rate", "20", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip() for _ in range(3)]  # type: ignore[union-attr]
        assert lines[0].startswith("ami=node1@127.0.0.1:") and lines[1].startswith("ami=node2@127.0.0.1:")
        assert lines[2].startswith("control=http://127.0.0.1:")
        port = int(lines[0].rsplit(":", 1)[1])
        c = await RawAmi.connect("127.0.0.1", port)
        assert dict((await c.login())[0])["Response"] == "Success"
        await c.close()
        async with httpx.AsyncClient() as http:
            assert set((await http.get(lines[2].split("=", 1)[1] + "/truth")).json()["nodes"]) == {"node1", "node2"}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0


async def test_moved_phone_is_removed_from_the_old_node_by_the_expiration_check() -> None:
    async with Simulator(cfg(initial="none", expiration_check_interval=0.1)) as sim:
        await sim.register(1, "node1", expires=1)
        await sim.move(1, "node2", expires=1)
        await sim.move(1, "node1")  # back again: a new contact on node1, never a silent refresh
        t = sim.truth()["nodes"]
        assert t["node1"]["contacts"][0]["port"] == 5061 and t["node1"]["contacts"][0]["registered_seq"] == sim.seq
        await until(lambda: not sim.truth()["nodes"]["node2"]["contacts"], 5,
                    what="the expiration check to remove the old contact on node2")
        t = sim.truth()["nodes"]
        assert t["node2"]["contacts"] == [] and len(t["node1"]["contacts"]) == 1
