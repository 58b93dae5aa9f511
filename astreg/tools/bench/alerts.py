"""Benchmarks of the alerting core: records/s through the engine, decode included or not.

Standalone: ``astreg bench alerting [--records 100000]`` (prints the figures as JSON); also
section "alerting" of ``astreg bench``. Figures are measured in-process on synthetic
records (many endpoints on 3 nodes, RTCP every 5 s per active call, qualify changes, heartbeats).
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import click

from schemas.codec import Codec
from schemas.models import (
    ContactStatus,
    EventKind,
    LinkState,
    NodeEventKind,
    NodeStatus,
    RegistrationEvent,
    Source,
)
from schemas.quality import QualityKind, QualitySample, ReportDirection
from streams.alerts.engine import AlertEngine, AlertSettings

__all__ = ["bench_alerting", "bench_rtcp_mapping", "main"]


def _records(n: int, endpoints: int, seed: int = 1) -> list[RegistrationEvent | NodeStatus | QualitySample]:
    rng = random.Random(seed)
    t0 = int(time.time() * 1000)
    out: list[RegistrationEvent | NodeStatus | QualitySample] = []
    statuses = [ContactStatus.REACHABLE, ContactStatus.UNREACHABLE, ContactStatus.NON_QUALIFIED, ContactStatus.REMOVED]
    for i in range(n):
        t = t0 + i  # 1000 records per simulated second
        node = f"node{rng.randint(1, 3)}"
        ep = f"PJSIP/{1000 + rng.randrange(endpoints)}"
        r = rng.random()
        if r < 0.01:
            out.append(NodeStatus(node=node, producer_epoch=1, seq=i, event_time_ms=t, kind=NodeEventKind.HEARTBEAT,
                                  ami_link=LinkState.UP))
        elif r < 0.5:
            out.append(RegistrationEvent(endpoint=ep, node=node, producer_epoch=1, seq=i, event_time_ms=t,
                                         kind=EventKind.CONTACT, source=Source.LIVE,
                                         contact_status=rng.choice(statuses), contact_uri=f"sip:{ep[6:]}@10.0.0.1"))
        else:
            out.append(QualitySample(endpoint=ep, node=node, producer_epoch=1, seq=i, event_time_ms=t,
                                     kind=QualityKind.RTCP, direction=ReportDirection.SENT,
                                     jitter_ms=rng.uniform(0, 40), fraction_lost=rng.uniform(0, 0.1), rtt_ms=1.0))
    return out


def bench_alerting(n: int = 100_000, endpoints: int = 10_000) -> dict[str, Any]:
    """Records/s through AlertEngine (objects in), and with Avro decoding in front."""
    recs = _records(n, endpoints)
    codecs = {m: Codec.for_model(m) for m in (RegistrationEvent, NodeStatus, QualitySample)}
    encoded = [(codecs[type(r)], codecs[type(r)].encode(r)) for r in recs]
    engine = AlertEngine(AlertSettings())
    feed = {RegistrationEvent: engine.on_registration, NodeStatus: engine.on_node, QualitySample: engine.on_quality}
    start = time.perf_counter()
    alerts = 0
    for i, r in enumerate(recs):
        now = r.event_time_ms
        alerts += len(feed[type(r)](r, now))  # type: ignore[operator]
        if i % 1000 == 0:
            alerts += len(engine.tick(now))
    engine_s = time.perf_counter() - start
    engine2 = AlertEngine(AlertSettings())
    feed2 = {RegistrationEvent: engine2.on_registration, NodeStatus: engine2.on_node, QualitySample: engine2.on_quality}
    start = time.perf_counter()
    for i, (codec, data) in enumerate(encoded):
        rec: Any = codec.decode(data)
        feed2[type(rec)](rec, rec.event_time_ms)  # type: ignore[operator]
        if i % 1000 == 0:
            engine2.tick(rec.event_time_ms)
    decode_s = time.perf_counter() - start
    return {
        "records": n,
        "endpoints": endpoints,
        "engine_records_per_s": round(n / engine_s),
        "decode_and_engine_records_per_s": round(n / decode_s),
        "alert_transitions": alerts,
    }


def bench_rtcp_mapping(n: int = 100_000) -> dict[str, Any]:
    """RTCP AMI messages/s turned into QualitySamples by the producer's pure mapping."""
    from producers.quality import rtcp_samples  # the producer side, measured here for the report

    msg = {"Event": "RTCPSent", "Channel": "PJSIP/1006-00000005", "To": "127.0.0.1:20425", "From": "127.0.0.1:10427",
           "MES": "88.1", "SSRC": "0x6f260e95", "PT": "200(SR)", "ReportCount": "1", "Report0SourceSSRC": "0x12345678",
           "Report0FractionLost": "3", "Report0CumulativeLost": "7", "Report0IAJitter": "55", "Report0LSR": "0"}
    start = time.perf_counter()
    for i in range(n):
        rtcp_samples(msg, node="node1", now_ms=i, epoch=1, seq=i)
    return {"rtcp_messages": n, "rtcp_messages_per_s": round(n / (time.perf_counter() - start))}


@click.command()
@click.option("--records", type=int, default=100_000, show_default=True, show_envvar=True,
              help="Records through the engine; as many RTCP messages mapped.")
@click.option("--endpoints", type=int, default=10_000, show_default=True, show_envvar=True,
              help="Endpoints the records spread over.")
def main(records: int, endpoints: int) -> None:
    """Alert engine and RTCP mapping records/s, as JSON."""
    click.echo(json.dumps({**bench_alerting(records, endpoints), **bench_rtcp_mapping(records)}, indent=2))
