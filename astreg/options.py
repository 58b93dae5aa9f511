"""Click options generated from pydantic-settings models: one source for flags, env and help.

Every field of a settings model becomes ``--field-name`` with environment variable
``ASTREG_FIELD_NAME`` (shown in ``--help``) and the field's description as help text::

    @click.command()
    @settings_options(KafkaSettings, TopicSettings)
    def topics(**kw):
        kafka, topics = build(kw, KafkaSettings, TopicSettings)
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import click
from pydantic import SecretStr, ValidationError
from pydantic_settings import BaseSettings

from .errors import ConfigError

__all__ = ["settings_options", "build", "option_name", "read_secret_file", "SecretFileOption"]

F = TypeVar("F", bound=Callable[..., Any])
S = TypeVar("S", bound=BaseSettings)


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _click_type(tp: Any) -> tuple[Any, bool]:
    """(click type, is_flag) for a field annotation."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    if tp is bool:
        return bool, True
    if typing.get_origin(tp) is Literal:
        return click.Choice([str(a) for a in typing.get_args(tp)], case_sensitive=False), False
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return click.Choice([m.value for m in tp], case_sensitive=False), False
    if tp is int:
        return int, False
    if tp is float:
        return float, False
    if tp is Path:
        return click.Path(path_type=Path), False
    return str, False


class SecretFileOption(click.Option):
    """``--NAME-file``: the file of a secret; ``value_envvar`` names the variable that may hold
    the secret itself (read by the settings model, never an option)."""

    def __init__(self, *args: Any, value_envvar: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.value_envvar = value_envvar


def settings_options(*models: type[BaseSettings], exclude: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Decorate a click command with one option per field of each settings model."""

    def decorate(fn: F) -> F:
        for model in reversed(models):
            prefix = model.model_config.get("env_prefix", "ASTREG_")
            for name, info in reversed(list(model.model_fields.items())):
                if name in exclude:
                    continue
                ctype, is_flag = _click_type(info.annotation)
                default = info.default if info.default is not None else None
                is_secret = info.annotation in (SecretStr, SecretStr | None)
                if is_secret:
                    # A secret is never an option's value (it would show in ps, shell history,
                    # unit files): --NAME-file PATH, or the variable ASTREG_NAME itself.
                    fn = click.option(
                        f"{option_name(name)}-file", f"{name}_file", type=click.Path(path_type=Path),
                        default=None, envvar=f"{prefix}{name.upper()}_FILE", show_envvar=True,
                        help=f"File holding the {info.description or name} (or set {prefix}{name.upper()}).",
                        cls=SecretFileOption, value_envvar=f"{prefix}{name.upper()}",
                    )(fn)
                    continue
                help_text = info.description or ""
                if default is not None and not is_flag and not is_secret:
                    help_text += f"  [default: {default.value if isinstance(default, enum.Enum) else default}]"
                decl = option_name(name)
                if is_flag:
                    decl = f"{decl}/--no-{name.replace('_', '-')}"
                fn = click.option(
                    decl,
                    name,
                    type=None if is_flag else ctype,
                    is_flag=is_flag,
                    default=None,
                    envvar=f"{prefix}{name.upper()}",
                    show_envvar=True,
                    help=help_text,
                )(fn)
        return fn

    return decorate


def build(kwargs: dict[str, Any], *models: type[S]) -> tuple[Any, ...]:
    """Instantiate each model from the command's options (unset options keep defaults)."""
    out = []
    for model in models:
        values = {k: kwargs[k] for k in model.model_fields if kwargs.get(k) is not None}
        for name, info in model.model_fields.items():
            path = kwargs.get(f"{name}_file")
            if path is not None and info.annotation in (SecretStr, SecretStr | None):
                values[name] = read_secret_file(path, option_name(name) + "-file")
        try:
            obj = model(**values)
            resolve = getattr(obj, "resolved", None)  # KafkaSettings: recognise the embedded broker
            out.append(resolve() if callable(resolve) else obj)
        except ValidationError as exc:
            raise click.UsageError(_friendly(exc)) from exc
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
    return tuple(out)


def read_secret_file(path: Path, option: str) -> str:
    """The secret in ``path`` (one line; a trailing newline is not part of it). A file other
    users may read is refused: the secret would not be one."""
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise click.UsageError(f"{option} {path}: {exc.strerror or exc}") from None
    if mode & 0o004:
        raise click.UsageError(f"{option} {path} is readable by every user: chmod o-r {path}")
    secret = text.rstrip("\r\n")
    if not secret:
        raise click.UsageError(f"{option} {path} is empty")
    return secret


def _friendly(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{option_name(loc) if loc else '?'}: {err['msg']}")
    return "; ".join(parts)
