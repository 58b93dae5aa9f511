"""The operator and consumer documentation stays in step with the contract it describes."""

from __future__ import annotations

import json
import re
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
