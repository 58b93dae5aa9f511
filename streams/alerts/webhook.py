"""Alerts to an Alertmanager-compatible webhook: the payload and an in-order, retrying sender.

Every alert transition the alerter publishes can also be POSTed in Alertmanager's format
(``[{labels, annotations, startsAt, endsAt}]``, ``POST /api/v2/alerts``) by :class:`WebhookSender`:
a bounded queue, batches in order, retries with exponential backoff while the receiver is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from schemas.quality import Alert, AlertState

__all__ = ["WebhookSender", "WebhookMetrics", "alertmanager_payload"]

logger = logging.getLogger(__name__)


class WebhookMetrics(Protocol):
    """The series a :class:`WebhookSender` updates (the alerter's metrics provide them)."""

    webhook_sent: Any
    webhook_failures: Any
    webhook_dropped: Any
    webhook_queue: Any


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_payload(alerts: Iterable[Alert], generator_url: str = "") -> list[dict[str, Any]]:
    """Alertmanager's POST /api/v2/alerts body: labels identify the alert, endsAt resolves it."""
    out = []
    for a in alerts:
        labels = {
            "alertname": a.kind.value,
            "alert_id": a.alert_id,
            "severity": a.severity.value.lower(),
            "service": "astreg",
        }
        if a.node:
            labels["node"] = a.node
        if a.endpoint:
            labels["endpoint"] = a.endpoint
        item: dict[str, Any] = {
            "labels": labels,
            "annotations": {"summary": a.summary, "figures": json.dumps(dict(a.figures), sort_keys=True)},
            "startsAt": _iso(a.raised_at_ms),
        }
        if a.state is AlertState.RESOLVED and a.resolved_at_ms is not None:
            item["endsAt"] = _iso(a.resolved_at_ms)
        if generator_url:
            item["generatorURL"] = generator_url
        out.append(item)
    return out


class WebhookSender:
    """Delivers alerts in order to an Alertmanager-compatible URL, retrying while it is down.

    ``submit`` never blocks the engine: alerts wait in a bounded queue (the oldest are dropped,
    counted and logged when it is full); one task POSTs them in batches and retries a failed
    batch with exponential backoff (connection errors, 5xx, 429) until it is accepted.
    """

    def __init__(
        self,
        url: str,
        *,
        queue: int = 10000,
        timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
        batch: int = 100,
        metrics: WebhookMetrics | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.batch = batch
        self.metrics = metrics
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=queue)
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.dropped = 0
        self.failures = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._task = asyncio.create_task(self._run(), name="alert-webhook")

    def submit(self, alerts: Iterable[Alert]) -> None:
        for a in alerts:
            if self._queue.full():
                lost = self._queue.get_nowait()
                self.dropped += 1
                if self.metrics:
                    self.metrics.webhook_dropped.inc()
                logger.warning(
                    "webhook queue full (%d): dropped %s %s",
                    self._queue.maxsize,
                    lost.alert_id,
                    lost.state.value,
                )
            self._queue.put_nowait(a)
        if self.metrics:
            self.metrics.webhook_queue.set(self._queue.qsize())

    def pending(self) -> int:
        return self._queue.qsize()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            items = [first]
            while len(items) < self.batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            await self._deliver(items)
            for _ in items:
                self._queue.task_done()
            if self.metrics:
                self.metrics.webhook_queue.set(self._queue.qsize())

    async def _deliver(self, items: list[Alert]) -> None:
        body = alertmanager_payload(items)
        attempt = 0
        while True:
            try:
                assert self._session is not None
                async with self._session.post(self.url, json=body) as resp:
                    if resp.status < 300:
                        self.sent += len(items)
                        if self.metrics:
                            self.metrics.webhook_sent.inc(len(items))
                        return
                    text = (await resp.text())[:200]
                    if 400 <= resp.status < 500 and resp.status not in (408, 429):
                        # The receiver refuses this body: retrying the same bytes cannot help.
                        self.dropped += len(items)
                        if self.metrics:
                            self.metrics.webhook_dropped.inc(len(items))
                        logger.error(
                            "webhook %s refused %d alerts: %d %s", self.url, len(items), resp.status, text
                        )
                        return
                    reason = f"HTTP {resp.status} {text}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            attempt += 1
            self.failures += 1
            if self.metrics:
                self.metrics.webhook_failures.inc()
            delay = min(self.max_backoff_s, 0.2 * 2 ** min(attempt, 16)) * (0.5 + random.random() / 2)
            if attempt == 1 or attempt % 10 == 0:
                logger.warning(
                    "webhook %s failed (%s), attempt %d: retrying in %.1f s", self.url, reason, attempt, delay
                )
            await asyncio.sleep(delay)

    async def close(self, drain_s: float = 5.0) -> None:
        """Give queued alerts ``drain_s`` to go out, then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_s)
            if self._queue.qsize():
                logger.warning("webhook: %d alerts not delivered at shutdown", self._queue.qsize())
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()
