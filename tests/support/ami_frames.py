"""Read the recorded AMI transcripts (``tests/fixtures/ami/*.rx.raw``) as panoramisk Messages.

The ``.rx.raw`` files are the exact bytes Asterisk sent; a message ends with CRLF CRLF and the
first line is the banner. Used by the producer's unit tests to replay real AMI without a PBX.
"""

from __future__ import annotations

from pathlib import Path

from panoramisk.message import Message

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ami"


def raw_files() -> list[Path]:
    return sorted(FIXTURES.glob("*.rx.raw"))


def frames(data: bytes) -> list[str]:
    """Message texts of a raw AMI byte stream (the banner line dropped)."""
    text = data.decode("utf-8")
    if text.startswith("Asterisk Call Manager/"):
        text = text.split("\r\n", 1)[1]
    parts = text.split("\r\n\r\n")
    return [p.strip() for p in parts if p.strip()]


def messages(path: Path | str) -> list[Message]:
    """Every message (events and responses) of a transcript, in order."""
    path = Path(path)
    if not path.is_absolute():
        path = FIXTURES / path
    out = []
    for frame in frames(path.read_bytes()):
        msg = Message.from_line(frame)
        if msg is not None:
            out.append(msg)
    return out


def events(path: Path | str, name: str | None = None) -> list[Message]:
    """The ``Event:`` messages of a transcript, optionally only those named ``name``."""
    return [m for m in messages(path) if "Event" in m and (name is None or m["Event"] == name)]
