"""AMI framing, once for every part that speaks AMI: the producer, the AstDB sink, the simulator.

An AMI message is ``Key: Value`` lines closed by an empty line; the server starts with a banner
line (``Asterisk Call Manager/<version>``) that has no empty line after it. Lines end in CRLF
(Asterisk writes them so; it also accepts a bare LF from clients, and so does this module).

:class:`AmiFramer` is incremental and linear in the bytes received: text is decoded from UTF-8
as it arrives (an incremental decoder keeps a character split across TCP reads), each read is
searched once for a message's end (with the three characters before it, for an end split across
reads), and a frame's text is joined once, when its end has come. Invalid UTF-8 becomes lone
surrogates (``surrogateescape``) by default, so a caller can reject the message and still report
its original bytes. A frame longer than ``limit`` characters is reported to ``on_oversize``
(default: raise :class:`~astreg.errors.FrameTooLarge`) and skipped up to its end.

One rule reads a frame's headers, the one Asterisk's own ``astman_get_header`` follows: the key
is exactly what precedes the first ``:``, blanks after the ``:`` are skipped, a line without
``:`` is no header, and when a header repeats, the first one is *the* value (:func:`header_map`);
:func:`header_pairs` keeps every line in order for the few messages whose repeats matter
(``Output:`` lines of a Command response).
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

from astreg.errors import FrameTooLarge

__all__ = ["AmiFramer", "header_pairs", "header_map", "MAX_FRAME", "BANNER_PREFIX"]

BANNER_PREFIX = "Asterisk Call Manager/"
MAX_FRAME = 1 << 20  # characters (bytes, for ASCII): no AMI message astreg reads comes close


def _raise_oversize(prefix: str, limit: int) -> None:
    raise FrameTooLarge(f"AMI message longer than {limit} characters: {prefix[:80]!r}")


class AmiFramer:
    """Feed bytes, get complete frames (the text of a message, without its closing empty line).

    ``banner``: the first line is the server's banner, not part of a message; its version is
    then in :attr:`version`. ``lf``: lines may end in a bare LF too (what a server accepts from
    clients); frames then come with LF line ends. :attr:`scanned` counts the characters searched
    for a message's end: each once, plus at most three per read (an end split across reads),
    which keeps the framing linear in the bytes received.
    """

    __slots__ = ("_decoder", "_parts", "_size", "_tail", "_carry", "_skipping", "_banner", "_end", "_lf", "limit",
                 "on_oversize", "version", "scanned")

    def __init__(self, *, banner: bool = False, limit: int = MAX_FRAME, errors: str = "surrogateescape",
                 lf: bool = False, on_oversize: Callable[[str, int], None] = _raise_oversize):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors)
        self._parts: list[str] = []  # text of the frame being received, no end in it
        self._size = 0  # characters in _parts
        self._tail = ""  # the last three of them: an end may begin there
        self._carry = ""  # lf: a CR at the end of the last read, waiting for its LF
        self._skipping = False  # after an oversize frame, until its end
        self._banner = banner
        self._lf = lf
        self._end = "\n\n" if lf else "\r\n\r\n"
        self.limit = limit
        self.on_oversize = on_oversize
        self.version: str | None = None
        self.scanned = 0

    def feed(self, data: bytes) -> list[str]:
        """The frames ``data`` completes, in order.

        An ``on_oversize`` that raises ends this call: frames of the same read are then lost,
        which suits a caller that closes the link on it.
        """
        text = self._decoder.decode(data)
        if self._lf:
            text = self._carry + text
            self._carry = ""
            if text.endswith("\r"):
                text, self._carry = text[:-1], "\r"
            text = text.replace("\r\n", "\n")
        if self._banner:
            text = self._take_banner(text)
            if self._banner:
                return self._bound([])
        # Only the last three characters received before can begin an end split across reads,
        # so each character is searched once.
        tail = self._tail
        buf = tail + text if tail else text
        self.scanned += len(buf)
        pieces = buf.split(self._end)
        if len(pieces) == 1:
            if text:
                self._parts.append(text)
                self._size += len(text)
                self._tail = buf[-3:]
            return self._bound([])
        # The first piece ends the frame received so far, whose last characters are the tail.
        head = "".join(self._parts)
        last = pieces.pop()
        self._parts, self._size, self._tail = ([last] if last else []), len(last), last[-3:]
        if self._skipping:  # the rest of a frame already reported as oversize
            self._skipping = False
            pieces[0] = ""
        elif head:
            pieces[0] = (head[: len(head) - len(tail)] if tail else head) + pieces[0]
        limit = self.limit
        out = [f for f in pieces if f and f[0] not in "\r\n" and len(f) <= limit]
        if len(out) < len(pieces):  # an empty piece, stray line ends or an oversize frame
            out = []
            for frame in pieces:
                frame = frame.lstrip("\r\n")
                if len(frame) > limit:
                    self.on_oversize(frame[:200], limit)
                elif frame:
                    out.append(frame)
        return self._bound(out)

    def _take_banner(self, text: str) -> str:
        """Wait for the banner line; the text after it."""
        nl = text.find("\n")
        self.scanned += len(text) if nl < 0 else nl + 1
        if nl < 0:
            if text:
                self._parts.append(text)
                self._size += len(text)
                self._tail = (self._tail + text)[-3:]
            return ""
        line = "".join(self._parts) + text[:nl]
        self._parts, self._size, self._tail = [], 0, ""
        self._banner = False
        self.version = line.partition("/")[2].strip()
        return text[nl + 1:]

    def _bound(self, out: list[str]) -> list[str]:
        """Report and skip a frame grown past the limit (a banner line that long is junk)."""
        if self._size > self.limit and not self._skipping:
            prefix = "".join(self._parts)[:200]
            self._skipping = True
            self._banner = False
            self._keep_tail()
            self.on_oversize(prefix, self.limit)
        elif self._skipping and self._size > 3:
            self._keep_tail()  # the oversize frame is not kept
        return out

    def _keep_tail(self) -> None:
        tail = self._tail
        self._parts, self._size = ([tail] if tail else []), len(tail)

    @property
    def pending(self) -> int:
        """Characters received and not yet part of a complete frame."""
        return self._size


def _lines(frame: str) -> list[str]:
    """A frame's lines: CRLF ends from a server, LF ends from an ``lf`` framer."""
    return frame.split("\r\n") if "\r" in frame else frame.split("\n")


def header_pairs(frame: str) -> tuple[list[tuple[str, str]], int]:
    """Every header line of a frame in order, and how many lines were not headers."""
    pairs: list[tuple[str, str]] = []
    garbage = 0
    for line in _lines(frame):
        key, sep, value = line.partition(":")
        if sep:
            pairs.append((key, value.lstrip(" \t")))
        elif line.strip():
            garbage += 1
    return pairs, garbage


def header_map(frame: str) -> dict[str, str]:
    """The headers of a frame, the first of a repeated one winning.

    Asterisk reads a message's headers so (``astman_get_header`` returns the first match), so
    astreg reads what the node itself would read from the same message.
    """
    out: dict[str, str] = {}
    for line in frame.split("\r\n" if "\r" in frame else "\n"):  # _lines, inline (once per message)
        key, sep, value = line.partition(":")
        if sep and key not in out:
            out[key] = value.lstrip(" \t")
    return out
