"""Faults on demand, and the simulator surviving bad clients.

Split writes (even inside multi-byte UTF-8 characters), oversized and malformed events, a client
that never reads, garbage input, half lines, disconnects mid-action: after each, the node still
serves a well-behaved client.
"""

from __future__ import annotations

import asyncio
import socket

from producers.simulator import SimConfig, Simulator
from tests.support.amiclient import RawAmi
from tests.support.transcripts import parse_messages, split_messages
from tests.support.wait import until


def cfg(**kw: object) -> SimConfig:
    base: dict[str, object] = dict(nodes=1, phones=20, ami_port=0, auth_fail_delay=0.05, initial="none")
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


async def healthy(sim: Simulator, node: str = "node1") -> bool:
    c = await RawAmi.connect("127.0.0.1", sim.ports[node])
    try:
        login = await c.login()
        await c.action(("Action", "Ping"), ("ActionID", "alive"))
        msgs = [parse_messages(m) for m in await c.read(10, timeout=0.5)]
        return dict(login[0])["Response"] == "Success" and any(dict(m).get("Ping") == "Pong" for m in msgs)
    finally:
        await c.close()


async def test_split_writes_arrive_in_small_pieces_and_reassemble_exactly() -> None:
    async with Simulator(cfg(split_writes=True, seed=3)) as sim:
        reader, writer = await asyncio.open_connection("127.0.0.1", sim.ports["node1"])
        writer.write(b"Action: Login\r\nUsername: astreg\r\nSecret: astreg\r\n\r\n")
        chunks: list[bytes] = []
        data = b""
        while b"Authentication accepted\r\n\r\n" not in data:
            chunks.append(await asyncio.wait_for(reader.read(65536), 5))
            data += chunks[-1]
        await sim.register(1, "node1", user_agent="x")
        await sim.inject_fault("node1", "utf8")
        while b"\xe7\x94\xb5\xe8\xaf\x9d" not in data or not data.endswith(b"\r\n\r\n"):
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk
            chunks.append(chunk)
            data += chunk
        writer.close()
        assert max(len(c) for c in chunks) < 64  # really split (the message is ~200 bytes)
        # some chunk boundary falls inside a multi-byte UTF-8 character
        offsets = []
        pos = 0
        for c in chunks:
            pos += len(c)
            offsets.append(pos)
        assert any(0x80 <= data[o] < 0xC0 for o in offsets if o < len(data))
        msgs, rest = split_messages(data)
        assert rest == b""
        assert "UserAgent: Téléphone ☎ 电话" in msgs[-1].decode("utf-8")
        assert [dict(parse_messages(m)).get("ContactStatus") for m in msgs if b"Event: ContactStatus" in m][:2] == [
            "NonQualified", "Reachable"]


async def test_injected_malformed_events_reach_clients_and_change_nothing() -> None:
    async with Simulator(cfg()) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            await c.login()
            await c.read(2)
            before = sim.truth()
            for kind in ("oversized", "missing_headers", "broken_utf8", "unknown_enum"):
                await sim.inject_fault("node1", kind)
            msgs = await c.read(4, timeout=5)
            assert len(msgs) == 4
            assert len(msgs[0]) > 100_000
            assert dict(parse_messages(msgs[1])) == {"Event": "ContactStatus", "Privilege": "system,all",
                                                     "SystemName": "node1", "ContactStatus": "Reachable"}
            assert b"\xff\xfe" in msgs[2]
            try:
                msgs[2].decode("utf-8")
                raise AssertionError("broken UTF-8 expected")
            except UnicodeDecodeError:
                pass
            assert dict(parse_messages(msgs[3]))["ContactStatus"] == "Teleported"
            assert sim.truth() == before
        finally:
            await c.close()
        assert await healthy(sim)


async def test_client_that_never_reads_is_dropped_and_blocks_nobody() -> None:
    async with Simulator(cfg(client_buffer_limit=64 * 1024, security_events=False)) as sim:
        slow = socket.create_connection(("127.0.0.1", sim.ports["node1"]))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"Action: Login\r\nUsername: astreg\r\nSecret: astreg\r\n\r\n")
        good = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            await good.login()
            await good.read(1)
            received = 0
            for round_ in range(400):  # ~100 kB per round until the kernel buffers are full too
                await sim.register(1 + round_ % 20, "node1", port=6000 + round_, qualify=False)
                await sim.inject_fault("node1", "oversized")
                received += len(await good.read(10**6, timeout=0.01))
                if sim.stats()["node1"]["slow_clients_dropped"]:
                    break
            assert sim.stats()["node1"]["slow_clients_dropped"] == 1
            assert sim.stats()["node1"]["clients"] == 1  # only the good client is left
            await sim.register(1, "node1", port=9999, qualify=False)
            received += len(await good.read(10**6, timeout=0.3))
            assert received > 100  # the reading client kept getting everything meanwhile
        finally:
            slow.close()
            await good.close()
        assert await healthy(sim)


async def test_garbage_half_lines_and_disconnects_mid_action_never_hurt_the_node() -> None:
    async with Simulator(cfg()) as sim:
        port = sim.ports["node1"]
        bad_inputs = [
            b"\x00\xff\xfe garbage without colon\r\n\r\n",
            b"Action: Login\r\nUsername: astreg\r\nSecr",  # half line, then disconnect
            b"Action: PJSIPShowContacts\r\n",  # action never finished
            b"\r\n\r\n\r\n:::\r\n: :\r\n\r\n",
            b"Action: DBGet\r\nFamily: \xc3\x28\r\n\r\n",  # invalid UTF-8 in a value
            b"A" * 200_000,  # one endless line: client dropped
            b"Action: Login\r\nUsername: astreg\r\nSecret: astreg\r\n\r\nAction: PJSIPShowEndpoints\r\n\r\n",  # leaves mid-answer
        ]
        for raw in bad_inputs:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(raw)
            await w.drain()
            # A moment for the node to start on the input, then the disconnect: a client leaving
            # mid-input is the stimulus under test, not a condition to wait for.
            await asyncio.sleep(0.02)
            w.close()
        # garbage before login gets an error response, the connection stays usable
        c = await RawAmi.connect("127.0.0.1", port)
        try:
            await c.read(1)
            await c.send(b"no colon here\r\nAction: Bogus\r\n\r\n")
            assert dict(parse_messages((await c.read(1))[0]))["Message"] == "Permission denied"
            await c.send(b"Foo: bar\r\n\r\n")
            assert dict(parse_messages((await c.read(1))[0]))["Message"] == "Missing action in request"
        finally:
            await c.close()
        await sim.register(2, "node1")
        assert await healthy(sim)
        assert sim.stats()["node1"]["bad_input"] >= 1


async def test_bad_secret_answers_late_then_closes_and_md5_login_works() -> None:
    import hashlib

    async with Simulator(cfg()) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        login = await c.login(secret="wrong")
        assert dict(login[0])["Message"] == "Authentication failed"
        assert await c.closed()
        c2 = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            await c2.read(1)
            await c2.action(("Action", "Challenge"), ("AuthType", "MD5"))
            challenge = dict(parse_messages((await c2.read(1))[0]))["Challenge"]
            key = hashlib.md5((challenge + "astreg").encode()).hexdigest()  # noqa: S324 - AMI protocol
            await c2.action(("Action", "Login"), ("AuthType", "MD5"), ("Username", "astreg"), ("Key", key))
            assert dict(parse_messages((await c2.read(1))[0]))["Message"] == "Authentication accepted"
        finally:
            await c2.close()


async def test_timestamps_and_no_system_name_options() -> None:
    async with Simulator(cfg(timestamps=True, system_name=False, security_events=False)) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        try:
            await c.login()
            await c.read(1)
            await sim.register(1, "node1", qualify=False)
            h = parse_messages((await c.read(1))[0])
            assert [k for k, _ in h] == ["Event", "Privilege", "Timestamp", "ChannelType", "Peer", "PeerStatus"]
            sec, _, usec = dict(h)["Timestamp"].partition(".")
            assert sec.isdigit() and len(usec) == 6
        finally:
            await c.close()


async def test_journal_keeps_what_each_session_was_sent() -> None:
    async with Simulator(cfg(timestamps=True, journal=True, security_events=False)) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        await c.login()
        await c.read(1)
        await sim.register(1, "node1", qualify=False)
        sent = [parse_messages(m) for m in await c.read(3)]  # PeerStatus, ContactStatus, DeviceStateChange
        await c.close()
        await until(lambda: not sim.node("node1").sessions, 5, what="the simulator to see the session end")
        await sim.register(2, "node1", qualify=False)  # after the session ended: not in its journal
        journal = sim.journal()
        assert journal["enabled"] is True
        (session,) = journal["nodes"]["node1"]
        assert session["closed_at"] is not None and session["closed_at"] >= session["last_rx"] >= session["opened_at"]
        assert session["gaps"] == []  # the client never went quiet for over a second
        got = [tuple(e[1:]) for e in session["events"]]
        want = []
        for h in map(dict, sent):
            sec, _, usec = h["Timestamp"].partition(".")
            ms = int(sec) * 1000 + int(usec[:3])
            if h["Event"] == "ContactStatus":
                want.append(("ContactStatus", "PJSIP/" + h["EndpointName"], h["ContactStatus"], h["URI"], ms))
            elif h["Event"] == "PeerStatus":
                want.append(("PeerStatus", h["Peer"], h["PeerStatus"], "", ms))
            else:
                want.append(("DeviceStateChange", h["Device"], h["State"], "", ms))
        assert got == want and len(got) == 3
        assert all(e[2] == "PJSIP/1001" for e in session["events"])


async def test_no_journal_unless_asked() -> None:
    async with Simulator(cfg(timestamps=True)) as sim:
        c = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
        await c.login()
        await sim.register(1, "node1", qualify=False)
        await c.read(2)
        await c.close()
        assert sim.journal() == {"enabled": False, "nodes": {"node1": []}}
