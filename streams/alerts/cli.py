"""``astreg alerts``: run the alerter, or show the alerts active right now.

``astreg alerts run`` consumes the nodes, registrations and quality topics, raises and resolves
alerts (``streams/alerts/engine.py``) and publishes them on ``asterisk.alerts.v1`` (and to
``--alert-webhook`` in Alertmanager's format). ``astreg alerts show`` is a plain aiokafka reader
of the compacted alerts topic that prints the active alerts and exits once it has caught up: the
example for other teams' consumers (``--json`` for one JSON object per line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from datetime import UTC, datetime
from typing import Any

import click

from astreg.options import build, settings_options
from astreg.preflight import preflight
from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import to_dict
from streams.alerts.engine import AlertSettings
from streams.alerts.runner import Alerter, AlerterSettings, active_alerts, read_alerts

__all__ = ["alerts", "run", "show"]

logger = logging.getLogger(__name__)


@click.group()
def alerts() -> None:
    """Call quality and cluster alerts."""


@alerts.command("run")
@settings_options(KafkaSettings, TopicSettings, AlertSettings, AlerterSettings)
def run(**kw: Any) -> None:
    """Run the alerter until SIGINT/SIGTERM."""
    kafka, topics, thresholds, settings = build(kw, KafkaSettings, TopicSettings, AlertSettings, AlerterSettings)
    preflight(kafka, [topics.topic_quality, topics.topic_alerts])

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Alerter(kafka, topics, thresholds, settings).run(stop)

    asyncio.run(main())


@alerts.command("show")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per active alert.")
@click.option("--timeout", type=float, default=15.0, show_default=True, help="Give up reading after this long (s).")
@settings_options(KafkaSettings, TopicSettings)
def show(as_json: bool, timeout: float, **kw: Any) -> None:
    """Print the alerts active now (read the compacted alerts topic to its end, then exit)."""
    kafka, topics = build(kw, KafkaSettings, TopicSettings)
    try:
        active = active_alerts(asyncio.run(read_alerts(kafka, topics.topic_alerts, timeout=timeout)))
    except (TimeoutError, Exception) as exc:  # noqa: BLE001 - a clear message instead of a traceback
        raise click.ClickException(f"cannot read {topics.topic_alerts}: {exc}") from exc
    for a in active:
        if as_json:
            click.echo(json.dumps(to_dict(a), sort_keys=True))
        else:
            since = datetime.fromtimestamp(a.raised_at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(f"{a.severity.value:8} {a.kind.value:18} {a.alert_id}  since {since}Z  {a.summary}")
    if not as_json:
        click.echo(f"{len(active)} active alert(s) in {topics.topic_alerts}")
