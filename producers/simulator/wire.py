"""AMI wire format, pure: encode messages byte-for-byte like Asterisk 22, parse client actions.

A message is ``Key: Value`` lines ending in CRLF closed by an empty line. ``ActionParser`` is an
incremental parser for what clients send: it never raises on garbage, it only reports it.
"""

from __future__ import annotations

from collections.abc import Iterable

from astreg.amiwire import AmiFramer, header_pairs

__all__ = ["BANNER", "encode", "ActionParser", "Action", "MAX_ACTION_BYTES"]

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
# Asterisk's own input buffer is 1 KiB per line; we accept more but bound a whole action.
MAX_ACTION_BYTES = 64 * 1024


def encode(headers: Iterable[tuple[str, str]]) -> bytes:
    """One AMI message: ``Key: Value\\r\\n`` lines plus the closing empty line."""
    return ("".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n").encode("utf-8", "surrogateescape")


class Action:
    """One action a client sent: ordered headers, case-insensitive lookup like Asterisk's astman_get_header."""

    __slots__ = ("headers", "_lower")

    def __init__(self, headers: list[tuple[str, str]]):
        self.headers = headers
        self._lower: dict[str, str] = {}
        for k, v in headers:
            self._lower.setdefault(k.lower(), v)

    def get(self, name: str, default: str = "") -> str:
        return self._lower.get(name.lower(), default)

    def has(self, name: str) -> bool:
        return name.lower() in self._lower

    @property
    def name(self) -> str:
        return self.get("Action").strip()


class ActionParser:
    """Feed bytes, get complete actions; lines end in LF (CR optional) as Asterisk accepts.

    Framing and header rule are :mod:`astreg.amiwire`'s, like every part of astreg that speaks AMI.
    """

    def __init__(self, limit: int = MAX_ACTION_BYTES):
        self._framer = AmiFramer(limit=limit, errors="replace", lf=True)
        self.garbage_lines = 0

    def feed(self, data: bytes) -> list[Action]:
        """Complete actions in ``data``; raises ValueError when one action grows past the limit."""
        out: list[Action] = []
        for frame in self._framer.feed(data):
            headers, garbage = header_pairs(frame)
            self.garbage_lines += garbage
            if headers:
                out.append(Action(headers))
        return out
