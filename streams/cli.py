"""``astreg worker``: run one stream worker (any number share the partitions).

    astreg worker --bootstrap 127.0.0.1:9092 --web-port 6066 --data-dir /var/lib/astreg

Creates the topics it needs (with the table changelog, same partition count), builds the app
(``streams.app.create_app``), attaches the web views when ``streams.web.views`` provides
``register(stream)``, and runs Faust's worker until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import click

from astreg import patches
from astreg.errors import ConfigError
from astreg.options import build, settings_options
from astreg.preflight import preflight
from astreg.runtime import tune_gc
from astreg.settings import KafkaSettings, TopicSettings
from astreg.topics import ensure_topics

from .settings import WorkerSettings
from .web.settings import WebSettings

__all__ = ["worker", "clear_faust_env", "quiet_worker"]

logger = logging.getLogger(__name__)

# Faust reads these from the environment and lets them override code: keep them out.
_FAUST_ENV_PREFIXES = ("BROKER_", "APP_", "STORE_", "TABLE_", "TOPIC_", "WEB_", "WORKER_", "CONSUMER_",
                       "PRODUCER_", "STREAM_", "RECOVERY_", "CACHE_", "PROCESSING_", "AGENT_", "NODE_CANONICAL_URL",
                       "CYTHON_", "BLOCKING_", "TIMEZONE", "AEROSPIKE_", "CRASH_APP_")


def clear_faust_env() -> list[str]:
    removed = [k for k in os.environ if k.startswith(_FAUST_ENV_PREFIXES)]
    for k in removed:
        del os.environ[k]
    return removed


@click.command()
@settings_options(KafkaSettings, TopicSettings, WorkerSettings, WebSettings)
def worker(**kw: object) -> None:
    """Run a stream worker: registrations → locations table and topic.

    Reads the registrations and nodes topics, keeps the locations table, publishes it to the
    locations topic and serves the web page and API."""
    kafka, topics, settings, web = build(kw, KafkaSettings, TopicSettings, WorkerSettings, WebSettings)
    try:
        settings.verifier()  # a key, readable and private, before anything starts
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    preflight(kafka)  # the worker creates missing topics itself (ensure_topics below)
    removed = clear_faust_env()
    if removed:
        logger.warning("ignoring Faust environment variables %s (use ASTREG_* options)", removed)
    # Faust is imported here, not at the top: ``astreg worker --help`` stays quick.
    from faust.worker import Worker

    from .app import app_id_for, create_app
    from .topics import changelog_specs
    from .web import views

    asyncio.run(ensure_topics(kafka, topics, extra=changelog_specs(app_id_for(topics, settings), topics)))
    patches.install(kafka, faust=True)  # the embedded broker's group, end offsets and fetch wait
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stream = create_app(kafka, topics, settings)
    views.register(stream, web)
    logger.info("worker %s starting (app %s, store %s, web port %d)", settings.worker_id, stream.app.conf.id,
                settings.store, settings.web_port)
    tune_gc()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    quiet_worker(Worker(stream.app, loglevel=level, quiet=True, redirect_stdouts=False)).execute_from_commandline()


def quiet_worker(worker: Any) -> Any:
    """No terminal spinner: at log level WARNING or above Faust's spinner sets the root logger
    to DEBUG, so every debug call of aiokafka/Faust (one per record sent) builds a LogRecord."""
    worker.spinner = None
    return worker
