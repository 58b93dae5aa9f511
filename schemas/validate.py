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


def registration_problem(ev: RegistrationEvent, now_ms: int, record_ms: int | None = None) -> str | None:
    """Why ``ev`` is out of range (a dead-letter reason), or None."""
    if not ev.node or node_id_problem(ev.node):
        return "bad_node"
    if endpoint_problem(ev.endpoint):
        return "bad_endpoint"
    problem = _stamp(ev.producer_epoch, ev.seq, now_ms) or _times(ev.event_time_ms, now_ms, record_ms)
    if problem:
        return problem
    if not _text(ev.contact_uri, 512, _BAD_TEXT) or not _text(ev.aor, 256):
        return "bad_uri"
    if not _text(ev.ip, 255, _BAD_TEXT):
        return "bad_host"
    if ev.port is not None and not 1 <= ev.port <= 65535:
        return "bad_port"
    if ev.rtt_us is not None and not 0 <= ev.rtt_us <= MAX_RTT_US:
        return "bad_rtt"
    if ev.expires_at_ms is not None and abs(ev.expires_at_ms - ev.event_time_ms) > MAX_EXPIRY_MS:
        return "bad_expiry"
    if ev.qualify_frequency_s is not None and not 0 <= ev.qualify_frequency_s <= 86_400:
        return "bad_qualify"
    if not (_text(ev.transport, 16, _BAD_TEXT) and _text(ev.user_agent, 512) and _text(ev.reg_server, 256)
            and _text(ev.cause, 512) and _text(ev.snapshot_id, 256) and _text(ev.call_id, 512)):
        return "bad_text"
    return None


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
