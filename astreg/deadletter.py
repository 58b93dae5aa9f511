"""Dead-letter records: what every component sends to ``asterisk.deadletter.v1``.

The value is the offending bytes unchanged (or the AMI message text for producer faults), the
key is the original key, and the headers say why and where from, so an operator can replay or
inspect it with any Kafka tool.
"""

from __future__ import annotations

__all__ = ["deadletter_headers", "HEADER_REASON"]

HEADER_REASON = "astreg.reason"


def deadletter_headers(
    reason: str,
    *,
    component: str,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
    error: str | None = None,
) -> list[tuple[str, bytes]]:
    """Kafka headers of a dead-letter record (values UTF-8, reason capped at 1 KiB)."""
    headers = [(HEADER_REASON, reason.encode("utf-8", "replace")[:1024]), ("astreg.component", component.encode())]
    if topic is not None:
        headers.append(("astreg.source.topic", topic.encode()))
    if partition is not None:
        headers.append(("astreg.source.partition", str(partition).encode()))
    if offset is not None:
        headers.append(("astreg.source.offset", str(offset).encode()))
    if error is not None:
        headers.append(("astreg.error", error.encode("utf-8", "replace")[:256]))
    return headers
