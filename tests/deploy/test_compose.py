"""deploy/compose.yaml is consistent: services, dependencies, healthchecks, real option names.

No Docker engine runs here, so the file is parsed with PyYAML and checked against what the
astreg commands really accept (settings models and click commands).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cli_contract import (
    COMMANDS,
    command_of_argv,
    documented_envvars,
    documented_flags,
    parse_with_env,
    real_envvars,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def astreg_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("astreg")}


def test_the_stack_has_every_part(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"kafka", "topics", "worker-1", "worker-2", "postgres", "sink-sql", "redis", "sink-redis",
            "schema-registry"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["schema-registry"]["profiles"] == ["registry"]
    commands = {n: command_of_argv(s["command"]) for n, s in astreg_services(compose).items()}
    assert commands["topics"] == "topics create"
    assert commands["worker-1"] == commands["worker-2"] == "worker"
    assert commands["sink-sql"] == "sink sql" and commands["sink-redis"] == "sink redis"


def test_kafka_is_kraft_with_listeners_for_containers_and_host(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(x.split("://") for x in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised  # controllers are not advertised
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    # Containers use the service name; the host uses the published port.
    astreg_bootstrap = {s["environment"]["ASTREG_BOOTSTRAP"] for s in astreg_services(compose).values()}
    assert astreg_bootstrap == {advertised["PLAINTEXT"]}
    host_port = advertised["PLAINTEXT_HOST"].rsplit(":", 1)[1]
    assert f"{host_port}:{host_port}" in compose["services"]["kafka"]["ports"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert len(env["CLUSTER_ID"]) == 22  # base64url of a 16-byte UUID, as kafka-storage wants
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in compose["services"]["kafka"]["volumes"])


def test_dependencies_exist_and_order_startup(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
            # A dependency on a profile-only service must be optional, or `up` fails without it.
            if services[dep].get("profiles") and not svc.get("profiles"):
                assert cond.get("required") is False, f"{name} requires {dep}, which is only in a profile"
    for name, svc in astreg_services(compose).items():
        if name == "topics":
            assert svc["restart"] == "no"
            continue
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully", name
        assert svc["restart"] in ("unless-stopped", "always", "on-failure")
        assert "healthcheck" in svc, name
    assert services["sink-sql"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["sink-redis"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_workers_keep_their_tables_on_their_own_volume(compose: dict[str, Any]) -> None:
    seen = set()
    for name in ("worker-1", "worker-2"):
        svc = compose["services"][name]
        data_dir = svc["environment"]["ASTREG_DATA_DIR"]
        volume = next(v.split(":")[0] for v in svc["volumes"] if v.split(":")[1] == data_dir)
        assert volume in compose["volumes"] and volume not in seen
        seen.add(volume)
        # Faust routes lookups to the owner by its canonical URL, built from ASTREG_WEB_HOST.
        assert svc["hostname"] == name == svc["environment"]["ASTREG_WEB_HOST"]
        assert svc["environment"]["ASTREG_STORE"] == "rocksdb"


def test_schema_registry_url_is_wired_to_the_registry_profile(compose: dict[str, Any]) -> None:
    registry = compose["services"]["schema-registry"]
    port = registry["environment"]["SCHEMA_REGISTRY_LISTENERS"].rsplit(":", 1)[1]
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    assert f"ASTREG_SCHEMA_REGISTRY_URL=http://schema-registry:{port}" in header
    for name, svc in astreg_services(compose).items():
        # Key present without a value: unset unless exported, so the default framing stays.
        assert "ASTREG_SCHEMA_REGISTRY_URL" in svc["environment"], name
        assert svc["environment"]["ASTREG_SCHEMA_REGISTRY_URL"] is None, name


@pytest.mark.parametrize("service", ["topics", "worker-1", "worker-2", "sink-sql", "sink-redis", "producer",
                                     "sink-astdb"])
def test_env_and_flags_are_documented_options(compose: dict[str, Any], service: str) -> None:
    svc = compose["services"][service]
    command = command_of_argv(svc["command"])
    names = {k for k in svc["environment"] if k.startswith("ASTREG_")}
    unknown = names - documented_envvars(command)
    assert not unknown, f"{service}: `astreg {command}` has no option for {sorted(unknown)}"
    flags = {a.split("=")[0] for a in svc["command"] if a.startswith("--")}
    assert flags <= documented_flags(command)


@pytest.mark.parametrize("command", COMMANDS)
def test_env_names_are_real_options(compose: dict[str, Any], command: str) -> None:
    services = [s for s in astreg_services(compose).values() if command_of_argv(s["command"]) == command]
    assert services, f"compose runs no `astreg {command}`: its options would go unchecked"
    real = real_envvars(command)
    for svc in services:
        names = {k for k in svc["environment"] if k.startswith("ASTREG_")}
        assert names <= real, f"`astreg {command}` has no option for {sorted(names - real)}"


def test_dockerfile_installs_every_package_of_the_project() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    copied = {src for line in text.splitlines() if line.startswith("COPY ") for src in line.split()[1:-1]}
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= copied, f"pip install . in the image would miss {packages - copied}"
    assert project["project"]["readme"] in " ".join(copied)  # setuptools reads it at build time
    assert "pip install ." in text and 'ENTRYPOINT ["astreg"]' in text
    assert "USER astreg" in text  # never root at run time
    for svc in astreg_services(yaml.safe_load(COMPOSE.read_text())).values():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT


@pytest.mark.parametrize("service", ["topics", "worker-1", "worker-2", "sink-sql", "sink-redis", "producer",
                                     "sink-astdb"])
def test_env_values_parse_with_the_real_command(
    compose: dict[str, Any], service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = compose["services"][service]
    env = {k: str(v) for k, v in svc["environment"].items() if v is not None}
    params = parse_with_env(command_of_argv(svc["command"]), env, monkeypatch)
    assert params["bootstrap"] == "kafka:9092" and params["idempotence"] is True


def test_every_process_agrees_on_the_topic_layout(compose: dict[str, Any]) -> None:
    # The workers create missing topics and their changelog as well as `topics create` does.
    for key in ("ASTREG_PARTITIONS", "ASTREG_REPLICATION_FACTOR"):
        values = {s["environment"].get(key) for s in astreg_services(compose).values()}
        assert len(values) == 1 and None not in values, f"{key} differs between services: {values}"


def test_healthchecks_probe_the_port_the_service_serves(compose: dict[str, Any]) -> None:
    for name, svc in astreg_services(compose).items():
        if "healthcheck" not in svc:
            continue
        probe = " ".join(svc["healthcheck"]["test"])
        port = re.search(r":(\d+)/(healthz|metrics)", probe)
        assert port, f"{name}: healthcheck probes no HTTP port"
        served = {v for k, v in svc["environment"].items() if k.endswith(("METRICS_PORT", "WEB_PORT"))}
        assert port.group(1) in served, f"{name}: healthcheck probes {port.group(1)}, service serves {served}"
