"""SIP and SIPS URIs read by RFC 3261's grammar (section 25.1): pure, no I/O.

``parse('sip:1001@10.0.0.1:5060;transport=tcp')`` returns a frozen :class:`SipUri` or raises
:class:`~astreg.errors.InvalidSipUri` naming the part that broke the grammar. Contact URIs come
from phones, so nothing is guessed: the user part may hold ``;``, ``?``, ``'`` and escapes
(``sip:x;y@10.0.0.1`` is user ``x;y`` at host ``10.0.0.1``), and ``@`` can only end the
userinfo, because no other part of the grammar admits it unescaped.

What is checked beyond the bare character sets, and why:

* host: an IPv4 address is four numbers 0-255; an IPv6 address sits in ``[...]`` and must be one
  for :mod:`ipaddress` (no zone: the grammar has none); anything else is a hostname whose last
  label starts with a letter (so ``999.1.1.1`` is neither), within the DNS limits of
  RFC 1035 (labels of 63 characters, 253 in all) so that a host stays a host name;
* port 0-65535; ``ttl`` 0-255; ``maddr`` a host; ``transport``, ``user`` and ``method`` tokens: a
  known parameter with a value outside its rule is refused rather than read as an
  other-param, since its name says what it means;
* a parameter name appears once (compared case-insensitively): two transports are no transport;
* escapes (``%xx``) are decoded, and must decode to UTF-8 text.

The telephone-subscriber form of the user (RFC 2806) needs no rule of its own: RFC 3261 asks that
its characters outside ``user`` be escaped, so every one is a ``user`` here (``user=phone`` says
which it is). URIs are ASCII except the user part: Asterisk endpoint names, and so the users of
their contacts, may be UTF-8, and Asterisk reports them unescaped (``sip:jörg@10.0.0.1``), so the
user part also admits printable non-ASCII characters; everything else must be ASCII (a non-ASCII
host is written in its punycode form), whitespace and controls are refused everywhere; a caller
holding an AMI value strips it first. Only a bare URI is read: no display name, no ``<...>``
(:func:`producers.ami.parse_uri` unwraps the brackets). :func:`parse_host` checks a host alone.

``schemes`` widens the accepted schemes to others written in the same shape (the producer writes
IAX2 peers' contacts as ``iax2:<peer>@<host>:<port>``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import unquote

from astreg.errors import InvalidSipUri

__all__ = ["SIP_SCHEMES", "SipUri", "parse", "parse_host"]

SIP_SCHEMES = frozenset({"sip", "sips"})

# Character sets of RFC 3261 section 25.1 (ASCII only: no \d, no \w, which match Unicode).
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
# Printable non-ASCII: not C0/C1 controls, not whitespace (the user part only, see above).
_NON_ASCII = r"[^\x00-\x9f\s\u2028\u2029]"
_USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED}|{_NON_ASCII})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
_PARAMCHARS = rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+"
_PARAM = re.compile(rf"({_PARAMCHARS})(?:=({_PARAMCHARS}))?")  # name [= value]
_HNAME = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})+")
_HVALUE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*")
_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_IPV4_SHAPE = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
_DOMAINLABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_TOPLABEL = re.compile(r"[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?")
_DIGITS = re.compile(r"[0-9]+")
_TTL = re.compile(r"[0-9]{1,3}")

_TOKEN_PARAMS = frozenset({"transport", "user", "method"})
_KNOWN_PARAMS = _TOKEN_PARAMS | {"ttl", "maddr"}


@dataclass(frozen=True, slots=True)
class SipUri:
    """One SIP or SIPS URI, escapes decoded; ``host`` is an IPv6 address without its brackets.

    ``params`` and ``headers`` keep the URI's order and spelling; ``value`` is None for a
    parameter written without ``=`` (``;lr``).
    """

    scheme: str
    host: str
    port: int | None = None
    user: str | None = None
    password: str | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """The value of parameter ``name`` (any case), None when absent or written bare."""
        wanted = name.lower()
        for key, value in self.params:
            if key.lower() == wanted:
                return value
        return None

    @property
    def transport(self) -> str | None:
        """The ``transport`` parameter in lower case; ``tls`` for a SIPS URI that names none."""
        transport = self.param("transport")
        if transport is not None:
            return transport.lower()
        return "tls" if self.scheme == "sips" else None


def parse(text: str, *, schemes: Collection[str] = SIP_SCHEMES) -> SipUri:
    """``text`` read as RFC 3261's SIP-URI / SIPS-URI; raises InvalidSipUri (a ValueError)."""
    scheme, colon, rest = text.partition(":")
    userinfo_text, at, after = rest.rpartition("@") if "@" in rest else ("", "", rest)
    if not (scheme.isascii() and after.isascii() and userinfo_text.partition(":")[2].isascii()):
        raise InvalidSipUri("not ASCII", text)
    if not colon or not _SCHEME.fullmatch(scheme) or scheme.lower() not in schemes:
        raise InvalidSipUri(f"scheme is not one of {'/'.join(sorted(schemes))}", text)
    user = password = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        if "@" in rest:
            raise InvalidSipUri("more than one '@'", text)
        user_text, colon, password_text = userinfo.partition(":")
        if not _USER.fullmatch(user_text):
            raise InvalidSipUri("bad or empty user before '@'", text)
        user = _decode(user_text, "user", text)
        if colon:
            if not _PASSWORD.fullmatch(password_text):
                raise InvalidSipUri("bad password", text)
            password = _decode(password_text, "password", text)
    rest, question, headers_text = rest.partition("?")
    hostport, *param_texts = rest.split(";")
    host, port = _hostport(hostport, text)
    params = _params(param_texts, text)
    headers = _headers(headers_text, text) if question else ()
    return SipUri(scheme.lower(), host, port, user, password, params, headers)


def parse_host(text: str) -> str:
    """A ``host`` of the grammar (IPv6 in brackets) → the host (IPv6 without); raises InvalidSipUri."""
    if text.startswith("["):
        inner = text[1:-1] if text.endswith("]") else ""
        if "%" in inner:
            raise InvalidSipUri("IPv6 zone in host", text)
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise InvalidSipUri("bad IPv6 reference", text) from None
        return inner
    if _IPV4.fullmatch(text):
        return text
    if _IPV4_SHAPE.fullmatch(text):
        raise InvalidSipUri("IPv4 number above 255", text)
    labels = text[:-1].split(".") if text.endswith(".") else text.split(".")
    if (
        len(text.rstrip(".")) > 253
        or any(len(label) > 63 or not _DOMAINLABEL.fullmatch(label) for label in labels)
        or not _TOPLABEL.fullmatch(labels[-1])
    ):
        raise InvalidSipUri("bad host", text)
    return text


def _hostport(text: str, uri: str) -> tuple[str, int | None]:
    if text.startswith("["):
        end = text.find("]")
        host_text, port_text = (text[: end + 1], text[end + 1 :]) if end >= 0 else (text, "")
    else:
        cut = text.find(":")
        host_text, port_text = (text[:cut], text[cut:]) if cut >= 0 else (text, "")
    if not host_text:
        raise InvalidSipUri("no host", uri)
    host = _host(host_text, uri)
    if not port_text:
        return host, None
    digits = port_text[1:]
    if port_text[0] != ":" or not _DIGITS.fullmatch(digits):
        raise InvalidSipUri("bad port", uri)
    digits = digits.lstrip("0") or "0"
    if len(digits) > 5 or int(digits) > 65535:
        raise InvalidSipUri("port above 65535", uri)
    return host, int(digits)


def _params(texts: list[str], uri: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for item in texts:
        m = _PARAM.fullmatch(item)
        if m is None:
            raise InvalidSipUri(f"bad parameter {item[:40]!r}", uri)
        name, value = m.groups()
        if "%" in item:
            name = _decode(name, "parameter", uri)
            value = None if value is None else _decode(value, "parameter", uri)
        key = name.lower()
        if key in seen:
            raise InvalidSipUri(f"parameter {name[:40]!r} given twice", uri)
        seen.add(key)
        if key in _KNOWN_PARAMS:
            _check_known(key, value, uri)
        params.append((name, value))
    return tuple(params)


def _check_known(key: str, value: str | None, uri: str) -> None:
    """A known parameter's value against its own rule (``lr`` is none: ``lr=on`` is common)."""
    if value is None:
        raise InvalidSipUri(f"bad {key} parameter", uri)
    if key == "maddr":
        _host(value, uri)
    elif key == "ttl":
        if not _TTL.fullmatch(value) or int(value) > 255:
            raise InvalidSipUri(f"bad {key} parameter", uri)
    elif not _TOKEN.fullmatch(value):
        raise InvalidSipUri(f"bad {key} parameter", uri)


def _headers(text: str, uri: str) -> tuple[tuple[str, str], ...]:
    headers = []
    for item in text.split("&"):
        name_text, equals, value_text = item.partition("=")
        if not equals or not _HNAME.fullmatch(name_text) or not _HVALUE.fullmatch(value_text):
            raise InvalidSipUri(f"bad header {item[:40]!r}", uri)
        headers.append((_decode(name_text, "header", uri), _decode(value_text, "header", uri)))
    return tuple(headers)


def _host(part: str, uri: str) -> str:
    """``parse_host(part)``, its error reported against the whole URI."""
    try:
        return parse_host(part)
    except InvalidSipUri as exc:
        raise InvalidSipUri(exc.reason, uri) from None


def _decode(text: str, part: str, uri: str) -> str:
    if "%" not in text:
        return text
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise InvalidSipUri(f"{part} escapes are not UTF-8", uri) from None
