"""The alerter process: Kafka in, the alerting engine, Avro alerts (and an optional webhook) out.

``astreg alerts run`` (``streams/alerts/cli.py``) builds an :class:`Alerter` from settings. It
reads ``asterisk.nodes.v1`` from the beginning (compacted: the nodes' last word) and
``asterisk.registrations.v1`` / ``asterisk.quality.v1`` from ``lookback`` ago (the longest
window; records older than every window cannot change an alert), feeds
:class:`~streams.alerts.engine.AlertEngine`, ticks it every ``tick`` seconds and publishes each
transition as an Avro ``Alert`` keyed by alert id on the compacted ``asterisk.alerts.v1``. The
active alerts are read back from that topic at start, so a restarted alerter neither repeats a
RAISED nor forgets to RESOLVE. It keeps no consumer group: run one alerter per cluster.

With ``--alert-webhook URL`` every transition is also POSTed in Alertmanager's format by
:class:`~streams.alerts.webhook.WebhookSender` (``streams/alerts/webhook.py``). ``/metrics``
(Prometheus) and ``/quality`` (JSON figures per endpoint) are served on ``--alert-metrics-port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import Field

from astreg.deadletter import deadletter_headers
from astreg.errors import UndecodableRecord
from astreg.patches.aiokafka import refresh_metadata
from astreg.settings import AuthSettings, KafkaSettings, TopicSettings
from schemas.codec import Codec
from schemas.models import EventKind, NodeStatus, RegistrationEvent, Source
from schemas.quality import Alert, AlertState, QualitySample
from streams.alerts.engine import AlertEngine, AlertSettings
from streams.alerts.metrics import AlerterMetrics
from streams.alerts.webhook import WebhookSender
from streams.silence import BLIND_AFTER_MS, FLOW_GRACE_MS

__all__ = [
    "AlerterSettings",
    "Alerter",
    "read_alerts",
    "active_alerts",
]

logger = logging.getLogger(__name__)


class AlerterSettings(AuthSettings):
    """How the alerter runs (``ASTREG_ALERT_*``; the cluster key like the workers')."""

    alert_webhook: str | None = Field(
        None, description="Alertmanager-compatible URL to POST alerts to (e.g. http://am:9093/api/v2/alerts)."
    )
    alert_webhook_queue: int = Field(
        10000, ge=1, description="Alerts waiting for the webhook before the oldest are dropped."
    )
    alert_webhook_timeout_s: float = Field(5.0, gt=0, description="Timeout of one webhook POST (s).")
    alert_webhook_max_backoff_s: float = Field(
        30.0, gt=0, description="Longest pause between webhook retries (s)."
    )
    alert_webhook_resend_s: float = Field(
        0.0,
        ge=0,
        description="Re-send active alerts this often (s; 0 = never), for Alertmanager's resolve_timeout.",
    )
    alert_tick_s: float = Field(
        1.0, gt=0, description="How often time-based conditions are re-evaluated (s)."
    )
    alert_metrics_port: int | None = Field(
        None, description="Port of /metrics and /quality (unset = not served)."
    )
    alert_metrics_host: str = Field("127.0.0.1", description="Bind address of /metrics and /quality.")


# ---------------------------------------------------------------- reading the alerts topic


async def read_alerts(kafka: KafkaSettings, topic: str, timeout: float = 10.0) -> list[Alert]:
    """Every Alert record of the topic in order, up to the fetch high watermark.

    The high watermark comes from Fetch responses, not ``end_offsets()``: the embedded broker
    answers ListOffsets "latest" wrongly. Undecodable records are logged and skipped.
    """
    codec = Codec.for_model(Alert)
    consumer = AIOKafkaConsumer(
        **kafka.aiokafka_kwargs(),
        client_id=f"{kafka.client_id}-alerts-reader",
        enable_auto_commit=False,
        group_id=None,
    )
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a failed start leaves its client open
        raise
    try:
        tps = await _partitions(consumer, topic)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Alert] = []
        done: set[TopicPartition] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(done) < len(tps):
            if loop.time() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout:g} s")
            batches = await consumer.getmany(timeout_ms=200)
            for tp, records in batches.items():
                for r in records:
                    if r.value is None:
                        continue
                    try:
                        out.append(
                            codec.decode(r.value, topic=tp.topic, partition=tp.partition, offset=r.offset)
                        )
                    except UndecodableRecord as exc:
                        logger.warning("skipping %s", exc)
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is not None and await consumer.position(tp) >= hw:
                    done.add(tp)
        return out
    finally:
        await consumer.stop()


async def _at_end(consumer: AIOKafkaConsumer) -> bool:
    """Every assigned partition read up to its fetch high watermark (not ListOffsets: see above)."""
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        if hw is None or await consumer.position(tp) < hw:
            return False
    return True


def active_alerts(alerts: Iterable[Alert]) -> list[Alert]:
    """Fold alert records as a compacted topic would: the last record per id, RAISED ones."""
    last: dict[str, Alert] = {}
    for a in alerts:
        last[a.alert_id] = a
    return sorted((a for a in last.values() if a.state is AlertState.RAISED), key=lambda a: a.alert_id)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    parts = consumer.partitions_for_topic(topic)
    if not parts:
        await refresh_metadata(consumer)  # first metadata may not list it yet
        parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        raise KafkaError(f"topic {topic} does not exist (astreg topics create)")
    return [TopicPartition(topic, p) for p in sorted(parts)]


# ---------------------------------------------------------------- the runner


class Alerter:
    """Consume, evaluate, publish. ``await Alerter(...).run(stop)`` until ``stop`` is set."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        alerts: AlertSettings | None = None,
        settings: AlerterSettings | None = None,
        clock: Callable[[], float] = time.time,
        metrics: AlerterMetrics | None = None,
    ) -> None:
        self.kafka = kafka
        self.topics = topics
        self.settings = settings or AlerterSettings()
        self.engine = AlertEngine(alerts or AlertSettings())
        self.clock = clock
        self._flow_at: int | None = None  # when the last record of any node arrived
        self.metrics = metrics or AlerterMetrics()
        self._codecs: dict[str, Codec[Any]] = {
            topics.topic_registrations: Codec.for_model(RegistrationEvent),
            topics.topic_nodes: Codec.for_model(NodeStatus),
            topics.topic_quality: Codec.for_model(QualitySample),
        }
        self._alert_codec = Codec.for_model(Alert)
        # A forged record must not raise (or resolve) an alert: records are checked like the
        # workers check them (astreg/auth.py).
        self.verifier = self.settings.verifier()
        self._kinds = {topics.topic_registrations: b"registrations", topics.topic_nodes: b"nodes",
                       topics.topic_quality: b"quality"}
        self.webhook: WebhookSender | None = None
        self.ready = asyncio.Event()
        self.published = 0
        self._pending_dead: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def lookback_ms(self) -> int:
        s = self.engine.s
        longest = max(
            s.alert_storm_window_s,
            s.alert_contact_loss_window_s,
            s.alert_flapping_window_s,
            s.alert_quality_window_s,
            s.alert_snapshot_window_s,
        )
        return int(longest * 1000)

    async def run(self, stop: asyncio.Event) -> None:
        restored = await self._restore(stop)
        if stop.is_set():
            return
        self.engine.restore(restored)
        for a in restored:
            self.metrics.active.labels(a.kind.value).inc()
        logger.info("alerter: %d active alerts restored from %s", len(restored), self.topics.topic_alerts)
        producer = AIOKafkaProducer(
            **self.kafka.aiokafka_kwargs(),
            client_id=f"{self.kafka.client_id}-alerter",
            enable_idempotence=self.kafka.idempotent,
            acks="all",
        )
        consumer = AIOKafkaConsumer(
            **self.kafka.aiokafka_kwargs(),
            client_id=f"{self.kafka.client_id}-alerter",
            enable_auto_commit=False,
            group_id=None,
        )
        site = await self._serve_metrics()
        await producer.start()
        await consumer.start()
        if self.settings.alert_webhook:
            self.webhook = WebhookSender(
                self.settings.alert_webhook,
                queue=self.settings.alert_webhook_queue,
                timeout_s=self.settings.alert_webhook_timeout_s,
                max_backoff_s=self.settings.alert_webhook_max_backoff_s,
                metrics=self.metrics,
            )
            await self.webhook.start()
        try:
            await self._assign(consumer)
            self.ready.set()
            logger.info(
                "alerter running: %s, %s, %s -> %s",
                self.topics.topic_nodes,
                self.topics.topic_registrations,
                self.topics.topic_quality,
                self.topics.topic_alerts,
            )
            tick_ms = int(self.settings.alert_tick_s * 1000)
            last_tick = last_metrics = last_resend = 0
            # No tick before the lookback is read: a restored alert would resolve for lack of data.
            catch_up_until = self.now_ms() + 30_000
            caught_up = False
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=min(tick_ms, 500), max_records=2000)
                now = self.now_ms()
                out: list[Alert] = []
                for tp, records in batches.items():
                    for r in records:
                        out += self._feed(tp, r, now)
                if not caught_up:
                    caught_up = now > catch_up_until or await _at_end(consumer)
                    if caught_up:
                        logger.info("alerter caught up with its inputs")
                if caught_up and now - last_tick >= tick_ms:
                    out += self.engine.tick(self._judged_now(consumer, now))
                    last_tick = now
                if out or self._pending_dead:
                    await self._publish_until_sent(producer, out, stop)
                if now - last_metrics >= 5000:
                    self.metrics.set_quality(self.engine, now)
                    last_metrics = now
                resend = self.settings.alert_webhook_resend_s * 1000
                if self.webhook and resend and now - last_resend >= resend:
                    self.webhook.submit(self.engine.active())
                    last_resend = now
        finally:
            if self.webhook is not None:
                await self.webhook.close()
            await consumer.stop()
            await producer.stop()
            if site is not None:
                await site.cleanup()
            logger.info("alerter stopped (%d alerts published)", self.published)

    def _judged_now(self, consumer: AIOKafkaConsumer, now: int) -> int:
        """The time up to which node silence is evidence.

        * No later than the broker's last answer to a fetch of the nodes topic: an alerter that
          is late (a starved CPU, a stalled loop) or cannot reach the broker has not read the
          heartbeats written meanwhile.
        * While *no* producer's record arrives at all (every producer silent at once: the cluster
          takes no writes, or the path to it is cut, far likelier than every Asterisk failing in
          the same second), no later than the last record plus ``BLIND_AFTER_MS``, for at most
          ``FLOW_GRACE_MS``: a silence of every node is alerted that much later.
        """
        answered = consumer.last_poll_timestamp(TopicPartition(self.topics.topic_nodes, 0))
        judged = now if answered is None else min(now, int(answered))
        flow = self._flow_at
        if flow is not None and BLIND_AFTER_MS < now - flow < FLOW_GRACE_MS:
            judged = min(judged, flow + BLIND_AFTER_MS)
        return judged

    async def _restore(self, stop: asyncio.Event) -> list[Alert]:
        """The active alerts a previous run left, read back from the alerts topic (retried while
        Kafka is unreachable: the alerter waits for Kafka instead of dying)."""
        delay = 0.5
        while True:
            try:
                return active_alerts(await read_alerts(self.kafka, self.topics.topic_alerts))
            except (KafkaError, TimeoutError, OSError) as exc:
                if stop.is_set():
                    raise
                logger.warning(
                    "cannot read %s yet (%s): retrying in %.1f s", self.topics.topic_alerts, exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)

    async def _assign(self, consumer: AIOKafkaConsumer) -> None:
        nodes = await _partitions(consumer, self.topics.topic_nodes)
        recent = await _partitions(consumer, self.topics.topic_registrations) + await _partitions(
            consumer, self.topics.topic_quality
        )
        consumer.assign(nodes + recent)
        await consumer.seek_to_beginning(*nodes)
        since = self.now_ms() - self.lookback_ms()
        try:
            offsets = await consumer.offsets_for_times({tp: since for tp in recent})
        except (KafkaError, ValueError) as exc:  # a broker without timestamp lookup: read it all
            logger.warning(
                "offsets_for_times failed (%s): reading %d partitions from the beginning", exc, len(recent)
            )
            offsets = {}
        for tp in recent:
            found = offsets.get(tp)
            if found is not None:
                consumer.seek(tp, found.offset)
            else:  # no record that new (or no answer): nothing in the window before the end
                await consumer.seek_to_beginning(tp)

    def _feed(self, tp: TopicPartition, record: Any, now: int) -> list[Alert]:
        self.metrics.records.labels(tp.topic).inc()
        if record.value is None:
            return []
        codec = self._codecs[tp.topic]
        try:
            rec = codec.decode(record.value, topic=tp.topic, partition=tp.partition, offset=record.offset)
        except UndecodableRecord as exc:
            self.metrics.undecodable.labels(tp.topic).inc()
            logger.warning("skipping undecodable record: %s", exc)
            self._deadletter(tp, record, exc)
            return []
        synthetic = isinstance(rec, RegistrationEvent) and (
            rec.source is Source.SYNTHETIC or rec.kind in (EventKind.STALE, EventKind.EXPIRE, EventKind.RECONCILE))
        refused = self.verifier.check(self._kinds[tp.topic], rec.node, synthetic, record.key, record.value,
                                      record.headers)
        if refused is not None:
            self.metrics.refused.labels(tp.topic, refused).inc()
            return []
        if isinstance(rec, NodeStatus) or (isinstance(rec, RegistrationEvent) and not synthetic):
            flow, self._flow_at = self._flow_at, now
            if flow is not None and now - flow > BLIND_AFTER_MS:
                # The first record of any producer after every node was silent at once: credit
                # that gap to every node, as the workers do (streams/tables.py NodeBook.heard).
                self.engine.credit_silence(now - flow, now)
        if isinstance(rec, RegistrationEvent):
            return self.engine.on_registration(rec, now)
        if isinstance(rec, NodeStatus):
            return self.engine.on_node(rec, now)
        return self.engine.on_quality(rec, now)

    def _deadletter(self, tp: TopicPartition, record: Any, exc: UndecodableRecord) -> None:
        # Registrations and nodes are dead-lettered by the stream workers already; quality
        # samples have no other reader, so the alerter keeps the bad bytes for a human.
        if tp.topic != self.topics.topic_quality:
            return
        self._pending_dead.append(
            (
                record.key,
                record.value,
                deadletter_headers(
                    "undecodable",
                    component="alerter",
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=record.offset,
                    error=str(exc),
                ),
            )
        )

    async def _publish_until_sent(
        self, producer: AIOKafkaProducer, alerts: list[Alert], stop: asyncio.Event
    ) -> None:
        """Publish, retrying with backoff while Kafka refuses: a transition is never skipped.

        A retry after a partial failure may write a transition twice; readers fold by key, so
        the compacted state is the same (the webhook gets it once: it is fed after success)."""
        delay = 0.2
        while True:
            try:
                await self._publish(producer, alerts)
                return
            except KafkaError as exc:
                if stop.is_set():
                    logger.error(
                        "alerter stopping with %d alert transitions unpublished: %s", len(alerts), exc
                    )
                    return
                logger.warning("cannot publish %d alerts (%s): retrying in %.1f s", len(alerts), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _publish(self, producer: AIOKafkaProducer, alerts: list[Alert]) -> None:
        futures = [
            await producer.send(
                self.topics.topic_alerts, self._alert_codec.encode(a), key=a.alert_id.encode()
            )
            for a in alerts
        ]
        dead = list(self._pending_dead)
        futures += [
            await producer.send(self.topics.topic_deadletter, v, key=k, headers=h) for k, v, h in dead
        ]
        await asyncio.gather(*futures)
        del self._pending_dead[: len(dead)]  # only once Kafka has them
        self.published += len(alerts)
        for a in alerts:
            self.metrics.transitions.labels(a.kind.value, a.state.value).inc()
            self.metrics.active.labels(a.kind.value).inc(1 if a.state is AlertState.RAISED else -1)
        if self.webhook is not None:
            self.webhook.submit(alerts)

    async def _serve_metrics(self) -> web.AppRunner | None:
        if self.settings.alert_metrics_port is None:
            return None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_view)
        app.router.add_get("/quality", self._quality_view)
        app.router.add_get("/quality/{endpoint:.+}", self._endpoint_quality_view)
        app.router.add_get("/alerts", self._alerts_view)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.alert_metrics_host, self.settings.alert_metrics_port)
        await site.start()
        return runner

    async def _metrics_view(self, request: web.Request) -> web.Response:
        self.metrics.set_quality(self.engine, self.now_ms())
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def _quality_view(self, request: web.Request) -> web.Response:
        return web.json_response([s.as_dict() for s in self.engine.summaries(self.now_ms())])

    async def _endpoint_quality_view(self, request: web.Request) -> web.Response:
        found = self.engine.endpoint_quality(request.match_info["endpoint"], self.now_ms())
        if found is None:
            return web.json_response({"error": "no quality samples in the window"}, status=404)
        return web.json_response(found)

    async def _alerts_view(self, request: web.Request) -> web.Response:
        from schemas.codec import to_dict

        return web.json_response([to_dict(a) for a in self.engine.active()])
