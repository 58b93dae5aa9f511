"""``astreg sink sql|astdb|redis``: run one sink until SIGINT/SIGTERM.

Every option is also an ``ASTREG_*`` environment variable (shown in ``--help``): Kafka and topic
names as for every astreg command, ``ASTREG_SINK_*`` for the runner (group, rebuild, batching,
metrics port) and ``ASTREG_SQL_*`` / ``ASTREG_AMI_*`` / ``ASTREG_REDIS_*`` for the store.
Example: ``astreg sink sql --bootstrap kafka:9092 --url postgresql+asyncpg://u@db/astreg``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from astreg.errors import ConfigError
from astreg.options import build, settings_options
from astreg.preflight import preflight
from astreg.settings import KafkaSettings, TopicSettings

from .settings import AstDbSettings, RedisSettings, RunnerSettings, SqlSettings

__all__ = ["sink", "sql", "redis", "astdb"]

logger = logging.getLogger(__name__)


def _run(store: Any, kw: dict[str, Any]) -> None:
    from .base import SinkRunner  # aiokafka only when a sink runs, not for --help

    kafka, topics, runner_settings = build(kw, KafkaSettings, TopicSettings, RunnerSettings)
    preflight(kafka, [topics.topic_locations, topics.topic_deadletter])

    async def main() -> None:
        runner = SinkRunner(store, kafka, topics, runner_settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runner.stop)
        await runner.run()

    try:
        asyncio.run(main())
    except ConfigError as exc:  # fatal: wrong credentials, no such database — one line, exit 1
        raise click.ClickException(str(exc)) from exc


@click.group()
def sink() -> None:
    """Keep a store (SQL, AstDB, Redis) equal to the locations topic."""


@sink.command()
@settings_options(KafkaSettings, TopicSettings, RunnerSettings)
@settings_options(SqlSettings)
def sql(**kw: Any) -> None:
    """Table astreg_locations in SQLite (WAL), PostgreSQL or MariaDB/MySQL."""
    from .sql import SqlSink

    (settings,) = build(kw, SqlSettings)
    _run(SqlSink(settings), kw)


@sink.command()
@settings_options(KafkaSettings, TopicSettings, RunnerSettings)
@settings_options(RedisSettings)
def redis(**kw: Any) -> None:
    """Hash <prefix>loc:<endpoint> and string <prefix>node:<resource> per endpoint."""
    from .redis import RedisSink

    (settings,) = build(kw, RedisSettings)
    _run(RedisSink(settings), kw)


@sink.command()
@settings_options(KafkaSettings, TopicSettings, RunnerSettings)
@settings_options(AstDbSettings)
def astdb(**kw: Any) -> None:
    """AstDB family astreg on one or more Asterisk nodes through AMI (DBPut/DBDel)."""
    from .astdb import AstDbSink

    (settings,) = build(kw, AstDbSettings)
    _run(AstDbSink(settings), kw)
