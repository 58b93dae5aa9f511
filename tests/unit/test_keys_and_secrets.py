"""Keys and secrets: made private, never read when others may read them, never on a command line."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from pydantic import Field, SecretStr

from astreg.auth import Keyring, Signer, Verifier, derive_node_key, load_key, new_secret
from astreg.errors import ConfigError
from astreg.options import build, settings_options
from astreg.settings import AstregSettings
from astreg.tools.cli import main
from producers.node import ProducerSettings
from streams.settings import WorkerSettings


class _Secretive(AstregSettings):
    user: str = Field("u", description="A user.")
    password: SecretStr | None = Field(None, description="a password")


@click.command()
@settings_options(_Secretive)
def _show(**kw: object) -> None:
    (s,) = build(kw, _Secretive)
    click.echo(f"user={s.user} password={s.password.get_secret_value() if s.password else None}")


@pytest.fixture
def no_astreg_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in [n for n in os.environ if n.startswith("ASTREG_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def test_a_secret_is_not_an_option_but_a_file_or_the_variable(tmp_path: Path, no_astreg_env: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    refused = runner.invoke(_show, ["--password", "hunter2"])
    assert refused.exit_code == 2 and "No such option: --password" in refused.output
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    assert runner.invoke(_show, ["--password-file", str(secret)]).output.strip() == "user=u password=hunter2"
    no_astreg_env.setenv("ASTREG_PASSWORD", "from-env")
    assert runner.invoke(_show, []).output.strip() == "user=u password=from-env"
    assert "ASTREG_PASSWORD_FILE" in runner.invoke(_show, ["--help"]).output


def test_a_secret_file_every_user_may_read_is_refused(tmp_path: Path, no_astreg_env: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    secret.chmod(0o644)
    result = CliRunner().invoke(_show, ["--password-file", str(secret)])
    assert result.exit_code == 2 and "readable by every user" in result.output


def test_the_producer_and_worker_take_no_secret_on_the_command_line() -> None:
    runner = CliRunner()
    for argv, flag in ((["producer", "--ami-secret", "s"], "--ami-secret"), (["worker", "--api-token", "t"], "--api-token"),
                       (["sink", "astdb", "--ami-secret", "s"], "--ami-secret")):
        result = runner.invoke(main, argv)
        assert result.exit_code == 2 and f"No such option: {flag}" in result.output, argv


def test_keys_new_and_derive(tmp_path: Path) -> None:
    runner = CliRunner()
    cluster, node1 = tmp_path / "cluster.key", tmp_path / "node1.key"
    assert runner.invoke(main, ["keys", "new", str(cluster)]).exit_code == 0
    assert cluster.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(main, ["keys", "new", str(cluster)])
    assert again.exit_code != 0 and "never overwritten" in again.output
    result = runner.invoke(main, ["keys", "derive", "--cluster-key-file", str(cluster), "--node", "node1", str(node1)])
    assert result.exit_code == 0, result.output
    assert load_key(node1) == derive_node_key(load_key(cluster), "node1")
    bad = runner.invoke(main, ["keys", "derive", "--cluster-key-file", str(cluster), "--node", "n,1", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "node id" in bad.output


def test_a_key_others_may_read_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    cluster = tmp_path / "cluster.key"
    runner.invoke(main, ["keys", "new", str(cluster)])
    cluster.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by other users"):
        load_key(cluster)


def test_a_node_key_signs_what_the_workers_accept_for_that_node_only() -> None:
    secret = new_secret()
    signer = Signer(derive_node_key(secret, "node1"), "node1")
    (header,) = signer.headers(b"registrations", b"PJSIP/1", b"value")
    verifier = Verifier(secret)
    assert verifier.check(b"registrations", "node1", False, b"PJSIP/1", b"value", [header]) is None
    assert verifier.check(b"registrations", "node2", False, b"PJSIP/1", b"value", [header]) == "bad_signature"
    assert verifier.check(b"registrations", "node1", True, b"PJSIP/1", b"value", [header]) == "bad_signature"
    assert verifier.check(b"registrations", "node1", False, b"PJSIP/1", b"value", None) == "unsigned"
    assert Keyring(secret).headers(b"registrations", "node1", b"PJSIP/1", b"value") == [header]


def test_without_a_key_the_commands_refuse_to_start(no_astreg_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no key"):
        ProducerSettings(node="node1").signer("node1")
    with pytest.raises(ConfigError, match="no key"):
        WorkerSettings().verifier()
    assert ProducerSettings(insecure_no_auth=True).signer("node1") is None
    assert not WorkerSettings(insecure_no_auth=True).verifier().enabled
    result = CliRunner().invoke(main, ["worker", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2 and "no key" in result.output


def test_a_node_id_a_dialplan_could_misuse_is_refused(no_astreg_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="node id"):
        ProducerSettings(node="pbx1,tT", insecure_no_auth=True)
