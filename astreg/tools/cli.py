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
from pathlib import Path

import click

from astreg.broker import EmbeddedBroker
from astreg.options import build, settings_options
from astreg.settings import KafkaSettings, TopicSettings

__all__ = [
    "main", "configure_logging", "LazyGroup", "wait_for_signal", "broker", "kafka", "topics",
    "topics_create", "keys", "keys_new", "keys_derive",
]

# name -> ("module:attribute" of a click command, one line of help). Commands are imported on
# first use; ``astreg --help`` shows these lines without importing them (tests/unit/test_cli_help.py
# checks that each line is its command's own short help).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "alerts": ("streams.alerts.cli:alerts", "Call quality and cluster alerts."),
    "bench": ("astreg.tools.bench.cli:bench", "Measure astreg against its baselines on this machine."),
    "broker": ("astreg.tools.cli:broker",
               "Run the embedded Kafka-compatible broker (Tansu)."),
    "demo": ("astreg.tools.demo:demo",
             "Run the whole pipeline on this machine, embedded broker included."),
    "kafka": ("astreg.tools.cli:kafka",
              "Run Apache Kafka (KRaft) on loopback from Maven Central's jars."),
    "keys": ("astreg.tools.cli:keys", "Make the cluster secret and the nodes' signing keys."),
    "producer": ("producers.cli:producer", "Stream one Asterisk node's registrations from the AMI to Kafka."),
    "simulate": ("producers.simulator.cli:simulate",
                 "Run simulated Asterisk 22 nodes speaking AMI."),
    "sink": ("sinks.cli:sink", "Keep a store (SQL, AstDB, Redis) equal to the locations topic."),
    "topics": ("astreg.tools.cli:topics", "Manage the contract's topics."),
    "worker": ("streams.cli:worker",
               "Run a stream worker: registrations → locations table and topic."),
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
        entry = SUBCOMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, _, attr = entry[0].partition(":")
        try:
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        except (ImportError, AttributeError) as exc:
            if ctx.resilient_parsing or ctx.info_name is None:
                return None
            raise click.ClickException(f"subcommand {cmd_name!r} is not available: {exc}") from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every subsystem: show names only.
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)])


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
    """Run the embedded Kafka-compatible broker (Tansu).

    Runs until SIGINT/SIGTERM."""
    from astreg.errors import ConfigError

    (tset,) = build(kw, TopicSettings)
    try:
        b = EmbeddedBroker(port=port).start()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        if create_topics:
            from astreg.topics import ensure_topics

            kafka = KafkaSettings(bootstrap=b.bootstrap, embedded=True)
            asyncio.run(ensure_topics(kafka, tset))
        click.echo(f"bootstrap={b.bootstrap}", nl=True)
        sys.stdout.flush()
        wait_for_signal()
    finally:
        b.stop()


@click.command()
@click.option("--brokers", type=click.Choice(["1", "3"]), default="1", envvar="ASTREG_KAFKA_BROKERS",
              show_envvar=True, help="Brokers in the cluster (each also a KRaft controller).  [default: 1]")
@click.option("--port", type=int, default=None, envvar="ASTREG_KAFKA_PORT", show_envvar=True,
              help="Client port of the first broker (the next ones: +1, +2); free ports when not given.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, envvar="ASTREG_KAFKA_DATA_DIR",
              show_envvar=True, help="Keep the cluster here across restarts; a temporary one when not given.")
@click.option("--protocol", type=click.Choice(["PLAINTEXT", "SASL_SSL", "SASL_PLAINTEXT", "SSL"]),
              default="PLAINTEXT", envvar="ASTREG_KAFKA_PROTOCOL", show_envvar=True,
              help="Security of the client listener (SASL = SCRAM-SHA-512/256; SSL: a CA made in the "
              "data dir).  [default: PLAINTEXT]")
@click.option("--sasl-user", default="astreg", envvar="ASTREG_KAFKA_SASL_USER", show_envvar=True,
              help="SCRAM user created with the cluster (SASL protocols).  [default: astreg]")
@click.option("--sasl-password-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              default=None, envvar="ASTREG_KAFKA_SASL_PASSWORD_FILE", show_envvar=True,
              help="File holding that user's password (or set ASTREG_KAFKA_SASL_PASSWORD).")
@click.option("--config", "extra", multiple=True, metavar="KEY=VALUE",
              help="Extra broker property (repeatable), e.g. group.initial.rebalance.delay.ms=0.")
@click.option("--heap", default="512m", envvar="ASTREG_KAFKA_HEAP", show_envvar=True,
              help="JVM heap of each broker.  [default: 512m]")
@click.option("--fetch-only", is_flag=True, help="Fetch the broker's jars into the cache and exit.")
@click.option("--create-topics/--no-create-topics", default=False, envvar="ASTREG_KAFKA_CREATE_TOPICS",
              show_envvar=True, help="Create the contract's topics once the cluster is up.")
@settings_options(TopicSettings)
def kafka(brokers: str, port: int | None, data_dir: Path | None, protocol: str, sasl_user: str,
          sasl_password_file: Path | None, extra: tuple[str, ...], heap: str, fetch_only: bool,
          create_topics: bool, **kw: object) -> None:
    """Run Apache Kafka (KRaft) on loopback from Maven Central's jars.

    Runs until SIGINT/SIGTERM."""
    import os

    from astreg.errors import ConfigError
    from astreg.kafka import ApacheKafka, KafkaRuntime, ScramUser

    try:
        if fetch_only:
            runtime = KafkaRuntime()
            runtime.java()
            click.echo(f"kafka={runtime.version} lib={runtime.ensure()}")
            return
        config = {}
        for item in extra:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--config {item!r} is not KEY=VALUE")
            config[key.strip()] = value
        users = []
        if protocol.startswith("SASL"):
            password = (sasl_password_file.read_text().strip() if sasl_password_file
                        else os.environ.get("ASTREG_KAFKA_SASL_PASSWORD", ""))
            if not password:
                raise ConfigError(f"--protocol {protocol} needs --sasl-password-file or ASTREG_KAFKA_SASL_PASSWORD")
            users = [ScramUser(sasl_user, password)]
        (tset,) = build(kw, TopicSettings)
        cluster = ApacheKafka(brokers=int(brokers), port=port, data_dir=data_dir, protocol=protocol,
                              users=users, config=config, heap=heap)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.start()
        if create_topics:
            from astreg.topics import ensure_topics

            asyncio.run(ensure_topics(cluster.client_settings(embedded=False), tset))
        click.echo(f"bootstrap={cluster.bootstrap}")
        click.echo(f"security_protocol={protocol}")
        if cluster.ca_file is not None:
            click.echo(f"ssl_cafile={cluster.ca_file}")
        click.echo(f"data_dir={cluster.data_dir}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            dead = [i for i in range(1, int(brokers) + 1) if i not in cluster.alive()]
            if dead:
                raise ConfigError(f"Kafka broker {dead[0]} exited:\n{cluster.log_tail(dead[0])}")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        cluster.stop()


@click.group()
def topics() -> None:
    """Manage the contract's topics."""


@topics.command("create")
@settings_options(KafkaSettings, TopicSettings)
def topics_create(**kw: object) -> None:
    """Create every topic (idempotent); fail on a mismatched existing layout."""
    from astreg.errors import ConfigError
    from astreg.topics import ensure_topics

    kafka, tset = build(kw, KafkaSettings, TopicSettings)
    from astreg.preflight import preflight

    preflight(kafka)
    try:
        checks = asyncio.run(ensure_topics(kafka, tset))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for c in checks:
        click.echo(f"{c.action:8} {c.name} partitions={c.partitions} cleanup.policy={c.cleanup_policy or '?'}")


@click.group()
def keys() -> None:
    """Make the cluster secret and the nodes' signing keys.

    The workers hold the cluster secret (--cluster-key-file); each producer holds only its own
    node's key (--node-key-file), derived from the secret, so it can sign for its node and no
    other (docs/security.md)."""


@keys.command("new")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def keys_new(path: Path) -> None:
    """Write a new cluster secret to PATH (mode 0600; never overwrites)."""
    from astreg.auth import new_secret, write_key
    from astreg.errors import ConfigError

    try:
        write_key(path, new_secret())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"cluster secret written to {path}")


@keys.command("derive")
@click.option("--cluster-key-file", type=click.Path(path_type=Path, dir_okay=False), required=True,
              envvar="ASTREG_CLUSTER_KEY_FILE", show_envvar=True, help="The cluster secret (astreg keys new).")
@click.option("--node", required=True, help="The node id the key signs for (the producer's --node).")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def keys_derive(cluster_key_file: Path, node: str, path: Path) -> None:
    """Write node NODE's signing key to PATH (mode 0600), for that node's producer only."""
    from astreg.auth import derive_node_key, load_key, write_key
    from astreg.errors import ConfigError
    from schemas.validate import node_id_problem

    problem = node_id_problem(node)
    if problem:
        raise click.BadParameter(problem, param_hint="--node")
    try:
        write_key(path, derive_node_key(load_key(cluster_key_file), node))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"key of node {node} written to {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
