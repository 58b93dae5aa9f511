"""A raw-socket AMI test client: exact bytes in, whole messages out (no library in between)."""

from __future__ import annotations

import asyncio
import contextlib

from .transcripts import parse_messages, split_messages

__all__ = ["RawAmi"]


class RawAmi:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.buf = b""
        self.eof = False
        self.raw = b""  # everything received, for byte-level checks

    @classmethod
    async def connect(cls, host: str, port: int) -> RawAmi:
        r, w = await asyncio.open_connection(host, port, limit=16 * 1024 * 1024)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def action(self, *headers: tuple[str, str]) -> None:
        await self.send(("".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode())

    async def read(self, count: int, timeout: float = 3.0) -> list[bytes]:
        """Exactly ``count`` messages (fewer only on EOF/timeout)."""
        out: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msgs, self.buf = split_messages(self.buf) if self.buf else ([], b"")
            # put back what we do not need yet
            if len(out) + len(msgs) > count:
                keep = count - len(out)
                self.buf = b"".join(msgs[keep:]) + self.buf
                msgs = msgs[:keep]
            out += msgs
            if len(out) >= count or self.eof:
                return out
            left = deadline - loop.time()
            if left <= 0:
                return out
            try:
                data = await asyncio.wait_for(self.reader.read(65536), left)
            except TimeoutError:
                return out
            if not data:
                self.eof = True
            self.raw += data
            self.buf += data

    async def read_all(self, quiet: float = 0.15) -> list[bytes]:
        """Every message until nothing arrives for ``quiet`` seconds."""
        out: list[bytes] = []
        while True:
            got = await self.read(10**9, timeout=quiet)
            out += got
            if not got or self.eof:
                return out

    async def login(self, user: str = "astreg", secret: str = "astreg", events: str = "on") -> list[list[tuple[str, str]]]:
        await self.read(1)  # banner
        await self.action(("Action", "Login"), ("Username", user), ("Secret", secret), ("Events", events))
        first = await self.read(1)
        return [parse_messages(m) for m in first]

    async def closed(self, timeout: float = 3.0) -> bool:
        await self.read(10**9, timeout=timeout)
        return self.eof

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
