"""A tiny scripted AMI server for producer tests that need exact bytes on the wire.

It answers Login/CoreSettings/Ping and the snapshot list actions from a contact table the test
controls, and lets the test push raw bytes (split anywhere, broken UTF-8, garbage) to the
connected client. The full multi-node simulator lives in ``producers/simulator``; this one
exists to control framing byte by byte.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from tests.support.wait import until


@dataclass
class FakeAmi:
    system_name: str = "node1"
    contacts: list[dict[str, str]] = field(default_factory=list)
    devices: list[tuple[str, str]] = field(default_factory=list)
    answer_ping: bool = True
    secret: str = "s"
    challenge: str = "840415273"
    failed_logins: int = 0
    md5_logins: int = 0
    port: int = 0
    logins: int = 0
    _server: asyncio.AbstractServer | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FakeAmi:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_login(self, count: int = 1, timeout: float = 10) -> None:
        await until(lambda: self.logins >= count, timeout, interval=0.02,
                    what=f"{count} login(s) at the fake AMI")

    async def push(self, data: bytes, *, pause: float = 0.0) -> None:
        """Send raw bytes to every connected client (pause > 0: one write per byte)."""
        for w in list(self._writers):
            if pause:
                for i in range(len(data)):
                    w.write(data[i : i + 1])
                    await w.drain()
                    await asyncio.sleep(pause)  # the fragmented delivery is the stimulus, not a wait
            else:
                w.write(data)
                await w.drain()

    async def event(self, **headers: str) -> None:
        await self.push(_frame(headers))

    def drop_clients(self) -> None:
        for w in self._writers:
            w.transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                action = {}
                for line in raw.decode().split("\r\n"):
                    if ": " in line:
                        k, v = line.split(": ", 1)
                        action[k.lower()] = v
                await self._answer(writer, action)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if writer in self._writers:
                self._writers.remove(writer)
            writer.close()

    def _login_ok(self, a: dict[str, str]) -> bool:
        if a.get("authtype", "").lower() == "md5":
            ok = a.get("key") == _md5(self.challenge + self.secret)
            self.md5_logins += ok
            return ok
        return a.get("secret") == self.secret

    async def _answer(self, w: asyncio.StreamWriter, a: dict[str, str]) -> None:
        aid = a.get("actionid", "")
        name = a.get("action", "").lower()
        out: list[dict[str, str]] = []
        if name == "challenge":
            out.append({"Response": "Success", "ActionID": aid, "Challenge": self.challenge})
        elif name == "login" and not self._login_ok(a):
            self.failed_logins += 1
            out.append({"Response": "Error", "ActionID": aid, "Message": "Authentication failed"})
        elif name == "login":
            self.logins += 1
            out.append({"Response": "Success", "ActionID": aid, "Message": "Authentication accepted"})
            out.append({"Event": "FullyBooted", "Privilege": "system,all", "Uptime": "10", "LastReload": "10",
                        "Status": "Fully Booted"})
        elif name == "coresettings":
            out.append({"Response": "Success", "ActionID": aid, "AMIversion": "11.0.0",
                        "AsteriskVersion": "22.10.1", "SystemName": self.system_name})
        elif name == "ping":
            if not self.answer_ping:
                return
            out.append({"Response": "Success", "ActionID": aid, "Ping": "Pong", "Timestamp": "1.0"})
        elif name == "pjsipshowcontacts":
            if not self.contacts:
                out.append({"Response": "Error", "ActionID": aid, "Message": "No Contacts found"})
            else:
                out.append({"Response": "Success", "ActionID": aid, "EventList": "start",
                            "Message": "A listing of Contacts follows, presented as ContactList events"})
                for c in self.contacts:
                    out.append({"Event": "ContactList", "ActionID": aid, **c})
                out.append({"Event": "ContactListComplete", "ActionID": aid, "EventList": "Complete",
                            "ListItems": str(len(self.contacts))})
        elif name == "devicestatelist":
            out.append({"Response": "Success", "ActionID": aid, "EventList": "start",
                        "Message": "Device State Changes will follow"})
            for dev, state in self.devices:
                out.append({"Event": "DeviceStateChange", "ActionID": aid, "Device": dev, "State": state})
            out.append({"Event": "DeviceStateListComplete", "ActionID": aid, "EventList": "Complete",
                        "ListItems": str(len(self.devices))})
        else:
            out.append({"Response": "Error", "ActionID": aid,
                        "Message": f"Invalid/unknown command: {a.get('action')}. Use Action: ListCommands to show available commands."})
        for m in out:
            w.write(_frame(m))
        await w.drain()


def _md5(text: str) -> str:
    import hashlib

    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - AMI's challenge protocol


def _frame(headers: dict[str, str]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"


def contact_row(endpoint: str, uri: str, node: str = "node1", status: str = "NonQualified",
                user_agent: str = "ua", expires: int = 1795742196) -> dict[str, str]:
    """A ContactList row shaped like Asterisk 22's."""
    return {
        "ObjectType": "contact", "ObjectName": f"{endpoint};@abc", "ViaAddr": "127.0.0.1",
        "QualifyTimeout": "3.000000", "CallId": "x", "RegServer": node, "Endpoint": endpoint,
        "ViaPort": "5060", "Uri": uri, "UserAgent": user_agent, "ExpirationTime": str(expires),
        "Status": status, "RoundtripUsec": "N/A",
    }
