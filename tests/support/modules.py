"""Every module of astreg's packages, imported: for tests that check a rule over all the code."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("astreg", "producers", "streams", "sinks", "schemas")


def module_names() -> list[str]:
    """Dotted names of every ``.py`` file under the packages (a package is its ``__init__``)."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            names.append(".".join(parts))
    return names


def import_all() -> list[ModuleType]:
    """Import every module of the packages (so every class they define exists)."""
    return [importlib.import_module(name) for name in module_names()]


def ours(cls: type) -> bool:
    """Whether a class is defined in one of astreg's packages."""
    return cls.__module__.split(".")[0] in PACKAGES


def subclasses(base: type) -> list[type]:
    """Every subclass of ``base``, at any depth, defined in astreg's packages."""
    found: list[type] = []
    todo = list(base.__subclasses__())
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        if ours(cls):
            found.append(cls)
    return sorted(found, key=lambda c: f"{c.__module__}.{c.__qualname__}")
