"""The option names deploy/ files may use, per ``astreg`` command, for the deploy tests.

Two sources, checked separately: the option contract every part was given (``DOCUMENTED``,
so a typo in a unit or compose file fails), and the real click command (``real_envvars``),
resolved the way ``astreg`` resolves it: a documented command that ``astreg`` does not have, or
whose module does not import, fails the test that asks for it. Shared Kafka/topic options come
from the settings models themselves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import click
import pytest

from astreg.options import option_name
from astreg.settings import KafkaSettings, TopicSettings
from astreg.tools.cli import main

__all__ = [
    "COMMANDS",
    "DOCUMENTED",
    "documented_envvars",
    "documented_flags",
    "real_command",
    "real_envvars",
    "real_flags",
    "command_of_argv",
    "parse_with_env",
]

# Options of each command beyond KafkaSettings/TopicSettings, as fixed in the parts' briefs and
# as the parts built them: (field, env prefix). The sinks prefix their own settings
# (ASTREG_SINK_* for the runner, ASTREG_SQL_*/ASTREG_REDIS_*/ASTREG_ASTDB_* for the store).
_SINK_RUNNER = (("group", "ASTREG_SINK_"), ("rebuild", "ASTREG_SINK_"), ("metrics_port", "ASTREG_SINK_"))
DOCUMENTED: dict[str, tuple[tuple[str, str], ...]] = {
    "producer": tuple((f, "ASTREG_") for f in (
        "ami", "ami_user", "ami_secret", "ami_tls", "ami_md5", "node", "resync_interval",
        "heartbeat_interval", "buffer_size", "metrics_port", "epoch_file", "ami_secret_file", "node_key_file",
        "cluster_key_file", "insecure_no_auth",
    )),
    "worker": tuple((f, "ASTREG_") for f in (
        "web_port", "web_host", "data_dir", "store", "node_timeout", "node_grace", "expiry_grace", "api_token",
        "api_token_file", "cluster_key_file", "insecure_no_auth",
    )),
    "sink sql": (("url", "ASTREG_SQL_"), *_SINK_RUNNER),
    "sink astdb": (("ami", "ASTREG_ASTDB_"), ("ami_user", "ASTREG_ASTDB_"), ("ami_secret", "ASTREG_ASTDB_"),
                   ("ami_secret_file", "ASTREG_ASTDB_"),
                   ("family", "ASTREG_ASTDB_"), *_SINK_RUNNER),
    "sink redis": (("url", "ASTREG_REDIS_"), ("key_prefix", "ASTREG_REDIS_"), *_SINK_RUNNER),
    "topics create": (),
}
COMMANDS = tuple(DOCUMENTED)

_SHARED = tuple((f, "ASTREG_") for f in (*KafkaSettings.model_fields, *TopicSettings.model_fields))
_GROUP_ENVVARS = {"ASTREG_LOG_LEVEL"}  # option of the `astreg` group itself


def documented_envvars(command: str) -> set[str]:
    """Every ASTREG_* variable the command is documented to read."""
    return {prefix + f.upper() for f, prefix in _SHARED + DOCUMENTED[command]} | _GROUP_ENVVARS


def documented_flags(command: str) -> set[str]:
    """Every --option (and --no-option of booleans) the command is documented to take."""
    flags = set()
    for f, _ in _SHARED + DOCUMENTED[command]:
        flags.add(option_name(f))
        flags.add("--no-" + f.replace("_", "-"))
    return flags


def real_command(command: str) -> click.Command:
    """The click command (``"sink sql"`` → the ``sql`` subcommand), looked up through the
    ``astreg`` group itself; a documented command it cannot give fails the calling test."""
    cmd: click.Command = main
    path = ["astreg"]
    for name in command.split():
        if not isinstance(cmd, click.Group):
            pytest.fail(f"`{' '.join(path)}` has no subcommands, so no `astreg {command}`")
        try:
            sub = cmd.get_command(click.Context(cmd, info_name=path[-1]), name)
        except click.ClickException as exc:  # the command's module does not import
            pytest.fail(f"`astreg {command}`: {exc.format_message()}")
        if sub is None:
            pytest.fail(f"`{' '.join(path)}` has no command {name!r}: `astreg {command}` is documented "
                        "for deployment but missing")
        cmd = sub
        path.append(name)
    return cmd


def _params(cmd: click.Command) -> Iterable[click.Parameter]:
    return [p for p in cmd.params if isinstance(p, click.Option)]


def real_envvars(command: str) -> set[str]:
    out = set(_GROUP_ENVVARS)
    for p in _params(real_command(command)):
        env = p.envvar
        if isinstance(env, str):
            out.add(env)
        elif env:
            out.update(env)
        value = getattr(p, "value_envvar", None)  # a secret: --NAME-file or the variable itself
        if value:
            out.add(value)
    return out


def real_flags(command: str) -> set[str]:
    out: set[str] = set()
    for p in _params(real_command(command)):
        out.update(p.opts)
        out.update(p.secondary_opts)
    return out


def command_of_argv(argv: list[str]) -> str:
    """``["sink", "sql", "--url", "x"]`` → ``"sink sql"`` (the key of DOCUMENTED)."""
    words = [a for a in argv if not a.startswith("-")]
    for n in (2, 1):
        key = " ".join(words[:n])
        if key in DOCUMENTED:
            return key
    raise AssertionError(f"not an astreg command this deployment knows: {argv}")


def parse_with_env(command: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Parse the real command's options from ``env`` alone (click types and choices apply), then
    validate the shared settings models on them; returns the parsed parameters."""
    from astreg.options import build

    cmd = real_command(command)
    for key in [k for k in os.environ if k.startswith("ASTREG_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    ctx = cmd.make_context(command, [], resilient_parsing=False)
    params = dict(ctx.params)
    build(params, KafkaSettings, TopicSettings)  # raises click.UsageError on invalid values
    return params
