"""Test helpers for the alerter: an Alertmanager-like HTTP receiver that can be down, record
producers for the input topics, and the alerter's environment.

``Receiver`` listens on 127.0.0.1 (start/stop at will on the same port) and keeps every alert
it accepted; ``Feeder`` sends RegistrationEvents, NodeStatus and QualitySamples with the real
codecs, stamped with the producer's (epoch, seq).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaProducer

from astreg.settings import KafkaSettings, TopicSettings
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
from schemas.quality import Alert, AlertState, QualityKind, QualitySample, ReportDirection
from tests.support.locations import signed

__all__ = ["Receiver", "Feeder", "free_port", "alerter_env", "wait_until", "by_id"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Receiver:
    """A local stand-in for Alertmanager's POST /api/v2/alerts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/api/v2/alerts"
        self.received: list[dict[str, Any]] = []
        self.posts = 0
        self._runner: web.AppRunner | None = None

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert isinstance(body, list)
        self.posts += 1
        self.received.extend(body)
        return web.json_response({"status": "success"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Feeder:
    """Sends input records as the producers and workers would."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings) -> None:
        self.kafka = kafka
        self.topics = topics
        self._seq = itertools.count(1)
        self.epoch = int(time.time() * 1000)
        self._producer: AIOKafkaProducer | None = None
        self._codecs = {m: Codec.for_model(m) for m in (RegistrationEvent, NodeStatus, QualitySample)}

    async def __aenter__(self) -> Feeder:
        self._producer = AIOKafkaProducer(**self.kafka.aiokafka_kwargs(), enable_idempotence=self.kafka.idempotent,
                                          linger_ms=0)
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._producer is not None
        await self._producer.stop()

    @staticmethod
    def now() -> int:
        return int(time.time() * 1000)

    async def send(self, *records: RegistrationEvent | NodeStatus | QualitySample) -> None:
        assert self._producer is not None
        for r in records:
            if isinstance(r, NodeStatus):
                topic, key, part = self.topics.topic_nodes, r.node, 0
            elif isinstance(r, RegistrationEvent):
                topic, key, part = self.topics.topic_registrations, r.endpoint, None
            else:
                topic, key, part = self.topics.topic_quality, r.endpoint, None
            value = self._codecs[type(r)].encode(r)
            kind = {NodeStatus: b"nodes", RegistrationEvent: b"registrations"}.get(type(r), b"quality")
            synthetic = isinstance(r, RegistrationEvent) and r.source is Source.SYNTHETIC
            await self._producer.send(topic, value, key=key.encode(), partition=part,
                                      headers=signed(kind, r.node, key.encode(), value, synthetic))
        await self._producer.flush()

    def node(self, node: str, kind: NodeEventKind = NodeEventKind.HEARTBEAT, link: LinkState = LinkState.UP) -> NodeStatus:
        return NodeStatus(node=node, producer_epoch=self.epoch, seq=next(self._seq), event_time_ms=self.now(),
                          kind=kind, ami_link=link, heartbeat_interval_ms=500)

    def contact(self, node: str, endpoint: str, status: ContactStatus, source: Source = Source.LIVE,
                kind: EventKind = EventKind.CONTACT, epoch: int | None = None, seq: int | None = None) -> RegistrationEvent:
        return RegistrationEvent(endpoint=endpoint, node=node, producer_epoch=epoch or self.epoch,
                                 seq=seq or next(self._seq), event_time_ms=self.now(), kind=kind, source=source,
                                 contact_status=status if kind is EventKind.CONTACT else None,
                                 contact_uri=f"sip:{endpoint.split('/')[-1]}@10.0.0.9:5060")

    def rtcp(self, node: str, endpoint: str, jitter_ms: float, loss: float) -> QualitySample:
        return QualitySample(endpoint=endpoint, node=node, producer_epoch=self.epoch, seq=next(self._seq),
                             event_time_ms=self.now(), kind=QualityKind.RTCP, direction=ReportDirection.SENT,
                             channel=f"{endpoint}-0000000a", jitter_ms=jitter_ms, fraction_lost=loss,
                             clock_rate=8000, rtt_ms=1.0, mes=80.0)


def alerter_env(kafka: KafkaSettings, topics: TopicSettings, **extra: object) -> dict[str, str]:
    env = {
        "ASTREG_BOOTSTRAP": kafka.bootstrap,
        "ASTREG_EMBEDDED": "true" if kafka.embedded else "false",
        "ASTREG_TOPIC_REGISTRATIONS": topics.topic_registrations,
        "ASTREG_TOPIC_NODES": topics.topic_nodes,
        "ASTREG_TOPIC_LOCATIONS": topics.topic_locations,
        "ASTREG_TOPIC_DEADLETTER": topics.topic_deadletter,
        "ASTREG_TOPIC_QUALITY": topics.topic_quality,
        "ASTREG_TOPIC_ALERTS": topics.topic_alerts,
        "ASTREG_PARTITIONS": str(topics.partitions),
    }
    env.update({f"ASTREG_{k.upper()}": str(v) for k, v in extra.items()})
    return env


async def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    """Poll an (async or plain) check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(every)  # poll interval of this bounded wait


def by_id(alerts: list[Alert]) -> dict[str, list[AlertState]]:
    out: dict[str, list[AlertState]] = {}
    for a in alerts:
        out.setdefault(a.alert_id, []).append(a.state)
    return out
