"""The producer's quality tap: RTCP and qualify AMI events → encoded QualitySample records.

:class:`QualityTap` sits beside :func:`producers.ami.to_event` in
:class:`~producers.node.NodeProducer`: for each ``RTCPSent``/``RTCPReceived`` (class
``reporting``) and each ``ContactStatus`` with a round trip it returns the
:class:`~producers.publisher.Record` values to publish on ``asterisk.quality.v1`` (key =
endpoint), numbered from the ``seq`` it is given (the caller advances its one counter by
``len(records)``). It keeps the per-contact RTT state the signalling jitter needs. Bad input
raises :class:`~astreg.errors.MalformedAmiEvent` for the caller to dead-letter. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.codec import Codec
from schemas.quality import QualitySample

from .publisher import Record
from .quality import RTCP_EVENTS, QualifyState, qualify_sample, rtcp_samples

__all__ = ["QualityTap", "RTCP_EVENTS", "AMI_CLASS"]

AMI_CLASS = "reporting"  # the AMI event class of RTCPSent/RTCPReceived (manager.conf read=)


class QualityTap:
    """Turns quality events of one node into records for the quality topic."""

    def __init__(self, topic: str, max_contacts: int = 1_000_000) -> None:
        self.topic = topic
        self.max_contacts = max_contacts
        self._codec = Codec.for_model(QualitySample)
        self._qualify: dict[str, QualifyState] = {}  # contact URI -> RTT smoothing state
        self.samples = 0

    def rtcp(self, msg: Mapping[str, Any], *, node: str, now_ms: int, epoch: int, seq: int) -> list[Record]:
        return self._records(rtcp_samples(msg, node=node, now_ms=now_ms, epoch=epoch, seq=seq))

    def contact(self, msg: Mapping[str, Any], *, node: str, now_ms: int, epoch: int, seq: int) -> list[Record]:
        uri = msg.get("URI") or ""
        sample, state = qualify_sample(msg, self._qualify.get(uri), node=node, now_ms=now_ms, epoch=epoch, seq=seq)
        if state is None:
            self._qualify.pop(uri, None)
        elif len(self._qualify) < self.max_contacts or uri in self._qualify:
            self._qualify[uri] = state
        return self._records([sample] if sample is not None else [])

    def _records(self, samples: list[QualitySample]) -> list[Record]:
        self.samples += len(samples)
        # While Kafka is away only the newest sample of each stream is worth keeping.
        return [
            Record(self.topic, s.endpoint.encode(), self._codec.encode(s),
                   ("quality", s.endpoint, s.channel, s.direction), "QUALITY")
            for s in samples
        ]
