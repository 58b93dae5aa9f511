"""astreg.amiwire: one AMI framing for the producer, the AstDB sink and the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astreg.amiwire import AmiFramer, header_map, header_pairs
from astreg.errors import FrameTooLarge
from tests.support.ami_frames import frames, raw_files

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
STATUS = (b"Event: ContactStatus\r\nPrivilege: system,all\r\nURI: sip:j\xc3\xb6rg@10.0.0.1:5060\r\n"
          b"ContactStatus: Reachable\r\nEndpointName: j\xc3\xb6rg\r\n\r\n")


def feed_in(framer: AmiFramer, data: bytes, cuts: list[int]) -> list[str]:
    out, pos = [], 0
    for n in cuts:
        out += framer.feed(data[pos:pos + n])
        pos += n
    return out + framer.feed(data[pos:])


def test_banner_then_frames_without_their_closing_empty_line() -> None:
    f = AmiFramer(banner=True)
    frames = f.feed(BANNER + b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n" + STATUS)
    assert f.version == "11.0.0"
    assert frames[0] == "Response: Success\r\nMessage: Authentication accepted"
    assert header_map(frames[1])["EndpointName"] == "jörg"


@settings(max_examples=200)
@given(st.lists(st.integers(1, 40), max_size=30))
def test_every_split_gives_what_the_whole_gives(cuts: list[int]) -> None:
    """A character split across reads (ö is two bytes) and a CRLF split between CR and LF too."""
    data = BANNER + STATUS * 3 + b"Response: Success\r\nPing: Pong\r\n\r\n"
    whole = AmiFramer(banner=True).feed(data)
    assert len(whole) == 4
    assert feed_in(AmiFramer(banner=True), data, cuts) == whole


def test_recorded_transcripts_frame_the_same_whole_and_byte_by_byte() -> None:
    for path in raw_files():
        data = path.read_bytes()
        whole = AmiFramer(banner=data.startswith(b"Asterisk Call Manager/")).feed(data)
        assert [f.strip() for f in whole] == frames(data), path  # splitting the whole transcript at once
        one = AmiFramer(banner=data.startswith(b"Asterisk Call Manager/"))
        assert [fr for i in range(len(data)) for fr in one.feed(data[i:i + 1])] == whole, path


def test_one_rule_for_headers_first_wins_blanks_skipped_and_lf_framing() -> None:
    frame = "Action: Command\r\nCommand: core show uptime\r\nOutput: a\r\nOutput:  b\r\nno colon\r\nEmpty:"
    assert header_map(frame) == {"Action": "Command", "Command": "core show uptime", "Output": "a", "Empty": ""}
    pairs, garbage = header_pairs(frame)
    assert [v for k, v in pairs if k == "Output"] == ["a", "b"] and garbage == 1
    assert header_map("URI: sip:1001@10.0.0.1:5060") == {"URI": "sip:1001@10.0.0.1:5060"}
    (lf_frame,) = AmiFramer(lf=True).feed(b"Action: Login\nUsername: a\r\nSecret: b: c\r\n\n")
    assert header_map(lf_frame) == {"Action": "Login", "Username": "a", "Secret": "b: c"}


def test_invalid_utf8_is_kept_as_surrogates_for_the_dead_letter() -> None:
    (frame,) = AmiFramer().feed(b"Event: X\r\nAOR: 10\xff01\r\n\r\n")
    assert frame.encode("utf-8", "surrogateescape") == b"Event: X\r\nAOR: 10\xff01"


def test_an_oversize_frame_is_reported_then_skipped_to_its_end() -> None:
    reported: list[tuple[str, int]] = []
    f = AmiFramer(limit=100, on_oversize=lambda prefix, limit: reported.append((prefix, limit)))
    got = f.feed(b"Event: Big\r\nData: " + b"x" * 150)
    got += f.feed(b"x" * 500 + b"\r\nMore: y\r\n\r\nEvent: Small\r\n\r\n")
    assert got == ["Event: Small"]
    assert len(reported) == 1 and reported[0][0].startswith("Event: Big") and reported[0][1] == 100
    with pytest.raises(FrameTooLarge):
        AmiFramer(limit=100).feed(b"X" * 200)


def test_an_oversize_frame_completed_in_one_read_is_reported_too() -> None:
    reported: list[str] = []
    f = AmiFramer(limit=100, on_oversize=lambda prefix, limit: reported.append(prefix))
    got = f.feed(b"Event: Small\r\n\r\nEvent: Big\r\nData: " + b"x" * 150 + b"\r\n\r\nEvent: Next\r\n\r\n")
    assert got == ["Event: Small", "Event: Next"]
    assert len(reported) == 1 and reported[0].startswith("Event: Big")


def test_a_banner_line_is_searched_once_and_a_junk_one_is_bounded() -> None:
    f = AmiFramer(banner=True)
    data = BANNER + STATUS
    got = [fr for i in range(len(data)) for fr in f.feed(data[i:i + 1])]
    assert f.version == "11.0.0" and len(got) == 1
    assert len(data) <= f.scanned <= len(data) + 3 * len(STATUS)  # 3 per read after the banner
    reported: list[str] = []
    junk = AmiFramer(banner=True, limit=200, on_oversize=lambda prefix, limit: reported.append(prefix))
    got = junk.feed(b"J" * 199) + junk.feed(b"J" * 99) + junk.feed(b"J\r\n\r\n" + STATUS)
    assert reported == ["J" * 200] and junk.version is None
    assert [header_map(fr)["EndpointName"] for fr in got] == ["jörg"]


def test_a_large_frame_in_small_chunks_is_searched_once() -> None:
    """Linear: each byte of a 1 MiB frame arriving in 4 KiB reads is searched for the message's end
    once, plus at most three bytes per read (an end split across reads)."""
    body = b"".join(b"Output: %06d\r\n" % i for i in range(70_000))[: 1 << 20]
    data = b"Response: Follows\r\n" + body + b"\r\n"  # the body ends its last line
    f = AmiFramer(limit=2 << 20)
    frames = [fr for i in range(0, len(data), 4096) for fr in f.feed(data[i:i + 4096])]
    assert len(frames) == 1 and frames[0].startswith("Response: Follows")
    reads = -(-len(data) // 4096)
    assert len(data) <= f.scanned <= len(data) + 3 * reads
    assert f.pending == 0
