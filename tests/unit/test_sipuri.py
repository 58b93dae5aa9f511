"""producers.sipuri: RFC 3261 SIP/SIPS URIs, from the recorded transcripts to hostile phones."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astreg.errors import InvalidSipUri
from producers import sipuri
from producers.ami import SipUri as ContactAddress
from producers.ami import parse_uri
from producers.sipuri import SipUri, parse, parse_host
from tests.support.ami_frames import messages, raw_files

# (uri, scheme, user, password, host, port, transport, params, headers)
VALID = [
    ("sip:x;y@10.0.0.1", "sip", "x;y", None, "10.0.0.1", None, None, (), ()),
    ("sip:o'brien@10.0.0.2:5070", "sip", "o'brien", None, "10.0.0.2", 5070, None, (), ()),
    ("sip:1001@[2001:db8::1]:5061;transport=TLS", "sip", "1001", None, "2001:db8::1", 5061, "tls",
     (("transport", "TLS"),), ()),
    ("sips:1001@example.com", "sips", "1001", None, "example.com", None, "tls", (), ()),
    ("sip:1001:secret@host", "sip", "1001", "secret", "host", None, None, (), ()),
    ("sip:%61lice@atlanta.com;maddr=239.255.255.1;ttl=15", "sip", "alice", None, "atlanta.com", None, None,
     (("maddr", "239.255.255.1"), ("ttl", "15")), ()),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent", "sip", "alice", None, "atlanta.com", None,
     None, (), (("subject", "project x"), ("priority", "urgent"))),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", "sip", "+1-212-555-1212", "1234", "gateway.com", None,
     None, (("user", "phone"),), ()),
    # RFC 3261 section 19.1.3's other examples
    ("sip:alice:secretword@atlanta.com;transport=tcp", "sip", "alice", "secretword", "atlanta.com", None, "tcp",
     (("transport", "tcp"),), ()),
    ("sips:alice@atlanta.com?subject=project%20x&priority=urgent", "sips", "alice", None, "atlanta.com", None,
     "tls", (), (("subject", "project x"), ("priority", "urgent"))),
    ("sip:atlanta.com;method=REGISTER?to=alice%40atlanta.com", "sip", None, None, "atlanta.com", None, None,
     (("method", "REGISTER"),), (("to", "alice@atlanta.com"),)),
    ("sip:alice;day=tuesday@atlanta.com", "sip", "alice;day=tuesday", None, "atlanta.com", None, None, (), ()),
    # what phones register through Asterisk
    ("sip:1001@192.168.1.10:5060;ob", "sip", "1001", None, "192.168.1.10", 5060, None, (("ob", None),), ()),
    ("sip:1001@203.0.113.9:41234;transport=UDP;rinstance=9f1c2a3b4d5e6f70", "sip", "1001", None,
     "203.0.113.9", 41234, "udp", (("transport", "UDP"), ("rinstance", "9f1c2a3b4d5e6f70")), ()),
    ("sip:1001@203.0.113.9:5060;x-ast-orig-host=[fe80::1]:5060", "sip", "1001", None, "203.0.113.9", 5060,
     None, (("x-ast-orig-host", "[fe80::1]:5060"),), ()),
    ("sip:k3j4h5@df7jal23ls0d.invalid;transport=ws", "sip", "k3j4h5", None, "df7jal23ls0d.invalid", None, "ws",
     (("transport", "ws"),), ()),
    ("sip:bob@pbx.example.com.:5080;lr=on;gr=urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "sip", "bob",
     None, "pbx.example.com.", 5080, None,
     (("lr", "on"), ("gr", "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6")), ()),
    ("SIP:Bob@10.0.0.3", "sip", "Bob", None, "10.0.0.3", None, None, (), ()),
    ("sip:10.0.0.4:0", "sip", None, None, "10.0.0.4", 0, None, (), ()),
    ("sip:a?b/c$d,e&f=g+h@10.0.0.5", "sip", "a?b/c$d,e&f=g+h", None, "10.0.0.5", None, None, (), ()),
    ("sip:%E2%82%AC@[::ffff:10.0.0.6]", "sip", "\u20ac", None, "::ffff:10.0.0.6", None, None, (), ()),
    ("sip:u:@h", "sip", "u", "", "h", None, None, (), ()),
    ("sip:a@010.000.0.255;ttl=255", "sip", "a", None, "010.000.0.255", None, None, (("ttl", "255"),), ()),
    ("sip:a@0.0.0.0:05060", "sip", "a", None, "0.0.0.0", 5060, None, (), ()),
    ("sip:h?x=", "sip", None, None, "h", None, None, (), (("x", ""),)),
    # UTF-8 endpoint names: Asterisk reports their contacts' users unescaped
    ("sip:j\u00f6rg\u20ac1001@10.0.0.1:5060", "sip", "j\u00f6rg\u20ac1001", None, "10.0.0.1", 5060, None, (), ()),
]


@pytest.mark.parametrize(("uri", "scheme", "user", "password", "host", "port", "transport", "params", "headers"),
                         VALID)
def test_valid_uris_parse_into_their_parts(
    uri: str, scheme: str, user: str | None, password: str | None, host: str, port: int | None,
    transport: str | None, params: tuple[tuple[str, str | None], ...], headers: tuple[tuple[str, str], ...],
) -> None:
    u = parse(uri)
    assert (u.scheme, u.user, u.password, u.host, u.port, u.transport, u.params, u.headers) == (
        scheme, user, password, host, port, transport, params, headers)
    assert (parse_uri(uri).host, parse_uri(uri).port, parse_uri(uri).transport) == (
        host, port or None, transport)


INVALID = [
    ("sip:1001@10.0.0.1:99999", "port above 65535"),
    ("sip:1001@10.0.0.1:" + "9" * 5000, "port above 65535"),
    ("sip:1001@10.0.0.1:", "bad port"),
    ("sip:1001@10.0.0.1:5o60", "bad port"),
    ("sip:1001@10.0.0.1:\u0665\u0660\u0666\u0660", "not ASCII"),  # Arabic-Indic digits
    ("sip:1001@999.1.1.1", "IPv4 number above 255"),
    ("sip:1001@256.0.0.1", "IPv4 number above 255"),
    ("sip:1001@1.2.3.260", "IPv4 number above 255"),
    ("sip:1001@1.2.3.1000", "bad host"),
    ("sip:1001@1.2.3", "bad host"),
    ("sip:1001@1.2.3.4.5", "bad host"),
    ("sip:@10.0.0.1", "bad or empty user"),
    ("sip:1001@[::1", "bad IPv6 reference"),
    ("sip:1001@[::1]x", "bad port"),
    ("sip:1001@[10.0.0.1]", "bad IPv6 reference"),
    ("sip:1001@[ ::1]", "bad IPv6 reference"),
    ("sip:1001@[fe80::1%25eth0]", "IPv6 zone"),
    ("sip:1001@::1", "no host"),
    ("sip:1001@10.0.0.1;transport=", "bad parameter"),
    ("sip:1001@10.0.0.1;transport", "bad transport parameter"),
    ("sip:1001@10.0.0.1;transport=t@cp", "more than one '@'"),
    ("sip:1001@10.0.0.1;transport=%22tcp%22", "bad transport parameter"),
    ("sip:1001@10.0.0.1;transport=udp;TRANSPORT=tls", "given twice"),
    ("sip:1001@10.0.0.1;ttl=256", "bad ttl parameter"),
    ("sip:1001@10.0.0.1;maddr=999.0.0.1", "IPv4 number above 255"),
    ("sip:1001@10.0.0.1;;ob", "bad parameter"),
    ("sip:1001@10.0.0.1;", "bad parameter"),
    ("sip:1001@10.0.0.1?", "bad header"),
    ("sip:1001@10.0.0.1?subject", "bad header"),
    ("sip:<script>@x", "bad or empty user"),
    ("sip:1001@<script>alert(1)</script>", "bad host"),
    ("sip:1001@10.0.0.1;a=<b>", "bad parameter"),
    ("sip:a@b@10.0.0.1", "more than one '@'"),
    ("sip:a:b:c@10.0.0.1", "bad password"),
    ("sip:%zz@10.0.0.1", "bad or empty user"),
    ("sip:%FF@10.0.0.1", "user escapes are not UTF-8"),
    ("sip:1001@-pbx.example.com", "bad host"),
    ("sip:1001@pbx-.example.com", "bad host"),
    ("sip:1001@pbx..example.com", "bad host"),
    ("sip:1001@pbx_1.example.com", "bad host"),
    ("sip:1001@example.123", "bad host"),
    ("sip:1001@" + "a" * 64 + ".com", "bad host"),
    ("sip:1001@" + "a.b" * 85 + ".com", "bad host"),
    ("sip:1001@h\u00e9.example.com", "not ASCII"),
    ("sip:1001:p\u00e4ss@10.0.0.1", "not ASCII"),
    ("sip:j\u00f6rg@10.0.0.1;t\u00e4g", "not ASCII"),
    ("sip:j\u00f6\u0085rg@10.0.0.1", "bad or empty user"),
    ("sip:j\u00f6\u3000rg@10.0.0.1", "bad or empty user"),
    ("sip:1001@10.0.0.1\r\nX: y", "bad host"),
    ("tel:+123", "scheme"),
    ("sipx:1001@10.0.0.1", "scheme"),
    ("1001@10.0.0.1", "scheme"),
    ("sip:", "no host"),
    ("sip:1001@", "no host"),
    ("", "scheme"),
    ("   ", "scheme"),
    (" sip:1001@10.0.0.1", "scheme"),
    ("sip:1001@10.0.0.1 ", "bad host"),
    ("sip: 1001@10.0.0.1", "bad or empty user"),
    ('"Bob" <sip:1001@10.0.0.1>', "scheme"),
    ("<sip:1001@10.0.0.1>", "scheme"),
]


@pytest.mark.parametrize(("uri", "reason"), INVALID)
def test_invalid_uris_are_refused_with_the_part_named(uri: str, reason: str) -> None:
    with pytest.raises(InvalidSipUri) as info:
        parse(uri)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError) and info.value.uri == uri
    assert len(str(info.value)) < 200  # a hostile 10 kB URI is not echoed whole into logs
    if uri == uri.strip() and not uri.startswith("<"):
        assert parse_uri(uri).host is None  # what the records carry: no address


def test_a_10_kb_uri_is_read_by_the_grammar_not_by_its_size() -> None:
    # No length limit of its own (the AMI mapping bounds every field); the host keeps DNS's.
    user = "a;b" * 3400
    u = parse(f"sip:{user}@10.0.0.1:5060")
    assert (u.user, u.host, u.port) == (user, "10.0.0.1", 5060)
    with pytest.raises(InvalidSipUri, match="bad host"):
        parse("sip:1001@" + "a." * 5000 + "com")
    with pytest.raises(InvalidSipUri, match="bad parameter"):
        parse("sip:1001@10.0.0.1;x=" + "<" * 10_000)


def test_parse_uri_reads_bare_and_bracketed_uris_only() -> None:
    assert parse_uri("  sip:x;y@10.0.0.1:5070;transport=TCP \r\n").host == "10.0.0.1"
    assert (parse_uri("<sip:x;y@10.0.0.1:5070;transport=TCP>").port,
            parse_uri("<sip:x;y@10.0.0.1:5070;transport=TCP>").transport) == (5070, "tcp")
    # A display name is not something Asterisk sends in URI/Uri: it is refused, not guessed at.
    assert parse_uri('"Bob" <sip:1001@10.0.0.1>').host is None
    assert parse_uri("<sip:1001@10.0.0.1").host is None
    assert parse_uri("<<sip:1001@10.0.0.1>>").host is None
    # The producer's own spelling of an IAX2 peer's contact reads the same way.
    assert (parse_uri("iax2:trunk@[2001:db8::1]:4569").host, parse_uri("iax2:trunk@[2001:db8::1]:4569").port) == (
        "2001:db8::1", 4569)
    with pytest.raises(InvalidSipUri, match="scheme"):
        parse("iax2:trunk@10.0.0.1")
    assert parse("IAX2:trunk@10.0.0.1", schemes={"iax2"}).scheme == "iax2"


def test_param_lookup_ignores_case_and_tells_bare_from_absent() -> None:
    u = parse("sip:1001@10.0.0.1;Transport=TCP;lr;x-Foo=Bar")
    assert (u.param("TRANSPORT"), u.param("lr"), u.param("X-FOO"), u.param("maddr")) == ("TCP", None, "Bar", None)
    assert ("lr", None) in u.params and u.transport == "tcp"
    assert parse("sips:1001@10.0.0.1;transport=tcp").transport == "tcp"


@pytest.mark.parametrize(
    ("text", "host"),
    [("10.0.0.1", "10.0.0.1"), ("255.255.255.255", "255.255.255.255"), ("[::1]", "::1"), ("a", "a"),
     ("a-1.b2.c", "a-1.b2.c"), ("1a.b", "1a.b"), ("example.com.", "example.com.")],
)
def test_hosts(text: str, host: str) -> None:
    assert parse_host(text) == host


def _transcript_uris() -> list[tuple[str, str | None]]:
    """(contact URI, its AOR when the message names one) of every contact in the transcripts."""
    found = []
    for path in raw_files():
        for m in messages(path):
            for header in ("URI", "Uri"):
                if header in m and str(m[header]).startswith("sip"):
                    found.append((str(m[header]), m.get("AOR") or m.get("Endpoint") or None))
            for header in ("Contacts", "Contact"):
                for item in str(m.get(header) or "").split(","):
                    aor, slash, uri = item.strip().partition("/")
                    if slash and uri.startswith("sip"):
                        found.append((uri, None))
    return found


def test_every_contact_uri_of_the_transcripts() -> None:
    uris = _transcript_uris()
    assert len({u for u, _ in uris}) >= 10 and any(aor for _, aor in uris)
    for uri, aor in uris:
        u = parse(uri)
        assert u.host == "127.0.0.1" and u.port is not None and u.params == () and u.headers == ()
        if aor is not None:
            assert u.user == aor, uri
        back = f"{u.scheme}:" + (f"{u.user}@" if u.user else "") + f"{u.host}:{u.port}"
        assert back == uri
        assert parse_uri(uri) == ContactAddress(u.host, u.port, None)


# --- property: URIs built from the grammar's parts parse back to those parts -------------------

_USER_CHARS = "abcXYZ019-_.!~*'()&=+$,;?/"
_PASSWORD_CHARS = "abcXYZ019-_.!~*'()&=+$,"
_PARAM_CHARS = "abcXYZ019-_.!~*'()[]/:&+$"
_HEADER_CHARS = "abcXYZ019-_.!~*'()[]/?:+$"
_KNOWN = {"transport", "user", "method", "ttl", "maddr"}


def _text(chars: str, min_size: int) -> st.SearchStrategy[tuple[str, str]]:
    """(as written, decoded): literal characters of the set mixed with %-escaped UTF-8 text."""
    literal = st.sampled_from(chars).map(lambda c: (c, c))
    escaped = st.characters(codec="utf-8").map(lambda c: (quote(c, safe=""), c))
    return st.lists(literal | escaped, min_size=min_size, max_size=12).map(
        lambda atoms: ("".join(a for a, _ in atoms), "".join(d for _, d in atoms)))


_labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_toplabel = st.from_regex(r"[a-zA-Z](?:[a-zA-Z0-9-]{0,8}[a-zA-Z0-9])?", fullmatch=True)
_hostnames = st.builds(lambda labels, top: ".".join([*labels, top]), st.lists(_labels, max_size=3), _toplabel)
_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)


@st.composite
def _uris(draw: st.DrawFn) -> tuple[str, SipUri]:
    scheme = draw(st.sampled_from(["sip", "sips", "SIP", "Sips"]))
    user = draw(st.none() | _text(_USER_CHARS, 1))
    password = draw(st.none() | _text(_PASSWORD_CHARS, 0)) if user else None
    kind = draw(st.sampled_from(["name", "v4", "v6"]))
    host = draw(_hostnames if kind == "name" else _ipv4 if kind == "v4" else _ipv6)
    port = draw(st.none() | st.integers(0, 65535))
    params: list[tuple[tuple[str, str | None], tuple[str, str | None]]] = []
    names: set[str] = set()
    if draw(st.booleans()):
        transport = draw(st.sampled_from(["udp", "tcp", "TLS", "ws", "sctp", "x-foo"]))
        params.append((("transport", transport), ("transport", transport)))
        names.add("transport")
    for name, value in draw(st.lists(st.tuples(_text(_PARAM_CHARS, 1), st.none() | _text(_PARAM_CHARS, 1)),
                                     max_size=4)):
        if name[1].lower() in names | _KNOWN:
            continue
        names.add(name[1].lower())
        params.append(((name[0], value[0] if value else None), (name[1], value[1] if value else None)))
    params = draw(st.permutations(params))
    headers = draw(st.lists(st.tuples(_text(_HEADER_CHARS, 1), _text(_HEADER_CHARS, 0)), max_size=3))
    text = f"{scheme}:"
    if user:
        text += user[0] + (f":{password[0]}" if password else "") + "@"
    text += (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    text += "".join(f";{n}" + (f"={v}" if v is not None else "") for (n, v), _ in params)
    if headers:
        text += "?" + "&".join(f"{n[0]}={v[0]}" for n, v in headers)
    expected = SipUri(
        scheme=scheme.lower(), host=host, port=port, user=user[1] if user else None,
        password=password[1] if password else None, params=tuple(decoded for _, decoded in params),
        headers=tuple((n[1], v[1]) for n, v in headers),
    )
    return text, expected


@settings(max_examples=400, deadline=None)
@given(_uris())
def test_uris_built_from_the_grammar_parse_back_to_their_parts(case: tuple[str, SipUri]) -> None:
    text, expected = case
    assert parse(text) == expected
    summary = parse_uri(f"<{text}>")
    assert (summary.host, summary.port, summary.transport) == (expected.host, expected.port or None,
                                                               expected.transport)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=60) | st.builds(lambda a, b: f"sip:{a}@{b}", st.text(max_size=20), st.text(max_size=20)))
def test_any_text_is_a_uri_or_an_invalid_sip_uri_error(text: str) -> None:
    summary = parse_uri(text)  # total: never raises
    try:
        u = parse(text)
    except InvalidSipUri:
        if text == text.strip() and not text.startswith("<") and not text.lower().startswith("iax2:"):
            assert summary.host is None
    else:
        assert u.scheme in sipuri.SIP_SCHEMES and u.host and summary.host == u.host
