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

__all__ = ["settings_options", "build", "option_name"]

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
        try:
            obj = model(**values)
            resolve = getattr(obj, "resolved", None)  # KafkaSettings: recognise the embedded broker
            out.append(resolve() if callable(resolve) else obj)
        except ValidationError as exc:
            raise click.UsageError(_friendly(exc)) from exc
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
    return tuple(out)


def _friendly(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{option_name(loc) if loc else '?'}: {err['msg']}")
    return "; ".join(parts)
