"""The private Faust, mode and aiokafka API that astreg.patches relies on is still there, as used.

Each patch module lists its internals in ``INTERNALS``: ``"module:Class.name"`` (a class,
function or attribute, or an attribute the class's own code sets on its instances),
``"...name(a, b)"`` (a callable with these parameter names), ``"...name uses <text>"`` (its
source contains that text), ``"...name is <module.Type>"`` (an instance of that type). Each is
resolved against the installed libraries; a failure names the internal, the patch module that
relies on it and the installed version. The AST checks keep the lists honest: every private name
a patch module touches is declared there, and no module outside astreg/patches touches one.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import astreg.patches

ROOT = Path(__file__).resolve().parents[2]
PATCH_MODULES = sorted(m.name for m in pkgutil.iter_modules(astreg.patches.__path__, "astreg.patches."))
SPEC = re.compile(
    r"^(?P<module>[\w.]+):(?P<name>[\w.]+)(?:\((?P<params>[^)]*)\))?"
    r"(?:\s+uses\s+(?P<uses>.+)|\s+is\s+(?P<type>[\w.]+))?$"
)
OUR_PACKAGES = ("astreg", "producers", "streams", "sinks", "schemas")


def declared(module: str) -> list[str]:
    return list(importlib.import_module(module).INTERNALS)


ALL_INTERNALS = [(module, internal) for module in PATCH_MODULES for internal in declared(module)]


def installed(module: str) -> str:
    """``faust-streaming 0.15.3``: the distribution that provides ``module`` and its version."""
    top = module.split(".")[0]
    dists = importlib.metadata.packages_distributions().get(top, [top])
    return ", ".join(f"{d} {importlib.metadata.version(d)}" for d in dists)


def _source(obj: Any) -> str:
    return inspect.getsource(_unwrap(obj))


def _unwrap(obj: Any) -> Any:
    if isinstance(obj, property):
        obj = obj.fget
    fun = getattr(obj, "fun", None)  # mode's @Service.task wraps the coroutine function
    if callable(fun) and not inspect.isclass(obj):
        obj = fun
    return inspect.unwrap(obj)


def _set_on_instances(cls: type, name: str) -> bool:
    """Whether ``cls`` or a base declares ``name`` or assigns ``self.<name>`` in its code."""
    assign = re.compile(rf"\bself\.{re.escape(name)}\s*(:[^=\n]+)?=(?!=)")
    for klass in cls.__mro__:
        if klass is object:
            continue
        if name in vars(klass).get("__annotations__", {}) or name in getattr(klass, "__slots__", ()):
            return True
        try:
            if assign.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):
            continue
    return False


def _parameters(obj: Any) -> str:
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    sig = inspect.signature(obj if inspect.isclass(obj) else _unwrap(obj))
    return ", ".join(kinds.get(p.kind, "") + p.name for p in sig.parameters.values())


def problem(internal: str) -> str | None:
    """What is wrong with ``internal`` in the installed libraries, or None when it holds."""
    m = SPEC.match(internal)
    if m is None:
        return "not of the form module:name[(params)][ uses text| is type]"
    try:
        obj: Any = importlib.import_module(m["module"])
    except ImportError as exc:
        return f"module {m['module']} cannot be imported: {exc}"
    parts = m["name"].split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            last = i == len(parts) - 1
            if last and inspect.isclass(obj) and _set_on_instances(obj, part):
                if m["params"] is not None or m["uses"] or m["type"]:
                    return f"{part} is an instance attribute: nothing more can be checked"
                return None
            return f"{'.'.join(parts[:i + 1])} is gone"
    if m["params"] is not None:
        want = ", ".join(p.strip() for p in m["params"].split(",") if p.strip())
        try:
            got = _parameters(obj)
        except (TypeError, ValueError) as exc:
            return f"no signature: {exc}"
        if got != want:
            return f"parameters are now ({got}), the patch expects ({want})"
    if m["uses"]:
        try:
            text = _source(obj)
        except (OSError, TypeError) as exc:
            return f"no source to look into: {exc}"
        if m["uses"] not in text:
            return f"its code no longer contains {m['uses']!r}"
    if m["type"]:
        type_module, _, type_name = m["type"].rpartition(".")
        expected = getattr(importlib.import_module(type_module), type_name)
        if not isinstance(obj, expected):
            return f"is now a {type(obj).__module__}.{type(obj).__qualname__}, not a {m['type']}"
    return None


@pytest.mark.parametrize("module", PATCH_MODULES)
def test_each_patch_module_declares_its_internals(module: str) -> None:
    internals = declared(module)
    assert internals, f"{module}: INTERNALS is empty"
    malformed = [i for i in internals if not isinstance(i, str) or SPEC.match(i) is None]
    assert malformed == [], f"{module}: malformed INTERNALS entries {malformed}"
    assert len(set(internals)) == len(internals), f"{module}: INTERNALS repeats an entry"


@pytest.mark.parametrize(("module", "internal"), ALL_INTERNALS, ids=[i for _, i in ALL_INTERNALS])
def test_internal_is_still_there(module: str, internal: str) -> None:
    found = problem(internal)
    if found is not None:
        lib = internal.split(":")[0]
        pytest.fail(f"{module} relies on {internal}: {found} (installed: {installed(lib)}). "
                    "Adapt the patch to this version, then its pin in pyproject.toml.")


@pytest.mark.parametrize(("internal", "expected"), [
    ("faust.tables.recovery:Recovery._no_such_step", "Recovery._no_such_step is gone"),
    ("faust.tables.recovery:Recovery._build_offsets(self, consumer, tps)", "parameters are now"),
    ("faust.stores.rocksdb:Store._get uses no_such_call(", "no longer contains"),
    ("faust.streams:_current_event is contextvars.Token", "not a contextvars.Token"),
    ("faust.transport.consumer:Consumer._no_such_offsets", "_no_such_offsets is gone"),
    ("faust.transport.consumer:Consumer._read_offset(self)", "instance attribute"),
    ("no_such_library.module:Thing", "cannot be imported"),
    ("Recovery._build_offsets", "not of the form"),
])
def test_the_check_reports_what_changed(internal: str, expected: str) -> None:
    """The resolver fails on a missing name, other parameters, other code, another type."""
    found = problem(internal)
    assert found is not None and expected in found, found


def test_the_version_named_is_the_installed_one() -> None:
    assert installed("faust.tables") == f"faust-streaming {importlib.metadata.version('faust-streaming')}"
    assert installed("aiokafka.client") == f"aiokafka {importlib.metadata.version('aiokafka')}"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and not name.startswith("_astreg")


def private_names(tree: ast.AST, skip_receivers: frozenset[str] = frozenset()) -> dict[str, int]:
    """Private names a module reaches on other objects (``x._name``, ``getattr(x, "_name")``,
    ``from lib import _name``) -> first line; receivers named in ``skip_receivers`` left out."""
    found: dict[str, int] = {}
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and _private(node.attr):
            receiver = node.value
            if isinstance(receiver, ast.Name) and receiver.id in skip_receivers:
                continue
            name = node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
              and _private(node.args[1].value)):
            name = node.args[1].value
        elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(OUR_PACKAGES) and node.level == 0:
            for alias in node.names:
                if _private(alias.name):
                    found.setdefault(alias.name, node.lineno)
        if name is not None:
            found.setdefault(name, getattr(node, "lineno", 0))
    return found


def own_names(tree: ast.AST) -> set[str]:
    """Methods and ``self.`` attributes the module's own classes define."""
    own: set[str] = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for node in ast.walk(cls):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node in cls.body:
                own.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id == "self":
                own.add(node.attr)
    return own


def _module_file(module: str) -> Path:
    mod: ModuleType = importlib.import_module(module)
    assert mod.__file__ is not None
    return Path(mod.__file__)


@pytest.mark.parametrize("module", PATCH_MODULES)
def test_every_private_name_a_patch_touches_is_declared(module: str) -> None:
    tree = ast.parse(_module_file(module).read_text())
    names = {SPEC.match(i)["name"].split(".")[-1] for i in declared(module)}  # type: ignore[index]
    used = private_names(tree)
    own = own_names(tree)
    undeclared = sorted(f"{n} (line {line})" for n, line in used.items() if n not in names and n not in own)
    assert undeclared == [], f"{module} uses private names missing from its INTERNALS: {undeclared}"


def test_no_module_outside_the_patches_touches_a_declared_internal() -> None:
    """What astreg.patches declares is reached through its functions only (``self.`` and
    ``cls.`` accesses are a class's own attributes, whatever their name)."""
    internals = {SPEC.match(i)["name"].split(".")[-1] for _, i in ALL_INTERNALS}  # type: ignore[index]
    internals = {n for n in internals if _private(n)}
    offenders = []
    for package in OUR_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if (ROOT / "astreg" / "patches") in path.parents:
                continue
            used = private_names(ast.parse(path.read_text()), frozenset({"self", "cls"}))
            offenders += [f"{path.relative_to(ROOT)}:{line} {name}" for name, line in used.items() if name in internals]
    assert offenders == [], f"private Faust/aiokafka API used outside astreg/patches: {offenders}"


def test_install_patches_only_on_the_embedded_broker() -> None:
    """``install`` leaves aiokafka alone for Apache Kafka and makes a consumer leave its group at
    generation 0 on the embedded broker (run in a fresh interpreter: the patch is process-wide)."""
    import subprocess
    import sys

    code = (
        "from aiokafka.consumer.group_coordinator import GroupCoordinator as G; before = G._maybe_leave_group\n"
        "from astreg import patches; from astreg.settings import KafkaSettings\n"
        "patches.install(KafkaSettings(bootstrap='127.0.0.1:1', embedded=False))\n"
        "assert G._maybe_leave_group is before, 'patched for Apache Kafka'\n"
        "patches.install(KafkaSettings(bootstrap='127.0.0.1:1', embedded=True))\n"
        "patched = G._maybe_leave_group; assert patched is not before, 'not patched on the embedded broker'\n"
        "patches.install(KafkaSettings(bootstrap='127.0.0.1:1', embedded=True))\n"
        "assert G._maybe_leave_group is patched, 'patched twice'\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert res.stdout.strip() == "ok", res.stderr[-2000:]
