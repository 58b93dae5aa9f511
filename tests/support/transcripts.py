"""Parser of the annotated AMI transcripts (tests/fixtures/ami/*.txt) and AMI shape comparison.

    frames = load_transcript(path)       # [Frame(direction='RX'|'TX'|'NOTE'|'CLOSED', node, time, ...)]
    raw = raw_rx(path)                   # the exact bytes Asterisk sent (.rx.raw next to the .txt)

Each ``#@ KIND node time +rel [text]`` annotation line is followed by the message bytes verbatim
(CRLF kept). ``shape()`` turns a message into what must match between a recording and the
simulator: message type, header names in order, literal enum-like values and the *format* of
values that legitimately differ (ports, ids, times), so comparisons are by format, not literally.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Frame", "load_transcript", "raw_rx", "parse_messages", "split_messages", "shape", "value_format",
           "FIXTURES"]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ami"

_ANNOT = re.compile(rb"^#@ (RX|TX|NOTE|CLOSED) (\S+) (\S+) \+([0-9.]+)(?: (.*))?\n", re.M)


@dataclass
class Frame:
    direction: str  # RX, TX, NOTE or CLOSED
    node: str
    time: str  # UTC wall clock, ISO 8601
    offset: float  # seconds since the capture started
    raw: bytes = b""  # message bytes exactly as sent/received (empty for NOTE/CLOSED)
    note: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    @property
    def kind(self) -> str:
        """``Event: X`` / ``Response: X`` / ``Action: X`` / ``Banner``."""
        if not self.headers:
            return "Banner" if self.raw.startswith(b"Asterisk Call Manager") else ""
        k, v = self.headers[0]
        return f"{k}: {v}"


def parse_messages(raw: bytes) -> list[tuple[str, str]]:
    """Ordered (header, value) pairs of one message (the banner has none)."""
    text = raw.decode("utf-8", "surrogateescape")
    if text.startswith("Asterisk Call Manager/"):
        return []
    out = []
    for line in re.split(r"\r?\n", text):
        if not line:
            continue
        k, _sep, v = line.partition(":")
        out.append((k, v[1:] if v.startswith(" ") else v))
    return out


def load_transcript(path: str | Path) -> list[Frame]:
    data = Path(path).read_bytes()
    marks = list(_ANNOT.finditer(data))
    frames = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(data)
        payload = data[m.end() : end]
        kind = m.group(1).decode()
        f = Frame(kind, m.group(2).decode(), m.group(3).decode(), float(m.group(4)),
                  note=(m.group(5) or b"").decode("utf-8", "replace"))
        if kind in ("RX", "TX"):
            f.raw = payload
            f.headers = parse_messages(payload)
        frames.append(f)
    return frames


def raw_rx(path: str | Path) -> bytes:
    p = Path(path)
    name = p.name.removesuffix(".txt").removesuffix(".rx.raw")
    return (p.parent / f"{name}.rx.raw").read_bytes()


def split_messages(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete messages in a received byte stream (banner line, then CRLF CRLF blocks) + the rest."""
    out = []
    if data.startswith(b"Asterisk Call Manager/"):
        nl = data.index(b"\r\n") + 2 if b"\r\n" in data else -1
        if nl < 0:
            return [], data
        out.append(data[:nl])
        data = data[nl:]
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return out, data
        out.append(data[: end + 4])
        data = data[end + 4 :]


# Values compared literally: they are what consumers switch on.
LITERAL = {"event", "response", "privilege", "contactstatus", "peerstatus", "state", "status", "message", "eventlist",
           "channeltype", "objecttype", "severity", "service", "eventversion", "usingpassword", "events", "ping",
           "shutdown", "restart", "amiversion", "asteriskversion", "systemname", "qualifytimeout", "qualify2xxonly",
           "authenticatequalify", "prunonboot", "transport", "devicestate", "challenge_", "requesttype"}
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def value_format(value: str) -> str:
    """The format of a value: ids and numbers abstracted, punctuation and words kept."""
    v = _UUID.sub("UUID", value)
    v = re.sub(r"\b[0-9a-f]{32}\b", "MD5", v)
    v = re.sub(r"0x[0-9a-f]+", "0xH", v)
    return re.sub(r"\d+", "9", v)


def shape(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v if k.lower() in LITERAL else value_format(v)) for k, v in headers)
