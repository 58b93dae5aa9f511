"""``astreg bench`` section ``ami``: AMI framing, :mod:`astreg.amiwire` beside its baseline.

Two measures, each run on the same bytes by astreg's framer and by the baseline, one after the
other in this process:

* frames/s: ContactStatus events as Asterisk 22 writes them, arriving in 4 KiB reads, framed and
  their headers read (:func:`astreg.amiwire.header_map`);
* one 1 MiB message (a long ``Command`` output) arriving in 4 KiB reads: the time until it is
  framed.

The baseline is the framing astreg used before :mod:`astreg.amiwire`: the pending text is
decoded incrementally and split on ``"\\r\\n\\r\\n"`` again on every read, so a large message
costs time quadratic in its size.
"""

from __future__ import annotations

import codecs
import time
from pathlib import Path
from typing import Any

from astreg.amiwire import AmiFramer, header_map
from astreg.settings import KafkaSettings

__all__ = ["run", "resplit_frames", "amiwire_frames"]

CHUNK = 4096
EVENT = (b"Event: ContactStatus\r\nPrivilege: system,all\r\nSystemName: node1\r\n"
         b"URI: sip:1001@192.168.1.10:5060;ob\r\nContactStatus: Reachable\r\nAOR: 1001\r\n"
         b"EndpointName: 1001\r\nRoundtripUsec: 1204\r\n\r\n")


def resplit_frames(chunks: list[bytes]) -> int:
    """The baseline framer: incremental decode, whole pending text split on every read."""
    decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    pending, n = "", 0
    for chunk in chunks:
        text = pending + decoder.decode(chunk)
        frames = text.split("\r\n\r\n")
        pending = frames.pop()
        for frame in frames:
            msg: dict[str, str] = {}
            for line in frame.split("\r\n"):
                key, sep, value = line.partition(": ")
                if sep:
                    msg[key.strip()] = value
            n += bool(msg)
    return n


def amiwire_frames(chunks: list[bytes]) -> int:
    framer, n = AmiFramer(limit=4 << 20), 0
    for chunk in chunks:
        for frame in framer.feed(chunk):
            n += bool(header_map(frame))
    return n


def _chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)]


def _timed(fn: Any, chunks: list[bytes]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn(chunks)
    return n, time.perf_counter() - start


async def run(quick: bool, work: Path, kafka: KafkaSettings | None = None) -> dict[str, Any]:
    events = 50_000 if quick else 500_000
    stream = _chunks(EVENT * events)
    big = _chunks(b"Response: Follows\r\n" + b"".join(b"Output: %06d\r\n" % i for i in range(70_000))[: 1 << 20]
                  + b"\r\n\r\n")
    n_new, t_new = _timed(amiwire_frames, stream)
    n_old, t_old = _timed(resplit_frames, stream)
    b_new, tb_new = _timed(amiwire_frames, big)
    b_old, tb_old = _timed(resplit_frames, big)
    if (n_new, b_new) != (events, 1) or (n_old, b_old) != (events, 1):
        raise RuntimeError(f"framers disagree: amiwire {n_new}/{b_new}, baseline {n_old}/{b_old}")
    return {
        "frames": events,
        "amiwire_frames_per_s": round(events / t_new),
        "baseline_frames_per_s": round(events / t_old),
        "frames_ratio_vs_baseline": round(t_old / t_new, 2),
        "one_mib_frame_amiwire_ms": round(tb_new * 1000, 2),
        "one_mib_frame_baseline_ms": round(tb_old * 1000, 1),
        "one_mib_frame_ratio_vs_baseline": round(tb_old / tb_new, 1),
    }
