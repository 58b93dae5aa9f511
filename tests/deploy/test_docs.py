"""The operator and consumer documentation stays in step with the contract it describes."""

from __future__ import annotations

import ast
import io
import json
import re
import tokenize
from pathlib import Path

from astreg.deadletter import deadletter_headers
from astreg.settings import TOPIC_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def fields(schema: dict) -> list[tuple[str, str]]:
    out = [(schema["name"], f["name"]) for f in schema["fields"]]
    for f in schema["fields"]:
        t = f["type"]
        if isinstance(t, dict) and t.get("type") == "array" and isinstance(t["items"], dict):
            out += fields(t["items"])
    return out


def test_topics_doc_lists_every_field_of_every_schema() -> None:
    text = (DOCS / "topics.md").read_text()
    for path in sorted((ROOT / "schemas").glob("*.avsc")):
        schema = json.loads(path.read_text())
        for record, name in fields(schema):
            section = text.split(f"### {record} ", 1)[-1] if f"### {record} " in text else text.split(f"#### {record} ", 1)[-1]
            assert f"| `{name}` |" in section, f"{record}.{name} is missing from docs/topics.md"


def test_topics_doc_names_topics_and_deadletter_headers() -> None:
    text = (DOCS / "topics.md").read_text()
    for name in TOPIC_DEFAULTS.values():
        assert f"`{name}`" in text
    headers = deadletter_headers("r", component="c", topic="t", partition=0, offset=1, error="e")
    for key, _ in headers:
        assert f"`{key}`" in text, f"dead-letter header {key} undocumented"


def test_docs_link_to_files_that_exist() -> None:
    for doc in ("topics.md", "operations.md", "multi-datacenter.md"):
        text = (DOCS / doc).read_text()
        for target in re.findall(r"\]\((\.\./[^)#]+)\)", text):
            assert (DOCS / target).resolve().exists(), f"{doc} links to missing {target}"
        for target in re.findall(r"`(deploy/[\w@./-]+)`", text):
            assert (ROOT / target).exists(), f"{doc} names missing {target}"


# Dated runs and their figures live in docs/benchmarks.md (and the fault suite's results in
# docs/faults.md); every other text of the product states targets and points there.
RUN_RECORDS = {"benchmarks.md", "faults.md"}
PRODUCT_DIRS = ("astreg", "producers", "streams", "sinks", "schemas", "deploy", "examples")
TEXT_SUFFIXES = {".md", ".conf", ".service", ".yml", ".yaml", ".sh", ".avsc", ".toml", ".ini", ".env"}
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")
# Words about how the product was made rather than what it does. The product's own uses of the
# same words are allowed first: Kafka's session timeout (a duration), a round trip, the leader.
ALLOWED = re.compile(r"\bsession (?:timeout )?\d+(?:\.\d+)? ?m?s\b|\bround[- ]trips?\b|\bthe leader", re.IGNORECASE)
PROCESS_WORDS = re.compile(
    r"\bissues? #?\d|\btickets? #?\d|\bsession[- ]?\d|\bround \d|\bthe lead\b|\bthe brief\b"
    r"|\bthis (?:branch|session)\b",
    re.IGNORECASE,
)


def process_words(text: str) -> list[str]:
    return [m.group(0) for m in PROCESS_WORDS.finditer(ALLOWED.sub(" ", text))]


def product_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    for top in PRODUCT_DIRS:
        files += sorted(p for p in (ROOT / top).rglob("*") if p.is_file() and "__pycache__" not in p.parts
                        and (p.suffix == ".py" or p.suffix in TEXT_SUFFIXES))
    return files


def comments_and_docstrings(path: Path) -> str:
    """What a Python file says in prose: its comments and docstrings, not its string data."""
    source = path.read_text()
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            parts.append(ast.get_docstring(node, clean=False) or "")
    return "\n".join(parts)


def test_process_words_are_caught_and_product_words_are_not() -> None:
    assert process_words("as asked in issue 12, then session-2 code and round 3; the lead said") == [
        "issue 1", "session-2", "round 3", "the lead"]
    assert process_words("group session timeout 6 s (session 6 s), one round trip, the leader topic") == []


def test_only_the_run_records_carry_dated_runs() -> None:
    dated = []
    for path in product_files():
        if path.parent == DOCS and path.name in RUN_RECORDS:
            continue
        text = comments_and_docstrings(path) if path.suffix == ".py" else path.read_text()
        dated += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in DATE.finditer(text)]
    assert dated == [], "dated runs belong in docs/benchmarks.md, by date and commit"


def test_product_text_speaks_of_the_product() -> None:
    found = []
    for path in product_files():
        text = comments_and_docstrings(path) if path.suffix == ".py" else path.read_text()
        found += [f"{path.relative_to(ROOT)}: {word}" for word in process_words(text)]
    assert found == []
