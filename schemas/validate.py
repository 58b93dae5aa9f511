"""Sane ranges of what a record may say, checked by the producer before sending and by the
worker again before applying (a record may come from anyone with produce rights).

Each check returns ``None`` or a short reason (a dead-letter reason). The ranges are wide enough
for every value Asterisk and SIP produce, and narrow enough that nothing a dialplan reads can be
abused:

* **node id**: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}`` — it is written as the *value* the dialplan
  dials through (AstDB ``node/<resource>``, the SQL ``node`` column): no comma, ampersand,
  parenthesis, quote, ``$``, slash or space can reach ``Dial()`` through it.
* **endpoint**: ``TECH/resource``, TECH ``[A-Za-z][A-Za-z0-9_]{0,15}``, resource 1–128
  characters with no control character, space, ``/`` or any of ``,;|&()[]{}$"'`\\<>``
  (Asterisk's own argument and variable syntax). UTF-8 letters are allowed: Asterisk accepts
  them in endpoint names and reports them unescaped.
* **contact URI** up to 512 characters, **host** (``ip``) up to 255 (a DNS name's limit),
  neither with control characters or spaces; **port** 1–65535; **RTT** 0–3,600 s;
  **qualify frequency** 0–86,400 s.
* **times**: an event time at most ``MAX_SKEW_MS`` (one day) ahead of the checking clock, not
  before 10^12 ms (September 2001) and, when the record has a broker timestamp, within a day of it;
  a contact's expiration within 31 days of the event; a producer epoch (its start time in ms)
  not ahead of the checking clock by more than a day.
"""

from __future__ import annotations

import re
from typing import Any

from .models import NodeStatus, RegistrationEvent

__all__ = [
    "MAX_SKEW_MS", "node_id_problem", "endpoint_problem", "registration_problem", "node_status_problem",
]

MAX_SKEW_MS = 86_400_000  # one day
MIN_TIME_MS = 1_000_000_000_000  # September 2001: no Asterisk event is older
MAX_EXPIRY_MS = 31 * 86_400_000
MAX_RTT_US = 3_600_000_000
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_TECH = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,15}\Z")
_BAD_RESOURCE = re.compile(r"[\x00-\x20\x7f/,;|&()\[\]{}$\"'`\\<>]")
_BAD_TEXT = re.compile(r"[\x00-\x20\x7f]")  # URIs and hosts: no control characters, no space
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # free text (user agent, cause): no control characters


def node_id_problem(node: str) -> str | None:
    if not _NODE.match(node):
        return (f"node id {node[:80]!r} is not 1-64 letters, digits, '.', '_' or '-' starting with a letter "
                "or digit")
    return None


def endpoint_problem(endpoint: str) -> str | None:
    tech, sep, resource = endpoint.partition("/")
    if not sep or not _TECH.match(tech):
        return "bad_endpoint"
    if not resource or len(resource) > 128 or _BAD_RESOURCE.search(resource):
        return "bad_endpoint"
    return None


def _text(value: str | None, limit: int, pattern: re.Pattern[str] = _CONTROL) -> bool:
    return value is None or (len(value) <= limit and not pattern.search(value))


def _times(event_ms: int, now_ms: int, record_ms: int | None) -> str | None:
    if event_ms < MIN_TIME_MS:
        return "event_time_past"
    if event_ms > now_ms + MAX_SKEW_MS:
        return "event_time_future"
    if record_ms is not None and record_ms > 0 and abs(event_ms - record_ms) > MAX_SKEW_MS:
        return "event_time_skew"
    return None


def _stamp(epoch: int, seq: int, now_ms: int) -> str | None:
    if epoch < 0 or seq < 0:
        return "bad_stamp"
    if epoch > now_ms + MAX_SKEW_MS:
        return "epoch_ahead"
    return None


# Node ids and endpoints already found valid: a worker sees the same few thousand again and
# again (emptied when full, so an attacker's junk cannot grow it without bound).
_GOOD_NODES: set[str] = set()
_GOOD_ENDPOINTS: set[str] = set()
_GOOD_LIMIT = 1 << 18
_search_bad_text = _BAD_TEXT.search
_search_control = _CONTROL.search


def registration_problem(ev: RegistrationEvent, now_ms: int, record_ms: int | None = None) -> str | None:
    """Why ``ev`` is out of range (a dead-letter reason), or None. Runs for every event a worker
    applies: the common case (known node and endpoint, most optional fields empty) costs about
    a microsecond."""
    node, endpoint = ev.node, ev.endpoint
    if node not in _GOOD_NODES:
        if not node or node_id_problem(node):
            return "bad_node"
        _remember(_GOOD_NODES, node)
    if endpoint not in _GOOD_ENDPOINTS:
        if endpoint_problem(endpoint):
            return "bad_endpoint"
        _remember(_GOOD_ENDPOINTS, endpoint)
    t = ev.event_time_ms
    if ev.producer_epoch < 0 or ev.seq < 0:
        return "bad_stamp"
    if ev.producer_epoch > now_ms + MAX_SKEW_MS:
        return "epoch_ahead"
    if t < MIN_TIME_MS:
        return "event_time_past"
    if t > now_ms + MAX_SKEW_MS:
        return "event_time_future"
    if record_ms and abs(t - record_ms) > MAX_SKEW_MS:
        return "event_time_skew"
    v: Any = ev.contact_uri
    if v is not None and (len(v) > 512 or _search_bad_text(v)):
        return "bad_uri"
    v = ev.aor
    if v is not None and (len(v) > 256 or _search_control(v)):
        return "bad_uri"
    v = ev.ip
    if v is not None and (len(v) > 255 or _search_bad_text(v)):
        return "bad_host"
    v = ev.port
    if v is not None and not 1 <= v <= 65535:
        return "bad_port"
    v = ev.rtt_us
    if v is not None and not 0 <= v <= MAX_RTT_US:
        return "bad_rtt"
    v = ev.expires_at_ms
    if v is not None and abs(v - t) > MAX_EXPIRY_MS:
        return "bad_expiry"
    v = ev.qualify_frequency_s
    if v is not None and not 0 <= v <= 86_400:
        return "bad_qualify"
    for v, limit in ((ev.user_agent, 512), (ev.reg_server, 256), (ev.cause, 512), (ev.snapshot_id, 256),
                     (ev.call_id, 512)):
        if v is not None and (len(v) > limit or _search_control(v)):
            return "bad_text"
    v = ev.transport
    if v is not None and (len(v) > 16 or _search_bad_text(v)):
        return "bad_text"
    return None


def _remember(good: set[str], value: str) -> None:
    if len(good) >= _GOOD_LIMIT:
        good.clear()
    good.add(value)


def node_status_problem(ns: NodeStatus, now_ms: int, record_ms: int | None = None) -> str | None:
    """Why a nodes-topic record is out of range, or None."""
    if not ns.node or node_id_problem(ns.node):
        return "bad_node"
    problem = _stamp(ns.producer_epoch, ns.seq, now_ms) or _times(ns.event_time_ms, now_ms, record_ms)
    if problem:
        return problem
    if ns.heartbeat_interval_ms is not None and not 0 < ns.heartbeat_interval_ms <= 3_600_000:
        return "bad_heartbeat"
    return None
