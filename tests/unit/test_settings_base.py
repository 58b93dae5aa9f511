"""One settings base: every command reads the environment the same way.

Every pydantic-settings class of the packages derives from ``astreg.settings.AstregSettings``
and differs from it in ``env_prefix`` only; an empty variable (``ASTREG_X=``) is unset for
every class, built directly or through a command's options; ``--help`` names the variables.
"""

from __future__ import annotations

import json
from typing import Any

import click
import pytest
from click.testing import CliRunner
from pydantic_settings import BaseSettings

from astreg.options import build, settings_options
from astreg.settings import AstregSettings
from tests.support.modules import import_all, subclasses

import_all()
CLASSES = [c for c in subclasses(BaseSettings) if c is not AstregSettings]
IDS = [c.__name__ for c in CLASSES]

#: The settings classes of every command; discovery must find at least these.
KNOWN = {
    "KafkaSettings", "TopicSettings", "ProducerSettings", "SimConfig", "RunnerSettings", "SqlSettings",
    "RedisSettings", "AstDbSettings", "WorkerSettings", "WebSettings", "AlerterSettings", "AlertSettings",
    "DemoSettings",
}


def env_names(cls: type[BaseSettings]) -> list[str]:
    prefix = cls.model_config["env_prefix"]
    return [f"{prefix}{name.upper()}" for name in cls.model_fields]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("ASTREG_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_discovery_finds_every_command_s_settings() -> None:
    assert KNOWN <= set(IDS)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_every_settings_class_has_the_base_s_config_but_its_prefix(cls: type[BaseSettings]) -> None:
    assert issubclass(cls, AstregSettings)
    base = dict(AstregSettings.model_config)
    own = dict(cls.model_config)
    assert own.pop("env_prefix").startswith("ASTREG_")
    base.pop("env_prefix")
    assert own == base


def test_the_base_decides_one_rule() -> None:
    config = AstregSettings.model_config
    assert config["env_ignore_empty"] is True  # ASTREG_X= is unset (systemd/compose write it)
    assert config["extra"] == "ignore" and config["frozen"] is True
    assert "empty" in (AstregSettings.__doc__ or "")  # the reason is written down


def _dump(obj: BaseSettings) -> dict[str, Any]:
    return json.loads(obj.model_dump_json())


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_an_empty_variable_is_unset(cls: type[BaseSettings], clean_env: pytest.MonkeyPatch) -> None:
    defaults = _dump(cls())
    for name in env_names(cls):
        clean_env.setenv(name, "")
    assert _dump(cls()) == defaults


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_a_set_variable_is_read(cls: type[BaseSettings], clean_env: pytest.MonkeyPatch) -> None:
    """The other half of the rule (so the test above cannot pass by ignoring the environment)."""
    kinds = [(int, int | None, float, float | None), (str,), (bool,)]  # numbers first: strings may be validated
    name = next(n for kind in kinds for n, f in cls.model_fields.items() if f.annotation in kind)
    default = getattr(cls(), name)
    value = default + "-x" if isinstance(default, str) else (default or 0) + 1
    clean_env.setenv(f"{cls.model_config['env_prefix']}{name.upper()}", str(value))
    assert getattr(cls(), name) == value


# KafkaSettings is left out of the command path: build() asks the broker whether it is the
# embedded one (a network probe); its empty variables are checked directly above.
COMMAND_CLASSES = [c for c in CLASSES if c.__name__ != "KafkaSettings"]


def _command(cls: type[BaseSettings]) -> click.Command:
    @click.command()
    @settings_options(cls)
    def show(**kw: Any) -> None:
        (obj,) = build(kw, cls)
        click.echo(obj.model_dump_json())

    return show


@pytest.mark.parametrize("cls", COMMAND_CLASSES, ids=[c.__name__ for c in COMMAND_CLASSES])
def test_an_empty_variable_is_unset_through_a_command(cls: type[BaseSettings], clean_env: pytest.MonkeyPatch) -> None:
    """Options and the class agree: click skips an empty variable, and so does the class
    behind the options (an empty ASTREG_WEB_PORT once stopped ``astreg worker`` only)."""
    result = CliRunner().invoke(_command(cls), [], env=dict.fromkeys(env_names(cls), ""))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == _dump(cls())


@pytest.mark.parametrize(
    "argv,classes",
    [
        (["producer", "--help"], ["ProducerSettings", "KafkaSettings", "TopicSettings"]),
        (["sink", "sql", "--help"], ["KafkaSettings", "TopicSettings", "RunnerSettings", "SqlSettings"]),
    ],
)
def test_help_names_every_environment_variable(argv: list[str], classes: list[str]) -> None:
    from astreg.tools.cli import main

    result = CliRunner().invoke(main, argv, terminal_width=200)
    assert result.exit_code == 0, result.output
    by_name = {c.__name__: c for c in CLASSES}
    wanted = [env for name in classes for env in env_names(by_name[name])]
    assert [env for env in wanted if env not in result.output] == []
