"""Deliberately bad AMI events the simulator can write to its clients (``Simulator.inject_fault``).

Each kind is one event a real Asterisk (or a broken network) could deliver and the producer must
survive: a 100 kB URI, missing headers, broken UTF-8, an unknown status value, and valid UTF-8
beyond ASCII. Pure bytes: no simulator state.
"""

from __future__ import annotations

__all__ = ["FAULTS", "fault_bytes"]

FAULTS = ("oversized", "missing_headers", "broken_utf8", "unknown_enum", "utf8")


def fault_bytes(kind: str, node: str) -> bytes:
    head = f"Event: ContactStatus\r\nPrivilege: system,all\r\nSystemName: {node}\r\n"
    if kind == "oversized":
        return (head + "URI: sip:" + "x" * 100_000 + "@10.0.0.1:5060\r\nContactStatus: Reachable\r\nAOR: 1001\r\n"
                "EndpointName: 1001\r\nRoundtripUsec: 1\r\n\r\n").encode()
    if kind == "missing_headers":
        return (head + "ContactStatus: Reachable\r\n\r\n").encode()
    if kind == "broken_utf8":
        return head.encode() + b"URI: sip:1001@10.0.0.1:5060\r\nContactStatus: Reachable\r\nAOR: 10\xff\xfe01\r\n" \
            b"EndpointName: 1001\xc3\r\nRoundtripUsec: 1\r\n\r\n"
    if kind == "unknown_enum":
        return (head + "URI: sip:1001@10.0.0.1:5060\r\nContactStatus: Teleported\r\nAOR: 1001\r\n"
                "EndpointName: 1001\r\nRoundtripUsec: 1\r\n\r\n").encode()
    if kind == "utf8":
        return (head + "URI: sip:1001@10.0.0.1:5060\r\nContactStatus: Reachable\r\nAOR: 1001\r\n"
                "EndpointName: 1001\r\nRoundtripUsec: 1\r\nUserAgent: Téléphone ☎ 电话\r\n\r\n").encode()
    raise KeyError(kind)
