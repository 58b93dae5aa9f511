"""deploy/systemd/ units: restart policy, hardening, ordering, env files that exist and use real
option names; `systemd-analyze verify` when the machine has it."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .cli_contract import COMMANDS, command_of_argv, documented_envvars, parse_with_env, real_envvars

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
ENV_EXAMPLES = UNITS / "env"
ASTREG_BIN = "/opt/astreg/venv/bin/astreg"

# The instances the examples in env/ are written for.
INSTANCES = {
    "astreg-topics.service": [""],
    "astreg-producer@.service": ["node1"],
    "astreg-worker@.service": ["1", "2"],
    "astreg-sink@.service": ["sql", "astdb", "redis"],
}

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str, instance: str = "") -> Unit:
    """systemd unit syntax: sections, Key=Value, keys may repeat; %i is the instance."""
    unit: Unit = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            assert section not in unit, f"section [{section}] twice"
            unit[section] = {}
            continue
        assert section is not None, f"setting outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a Key=Value line: {line!r}"
        unit[section].setdefault(key.strip(), []).append(value.strip().replace("%i", instance))
    return unit


def parse_env_file(path: Path) -> dict[str, str]:
    out = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"{path.name}: bad line {line!r}"
        assert key not in out, f"{path.name}: {key} set twice"
        out[key] = value
    return out


def units() -> list[tuple[str, str]]:
    return [(name, inst) for name, insts in INSTANCES.items() for inst in insts]


def load(name: str, instance: str) -> Unit:
    return parse_unit((UNITS / name).read_text(), instance)


def command(unit: Unit) -> tuple[str, list[str]]:
    (exec_start,) = unit["Service"]["ExecStart"]
    argv = exec_start.split()
    assert argv[0] == ASTREG_BIN
    return command_of_argv(argv[1:]), argv[1:]


def env_files(unit: Unit) -> list[Path]:
    out = []
    for value in unit["Service"].get("EnvironmentFile", []):
        path = Path(value.lstrip("-"))
        assert path.parent == Path("/etc/astreg"), value
        example = ENV_EXAMPLES / path.name
        if not value.startswith("-"):
            assert example.exists(), f"{value} has no example in deploy/systemd/env/"
        if example.exists():
            out.append(example)
    return out


def unit_env(unit: Unit) -> dict[str, str]:
    env = {}
    for item in unit["Service"].get("Environment", []):
        key, _, value = item.partition("=")
        env[key] = value
    for path in env_files(unit):
        env.update(parse_env_file(path))
    return env


def test_every_unit_file_is_covered() -> None:
    assert {p.name for p in UNITS.glob("*.service")} == set(INSTANCES)
    used = {p.name for name, inst in units() for p in env_files(load(name, inst))}
    assert used == {p.name for p in ENV_EXAMPLES.glob("*.env")}, "an example env file no unit reads"


@pytest.mark.parametrize(("name", "instance"), units())
def test_restart_and_hardening(name: str, instance: str) -> None:
    svc = load(name, instance)["Service"]
    assert svc["Restart"] == ["on-failure"]
    assert re.fullmatch(r"\d+s", svc["RestartSec"][0])
    assert svc.get("DynamicUser") == ["yes"] or svc.get("User"), "runs as root"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes", "CapabilityBoundingSet": ""}.items():
        assert svc.get(key) == [value], f"{name}: {key}={value} missing"


@pytest.mark.parametrize(("name", "instance"), units())
def test_ordering_after_topic_creation(name: str, instance: str) -> None:
    unit = load(name, instance)
    cmd, _ = command(unit)
    assert unit["Install"]["WantedBy"] == ["astreg.target"]
    if cmd == "topics create":
        assert unit["Service"]["Type"] == ["oneshot"]
        assert unit["Service"]["RemainAfterExit"] == ["yes"]
        return
    assert "astreg-topics.service" in " ".join(unit["Unit"]["Wants"]).split()
    assert "astreg-topics.service" in " ".join(unit["Unit"]["After"]).split()


@pytest.mark.parametrize(("name", "instance"), units())
def test_state_lives_in_the_state_directory(name: str, instance: str) -> None:
    unit = load(name, instance)
    env = unit_env(unit)
    state = [f"/var/lib/{d}" for d in unit["Service"].get("StateDirectory", [])]
    for key in ("ASTREG_DATA_DIR", "ASTREG_EPOCH_FILE"):
        if key in env:
            # ProtectSystem=strict: the only writable place is the unit's StateDirectory.
            assert any(env[key].startswith(s) for s in state), f"{name}: {key}={env[key]} not under {state}"
    cmd, _ = command(unit)
    if cmd == "worker":
        assert "ASTREG_DATA_DIR" in env and env["ASTREG_STORE"] == "rocksdb"
    if cmd == "producer":
        assert env["ASTREG_NODE"] == instance and "ASTREG_EPOCH_FILE" in env


def test_workers_do_not_share_ports_or_state() -> None:
    envs = [unit_env(load("astreg-worker@.service", i)) for i in INSTANCES["astreg-worker@.service"]]
    assert len({e["ASTREG_WEB_PORT"] for e in envs}) == len(envs)
    assert len({e["ASTREG_DATA_DIR"] for e in envs}) == len(envs)


@pytest.mark.parametrize(("name", "instance"), units())
def test_env_names_are_documented_options(name: str, instance: str) -> None:
    unit = load(name, instance)
    cmd, argv = command(unit)
    unknown = set(unit_env(unit)) - documented_envvars(cmd)
    assert not unknown, f"{name} ({instance}): `astreg {cmd}` has no option for {sorted(unknown)}"


@pytest.mark.parametrize("cmd", COMMANDS)
def test_env_names_are_real_options(cmd: str) -> None:
    names: set[str] = set()
    for name, inst in units():
        unit = load(name, inst)
        if command(unit)[0] == cmd:
            names |= set(unit_env(unit))
    real = real_envvars(cmd)
    assert names <= real, f"`astreg {cmd}` has no option for {sorted(names - real)}"


def test_secrets_only_in_root_readable_env_files() -> None:
    for name, inst in units():
        unit = load(name, inst)
        for item in unit["Service"].get("Environment", []):
            assert not re.search(r"SECRET|PASSWORD|TOKEN", item.split("=")[0]), f"{name}: secret in the unit"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # Instances as real files; ExecStart pointed at /bin/true (astreg is not installed here).
    paths = []
    for name, inst in units():
        text = (UNITS / name).read_text().replace(ASTREG_BIN, "/bin/true")
        path = tmp_path / name.replace("@.", f"@{inst}.")
        path.write_text(text)
        paths.append(str(path))
    (tmp_path / "astreg.target").write_text((UNITS / "astreg.target").read_text())
    paths.append(str(tmp_path / "astreg.target"))
    res = subprocess.run(["systemd-analyze", "verify", "--man=no", *paths],
                         capture_output=True, text=True, timeout=60)
    problems = [line for line in (res.stdout + res.stderr).splitlines()
                if "network-online.target" not in line and "asterisk.service" not in line]
    assert res.returncode == 0 and not problems, "\n".join(problems)


@pytest.mark.parametrize(("name", "instance"), units())
def test_env_values_parse_with_the_real_command(name: str, instance: str, monkeypatch: pytest.MonkeyPatch) -> None:
    unit = load(name, instance)
    cmd, _ = command(unit)
    params = parse_with_env(cmd, unit_env(unit), monkeypatch)
    assert params["security_protocol"] == "SASL_SSL" and params["partitions"] == 12


def test_topic_layout_is_shared_by_every_unit() -> None:
    # Workers create missing topics and their changelog too: the layout lives in common.env only.
    layout = {"ASTREG_PARTITIONS", "ASTREG_REPLICATION_FACTOR", "ASTREG_REGISTRATIONS_RETENTION_MS"}
    assert layout <= set(parse_env_file(ENV_EXAMPLES / "common.env"))
    for path in ENV_EXAMPLES.glob("*.env"):
        if path.name != "common.env":
            assert not layout & set(parse_env_file(path)), f"{path.name} overrides the topic layout"
    for name, inst in units():
        assert "/etc/astreg/common.env" in load(name, inst)["Service"]["EnvironmentFile"]
