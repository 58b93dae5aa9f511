"""The ``astreg`` command: one entry point, one subcommand per part of the pipeline.

Subcommands live next to the code they run and are imported only when invoked, so
``astreg sink sql`` never imports Faust and ``astreg --help`` is fast. Every option has an
``ASTREG_*`` environment variable (shown in each ``--help``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys
import threading

import click

from .broker import EmbeddedBroker
from .options import build, settings_options
from .settings import KafkaSettings, TopicSettings

__all__ = ["main", "configure_logging"]

# name -> "module:attribute" of a click command; imported on first use.
SUBCOMMANDS: dict[str, str] = {
    "broker": "astreg.cli:broker",
    "topics": "astreg.cli:topics",
    "simulate": "producers.simulator.cli:simulate",
    "producer": "producers.cli:producer",
    "worker": "streams.cli:worker",
    "sink": "sinks.cli:sink",
    "demo": "astreg.demo:demo",
    "bench": "astreg.bench:bench",
    "alerts": "streams.alerts_cli:alerts",
}


def configure_logging(level: str = "INFO") -> None:
    """Configure logging once, in the entry point."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            if ctx.resilient_parsing or ctx.info_name is None:
                return None
            raise click.ClickException(f"subcommand {cmd_name!r} is not available: {exc}") from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every subsystem: show names only.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUBCOMMANDS[name].split(":")[0]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--log-level", default="INFO", envvar="ASTREG_LOG_LEVEL", show_envvar=True, help="Logging level.")
def main(log_level: str) -> None:
    """astreg: where is every phone of an Asterisk cluster registered, right now."""
    configure_logging(log_level)


def wait_for_signal() -> None:
    """Block the main thread until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass


@click.command()
@click.option("--port", type=int, default=None, envvar="ASTREG_BROKER_PORT", show_envvar=True,
              help="Port on 127.0.0.1 (a free one when not given).")
@click.option("--create-topics/--no-create-topics", default=False, envvar="ASTREG_BROKER_CREATE_TOPICS",
              show_envvar=True, help="Create the contract's topics once the broker is up.")
@settings_options(TopicSettings)
def broker(port: int | None, create_topics: bool, **kw: object) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) until SIGINT/SIGTERM."""
    (tset,) = build(kw, TopicSettings)
    b = EmbeddedBroker(port=port).start()
    try:
        if create_topics:
            from .topics import ensure_topics

            kafka = KafkaSettings(bootstrap=b.bootstrap, embedded=True)
            asyncio.run(ensure_topics(kafka, tset))
        click.echo(f"bootstrap={b.bootstrap}", nl=True)
        sys.stdout.flush()
        wait_for_signal()
    finally:
        b.stop()


@click.group()
def topics() -> None:
    """Manage the contract's topics."""


@topics.command("create")
@settings_options(KafkaSettings, TopicSettings)
def topics_create(**kw: object) -> None:
    """Create every topic (idempotent); fail on a mismatched existing layout."""
    from .errors import ConfigError
    from .topics import ensure_topics

    kafka, tset = build(kw, KafkaSettings, TopicSettings)
    try:
        checks = asyncio.run(ensure_topics(kafka, tset))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for c in checks:
        click.echo(f"{c.action:8} {c.name} partitions={c.partitions} cleanup.policy={c.cleanup_policy or '?'}")


if __name__ == "__main__":  # pragma: no cover
    main()
