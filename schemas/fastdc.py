"""Fast construction and ``replace`` for the frozen, slotted dataclasses of the hot paths.

A frozen dataclass's ``__init__`` sets every field through ``object.__setattr__`` (it must get
past its own ``__setattr__``, which raises), and ``dataclasses.replace`` first reads every field
into a dict and then calls that ``__init__`` with keywords: for a 16-field ContactState that is
~8 µs, paid several times per event by the stream worker. The functions generated here build the
very same object (same class, same frozen behaviour, equal and hashing the same) by setting the
slots through their descriptors, in about a third of the time. Only for slotted dataclasses
without ``__post_init__`` (nothing to run on construction); anything else is refused.

``maker(cls)`` has ``cls.__init__``'s signature (defaults and default factories included);
``replacer(cls)(obj, **changes)`` is ``dataclasses.replace`` for such classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["maker", "replacer", "inline_maker"]

T = TypeVar("T")

_MISSING = object()


def _check(cls: type) -> list[dataclasses.Field[Any]]:
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has __post_init__: construct it normally")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if len(fields) != len(dataclasses.fields(cls)):
        raise TypeError(f"{cls.__name__} has init=False fields")
    return fields


def _env(cls: type, fields: list[dataclasses.Field[Any]]) -> dict[str, Any]:
    env: dict[str, Any] = {"cls": cls, "new": object.__new__, "MISSING": _MISSING}
    for f in fields:
        env[f"S_{f.name}"] = cls.__dict__[f.name].__set__
        if f.default is not dataclasses.MISSING:
            env[f"D_{f.name}"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            env[f"F_{f.name}"] = f.default_factory
    return env


def maker(cls: type[T]) -> Callable[..., T]:
    """A constructor equivalent to ``cls(...)`` (positional or keyword arguments)."""
    fields = _check(cls)
    env = _env(cls, fields)
    params, body = [], ["    o = new(cls)"]
    for f in fields:
        if f.default is not dataclasses.MISSING:
            params.append(f"{f.name}=D_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            params.append(f"{f.name}=MISSING")
            body.append(f"    if {f.name} is MISSING: {f.name} = F_{f.name}()")
        else:
            params.append(f.name)
        body.append(f"    S_{f.name}(o, {f.name})")
    src = f"def make({', '.join(params)}):\n" + "\n".join(body) + "\n    return o\n"
    exec(compile(src, f"<maker {cls.__name__}>", "exec"), env)  # noqa: S102 - generated from the class's own fields
    return env["make"]  # type: ignore[no-any-return]


def replacer(cls: type[T]) -> Callable[..., T]:
    """``replace(obj, **changes)`` equivalent to ``dataclasses.replace`` for ``cls``."""
    fields = _check(cls)
    env = _env(cls, fields)
    params = ", ".join(f"{f.name}=MISSING" for f in fields)
    body = ["    n = new(cls)"]
    for f in fields:
        body.append(f"    S_{f.name}(n, o.{f.name} if {f.name} is MISSING else {f.name})")
    src = f"def replace(o, *, {params}):\n" + "\n".join(body) + "\n    return n\n"
    exec(compile(src, f"<replacer {cls.__name__}>", "exec"), env)  # noqa: S102 - generated from the class's own fields
    return env["replace"]  # type: ignore[no-any-return]


def inline_maker(cls: type, values: dict[str, str], var: str = "o", indent: str = "    ",
                 prefix: str = "_dc_") -> tuple[dict[str, Any], list[str]]:
    """Source lines building ``cls`` into ``var`` inside generated code (no call at all).

    ``values`` maps field names to expressions; the other fields get their defaults (a field
    without one is refused, as ``cls()`` would). Returns the names the lines need (to merge
    into the generated function's globals; all start with ``prefix``: give each class its own
    when several are built in one namespace) and the lines. A call with
    some thirty keywords costs more than the slots it fills: the Avro reader of
    RegistrationEvent builds the object inline instead."""
    fields = _check(cls)
    env = {f"{prefix}{k}": v for k, v in _env(cls, fields).items()}
    lines = [f"{indent}{var} = {prefix}new({prefix}cls)"]
    for f in fields:
        if f.name in values:
            expr = values[f.name]
        elif f.default is not dataclasses.MISSING:
            expr = f"{prefix}D_{f.name}"
        elif f.default_factory is not dataclasses.MISSING:
            expr = f"{prefix}F_{f.name}()"
        else:
            raise TypeError(f"{cls.__name__}: no value for {f.name}")
        lines.append(f"{indent}{prefix}S_{f.name}({var}, {expr})")
    return env, lines
