"""One exception tree: every exception class of the packages is in astreg/errors.py, drawn there.

Private control flow that never leaves its module may stay where it is, listed here by name
with the reason in a comment beside its class.
"""

from __future__ import annotations

import ast
import builtins
import re

import pytest

import astreg.errors as errors
from tests.support.modules import ROOT, import_all, module_names, subclasses

#: Exceptions allowed outside astreg/errors.py (see the comment above each class).
PRIVATE = {
    "schemas.codec._BadBody",  # raised by the generated Avro reader, becomes UndecodableRecord
    "schemas.codec._Unsupported",  # a shape the generated reader skips: fastavro reads it
    "sinks.base._Stopping",  # a stop while the runner waits for its store: leaves run() quietly
    "sinks.base._Rebuilt",  # a write dropped because its partitions restart a rebuild: back to the step
    "astreg.tools.demo._Terminated",  # SIGTERM unwinding `astreg demo` to its stop, caught there
}


def defined_exceptions() -> dict[str, type]:
    import_all()
    return {f"{c.__module__}.{c.__qualname__}": c for c in subclasses(BaseException)}


def test_every_exception_class_is_defined_in_astreg_errors() -> None:
    found = defined_exceptions()
    outside = sorted(name for name in found if not name.startswith("astreg.errors.") and name not in PRIVATE)
    assert outside == [], "define these in astreg/errors.py (under AstregError) and import them from there"
    # The private list stays honest: each is there, private, and no longer than needed.
    assert sorted(PRIVATE - set(found)) == []
    assert all(name.rpartition(".")[2].startswith("_") for name in PRIVATE)


def test_the_errors_module_offers_every_class_it_defines() -> None:
    mine = {n: c for n, c in defined_exceptions().items() if n.startswith("astreg.errors.")}
    assert sorted(c.__name__ for c in mine.values()) == sorted(errors.__all__)
    for cls in mine.values():
        assert issubclass(cls, errors.AstregError), f"{cls.__name__} is not an AstregError"


_ERROR_BASE = re.compile(r"(Error|Exception|Exit|Interrupt|Warning|Failed|Unavailable|BadQuery)$")


def _base_names(node: ast.ClassDef) -> list[str]:
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def test_no_exception_class_hides_inside_a_function() -> None:
    """A class made when a function runs escapes the import-time check above: none may exist."""
    nested = []
    for name in module_names():
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and id(node) not in top:
                bases = _base_names(node)
                if any(_ERROR_BASE.search(b) or isinstance(getattr(builtins, b, None), type)
                       and issubclass(getattr(builtins, b), BaseException) for b in bases):
                    nested.append(f"{name}:{node.lineno} {node.name}")
    assert nested == []


def _drawn_tree() -> dict[str, str]:
    """``{class: parent}`` as drawn in the errors module docstring."""
    doc = errors.__doc__ or ""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^(\s*)(?:[│ ]*)(?:├── |└── )?([A-Z]\w+)\b", line)
        if not m:
            continue
        name = m.group(2)
        if not hasattr(builtins, name) and not hasattr(errors, name):
            continue
        depth = line.index(name)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((depth, name))
    return parents


def test_the_docstring_draws_the_whole_tree() -> None:
    drawn = _drawn_tree()
    assert sorted(drawn) == sorted(errors.__all__), "every class of astreg.errors is drawn, nothing else"
    for name, parent in drawn.items():
        cls = getattr(errors, name)
        assert cls.__bases__[0].__name__ == parent, f"{name} is drawn under {parent}, derives from {cls.__bases__}"
    assert drawn["AstregError"] == "Exception"


@pytest.mark.parametrize("name", ["BadQuery", "SimulatorError"])
def test_bad_input_errors_stay_value_errors(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, ValueError) and issubclass(cls, errors.AstregError)
    assert "(ValueError)" in next(line for line in (errors.__doc__ or "").splitlines() if f"── {name}" in line)


def test_an_ami_login_refusal_is_an_ami_link_failure() -> None:
    # The AstDB sink treats every AmiError as a node it cannot reach; a refused login is one.
    assert issubclass(errors.LoginFailed, errors.AmiError)
