"""``astreg producer``: run the producer of one Asterisk node until SIGTERM/SIGINT.

    ASTREG_AMI_SECRET=S astreg producer --ami 127.0.0.1:5038 --ami-user astreg --node-key-file node1.key \
        --bootstrap kafka:9092

Every option is also an ``ASTREG_*`` environment variable (see ``--help``); secrets are never
logged. On SIGTERM the producer sends a STOPPED record and flushes (bounded) before exiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from astreg.errors import ConfigError, ProducerFenced
from astreg.options import build, settings_options
from astreg.preflight import preflight
from astreg.runtime import tune_gc
from astreg.settings import KafkaSettings, TopicSettings

from .node import NodeProducer, ProducerSettings

__all__ = ["producer", "FENCED_EXIT"]

FENCED_EXIT = 3

logger = logging.getLogger(__name__)


@click.command()
@settings_options(ProducerSettings, KafkaSettings, TopicSettings)
def producer(**kw: object) -> None:
    """Stream one Asterisk node's registrations from the AMI to Kafka."""
    settings, kafka, topics = build(kw, ProducerSettings, KafkaSettings, TopicSettings)
    try:
        settings.signer(settings.node or "-")  # the key file is readable and private, before anything starts
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    preflight(kafka, [topics.topic_registrations, topics.topic_nodes, topics.topic_deadletter])
    tune_gc()  # a record per AMI event: fewer GC runs, more events per CPU-s (docs/benchmarks.md)
    try:
        asyncio.run(_main(settings, kafka, topics))
    except ProducerFenced as exc:
        # Exit status 3: systemd's RestartPreventExitStatus=3 keeps a fenced producer stopped
        # (restarting it would fence the newer one in turn).
        click.echo(f"astreg producer: {exc}", err=True)
        raise SystemExit(FENCED_EXIT) from None
    except ConfigError as exc:
        click.echo(f"astreg producer: {exc}", err=True)
        raise SystemExit(2) from None


async def _main(settings: ProducerSettings, kafka: KafkaSettings, topics: TopicSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info("producer for AMI %s → Kafka %r", settings.ami, kafka)
    await NodeProducer(settings, kafka, topics).run_forever(stop)
