"""The code's map (docs/design.md) as checks: who may import whom, no circles, honest ``__all__``.

Imports are read from the source (every ``import``, at the top, inside functions and under
``TYPE_CHECKING`` alike), so a rule cannot be dodged by importing late.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("astreg", "producers", "streams", "sinks", "schemas")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


MODULES = dict(modules())


def imports_of(name: str) -> set[str]:
    """Every module of ours that ``name`` imports, resolved to a module (not a package member)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES:
                found.add(target)
    found.discard(name)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def is_base(name: str) -> bool:
    """The base layer: every module of astreg/ except the assembling tools."""
    return name.split(".")[0] == "astreg" and not name.startswith("astreg.tools")


def offenders(select, forbidden) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(f"{m} imports {t}" for m in MODULES if select(m) for t in GRAPH[m] if forbidden(t))


def test_base_layer_imports_no_part_of_the_pipeline() -> None:
    assert offenders(is_base, lambda t: not is_base(t)) == []


def test_schemas_import_only_the_base_layer() -> None:
    assert offenders(lambda m: m.startswith("schemas"), lambda t: not (is_base(t) or t.startswith("schemas"))) == []


def test_simulator_imports_nothing_of_the_producer() -> None:
    sim = "producers.simulator"
    assert offenders(lambda m: m.startswith(sim),
                     lambda t: t.startswith("producers") and not t.startswith(sim)) == []


@pytest.mark.parametrize("part,others", [("producers", ("streams", "sinks")), ("streams", ("producers", "sinks")),
                                         ("sinks", ("producers", "streams"))])
def test_parts_of_the_pipeline_meet_only_through_topics(part: str, others: tuple[str, ...]) -> None:
    """Producers, workers and sinks share the schemas and the base layer, never each other's code;
    none of them imports the assembling tools."""
    assert offenders(lambda m: m.startswith(part),
                     lambda t: t.split(".")[0] in others or t.startswith("astreg.tools")) == []


def test_no_import_circles() -> None:
    """Depth-first search for a back edge over every import (late imports included)."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    # a package's __init__ importing its own submodules is not a circle of behaviour
    real = [c for c in cycles if not all(c[0].startswith(m) or m.startswith(c[0]) for m in c)]
    assert real == []


def public_definitions(tree: ast.Module) -> set[str]:
    return {n.name for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and not n.name.startswith("_")}


def declared_all(tree: ast.Module) -> list[str] | None:
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets):
            return list(ast.literal_eval(n.value))
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == "__all__":
            assert n.value is not None
            return list(ast.literal_eval(n.value))
    return None


@pytest.mark.parametrize("name", sorted(MODULES))
def test_all_lists_the_public_names(name: str) -> None:
    """Every module says what it offers: each public class and function it defines is in
    ``__all__`` and each name in ``__all__`` exists (packages: what they re-export)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), str(path))
    declared = declared_all(tree)
    defined = public_definitions(tree)
    if declared is None:
        assert not defined, f"{name} defines {sorted(defined)} but has no __all__"
        return
    assert len(declared) == len(set(declared)), f"{name}: __all__ repeats a name"
    assert sorted(defined - set(declared)) == [], f"{name}: public but not in __all__"
    module = importlib.import_module(name)
    assert sorted(n for n in declared if not hasattr(module, n)) == [], f"{name}: __all__ names what is not there"


def test_importing_the_base_layer_changes_no_library() -> None:
    """No side effects on import or when a setting is read: aiokafka and Faust classes stay as
    the libraries made them until a component installs the patches it needs."""
    import subprocess

    code = (
        "from aiokafka.consumer import group_coordinator as g; before = g.GroupCoordinator._maybe_leave_group; "
        "import importlib, pkgutil, astreg; "
        f"names = {sorted(n for n in MODULES if is_base(n) and not n.startswith('astreg.patches'))!r}; "
        "[importlib.import_module(n) for n in names]; "
        "from astreg.settings import KafkaSettings; k = KafkaSettings(bootstrap='127.0.0.1:1', embedded=True); "
        "k.group_kwargs(); k.faust_kwargs(); k.consumer_kwargs() if hasattr(k, 'consumer_kwargs') else None; "
        "assert g.GroupCoordinator._maybe_leave_group is before, 'aiokafka patched'; print('clean')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.strip() == "clean", res.stderr[-2000:]
