"""`astreg kafka`: a real Apache Kafka (KRaft) from Maven Central's jars, and astreg on it.

The command itself (bootstrap line, data kept across restarts, everything stopped on SIGTERM,
clear errors without Java or Maven), the topic layout `astreg topics create` gives a real
cluster, and every component over SASL_SSL (SCRAM-SHA-512) with one-line errors for a wrong
password, an untrusted certificate, a wrong address and a missing topic.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from astreg.kafka import ApacheKafka, ScramUser
from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from astreg.tools.e2e import pipeline, primaries, sql_nodes
from producers.simulator import SimConfig, Simulator
from tests.conftest import TEST_BROKER_CONFIG
from tests.support.wait import until

pytestmark = [pytest.mark.integration, pytest.mark.apache, pytest.mark.timeout(240)]

PASSWORD = "correct horse battery staple"


def _line(child, pattern: str, timeout: float = 120.0) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(pattern, child.log(), re.M)
        if m:
            return m.group(1)
        assert child.alive(), child.log()[-3000:]
        time.sleep(0.2)  # poll interval of this bounded wait
    raise AssertionError(f"no line like {pattern!r}: {child.log()[-3000:]}")


def _brokers_of(data_dir: Path) -> list[psutil.Process]:
    """JVMs whose command line names this data directory."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "kafka.Kafka" in cmd and str(data_dir) in cmd:
            out.append(p)
    return out


async def _configs(kafka: KafkaSettings, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(**kafka.aiokafka_kwargs())
    await admin.start()
    try:
        resp = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {e[0]: e[1] for r in resp for res in r.resources for e in res[4]}
    finally:
        await admin.close()


async def _send(kafka: KafkaSettings, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()


async def _read(kafka: KafkaSettings, topic: str, partitions: int) -> list[tuple[bytes, bytes]]:
    consumer = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend((r.key, r.value) for r in records)
        return out
    finally:
        await consumer.stop()


async def test_kafka_command_serves_keeps_its_data_and_stops_everything(tmp_path: Path, procs: ProcessGroup) -> None:
    data = tmp_path / "kafka"
    argv = astreg_argv("kafka", "--data-dir", str(data), "--config", "group.initial.rebalance.delay.ms=0")
    child = procs.start("kafka", argv)
    bootstrap = _line(child, r"^bootstrap=(127\.0\.0\.1:\d+)$")
    kafka = KafkaSettings(bootstrap=bootstrap).resolved()
    assert kafka.embedded is False and kafka.idempotent, "Apache Kafka is not the embedded broker"

    topics = subprocess.run(astreg_argv("topics", "create", "--bootstrap", bootstrap, "--partitions", "3"),
                            capture_output=True, text=True, timeout=60)
    assert topics.returncode == 0, topics.stderr
    assert "created  asterisk.locations.v1 partitions=3 cleanup.policy=compact" in topics.stdout
    cfg = await _configs(kafka, "asterisk.locations.v1")
    # one broker: RF 1, min ISR 1; the compaction settings are astreg's, not Kafka's defaults
    assert cfg["min.insync.replicas"] == "1" and cfg["cleanup.policy"] == "compact"
    assert cfg["segment.ms"] == "3600000" and cfg["min.cleanable.dirty.ratio"] == "0.1"
    assert cfg["delete.retention.ms"] == "86400000" and cfg["max.compaction.lag.ms"] == "21600000"
    await _send(kafka, "asterisk.locations.v1", b"PJSIP/1001", b"kept")

    assert _brokers_of(data), "no broker JVM runs with the data dir"
    assert child.stop(grace=60) == 0, child.log()[-3000:]
    assert not _brokers_of(data), "a broker JVM outlived `astreg kafka`"

    # Same data dir: same cluster, same port, the record is still there.
    again = procs.start("kafka2", argv)
    assert _line(again, r"^bootstrap=(127\.0\.0\.1:\d+)$") == bootstrap
    assert (b"PJSIP/1001", b"kept") in await _read(kafka, "asterisk.locations.v1", 3)
    again.kill9()  # the brokers die with their parent (parent-death signal), even on SIGKILL
    await until(lambda: not _brokers_of(data), 30, interval=0.2,
                what="the broker JVMs to die with their SIGKILLed `astreg kafka`")


def _only(tmp_path: Path, *tools: str) -> dict[str, str]:
    """An environment whose PATH has only these tools, and an empty jar cache."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME",)}
    return {**env, "PATH": str(bin_dir), "ASTREG_CACHE_DIR": str(tmp_path / "cache")}


@pytest.mark.parametrize(("tools", "message"), [
    ((), "Apache Kafka needs Java 17 or newer: no `java` on PATH"),
    (("java",), "the Apache Kafka jars are not in the cache and Maven is missing to fetch them"),
])
def test_kafka_command_without_java_or_maven_says_what_is_missing(
    tmp_path: Path, tools: tuple[str, ...], message: str
) -> None:
    res = subprocess.run([sys.executable, "-m", "astreg.tools.cli", "kafka"], capture_output=True, text=True,
                         env=_only(tmp_path, *tools), timeout=60)
    assert res.returncode == 1
    assert message in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


# --------------------------------------------------------------------------- SASL_SSL


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApacheKafka]:
    cluster = ApacheKafka(brokers=1, protocol="SASL_SSL", users=[ScramUser("astreg", PASSWORD)],
                          data_dir=tmp_path_factory.mktemp("sasl"), config=TEST_BROKER_CONFIG)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def test_every_component_over_sasl_ssl(secure_cluster: ApacheKafka, tmp_path: Path, unique: str) -> None:
    kafka = secure_cluster.client_settings()
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    topics_cmd = subprocess.run(
        astreg_argv("topics", "create", "--partitions", "4", *_suffixed(unique)),
        capture_output=True, text=True, timeout=60, env={**os.environ, **kafka.env()})
    assert topics_cmd.returncode == 0, topics_cmd.stderr
    sim = Simulator(SimConfig(nodes=2, phones=16, ami_port=0, seed=5, initial="spread"))
    await sim.start()
    try:
        with pipeline(tmp_path, sim.ports, kafka=kafka.resolved(), partitions=4, suffix=unique,
                      sinks=("sql", "astdb")) as pipe:
            alerter = pipe.procs.start("alerter", astreg_argv(
                "alerts", "run", "--topic-quality", pipe.topics.topic_quality,
                "--topic-alerts", pipe.topics.topic_alerts, "--topic-nodes", pipe.topics.topic_nodes,
                "--topic-registrations", pipe.topics.topic_registrations))
            await sim.move("1003", "node2")
            want = primaries(sim.truth())
            deadline = time.monotonic() + 90
            while sql_nodes(pipe.sqlite_path) != want and time.monotonic() < deadline:
                await asyncio.sleep(0.3)  # poll interval; the assertion below shows the log
            assert sql_nodes(pipe.sqlite_path) == want, pipe.procs.children[0].log()[-2000:]
            async with httpx.AsyncClient() as http:
                r = await http.get(f"{pipe.web_urls[0]}/api/v1/endpoints/PJSIP%2F1003/node")
            assert r.status_code == 200 and r.text.strip() == "node2", r.text
            for node in ("node1", "node2"):
                db = sim.node(node).astdb
                while db.get("astreg", "node/1003") != "node2" and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)  # poll interval of this bounded wait
                assert db.get("astreg", "node/1003") == "node2", node
            assert alerter.alive(), alerter.log()[-2000:]
    finally:
        await sim.stop()


def _suffixed(unique: str) -> list[str]:
    t = TopicSettings().with_suffix(unique)
    return ["--topic-registrations", t.topic_registrations, "--topic-nodes", t.topic_nodes,
            "--topic-locations", t.topic_locations, "--topic-deadletter", t.topic_deadletter,
            "--topic-quality", t.topic_quality, "--topic-alerts", t.topic_alerts]


def _fails_with(argv: list[str], env: dict[str, str], message: str) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**os.environ, **env},
                         stdin=subprocess.DEVNULL)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    lines = [x for x in res.stderr.strip().splitlines() if x.startswith("Error: ")]
    assert len(lines) == 1 and message in lines[0], res.stderr
    return lines[0]


COMMANDS = {
    "topics": ["topics", "create", "--partitions", "4"],
    "producer": ["producer", "--ami", "127.0.0.1:1", "--ami-user", "astreg"],
    "worker": ["worker"],
    "sink sql": ["sink", "sql", "--url", "sqlite+aiosqlite:///:memory:"],
    "alerts": ["alerts", "run"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_wrong_password_untrusted_certificate_wrong_address_are_one_line_errors(
    secure_cluster: ApacheKafka, tmp_path: Path, command: str
) -> None:
    good = secure_cluster.client_settings().env()
    argv = astreg_argv(*COMMANDS[command])
    port = secure_cluster.bootstrap.rsplit(":", 1)[1]
    _fails_with(argv, {**good, "ASTREG_SASL_PASSWORD": "wrong"},
                f"Kafka at 127.0.0.1:{port} refused the SASL login of user 'astreg' (SCRAM-SHA-512)")
    other_ca = ApacheKafka(protocol="SSL", data_dir=tmp_path / "other")  # a CA nobody trusts here
    from astreg.kafka import _make_tls

    _make_tls(other_ca.data_dir / "tls", "127.0.0.1")
    _fails_with(argv, {**good, "ASTREG_SSL_CAFILE": str(other_ca.data_dir / "tls" / "ca.pem")},
                f"TLS: the certificate of Kafka at 127.0.0.1:{port} is not trusted")
    _fails_with(argv, {**good, "ASTREG_SECURITY_PROTOCOL": "PLAINTEXT"},
                f"Kafka at 127.0.0.1:{port} closed the connection")
    _fails_with(argv, {**good, "ASTREG_BOOTSTRAP": "127.0.0.1:1"},
                "cannot reach Kafka at 127.0.0.1:1: connection refused")


@pytest.mark.parametrize("command", ["producer", "sink sql", "alerts"])
def test_missing_topic_is_a_one_line_error(secure_cluster: ApacheKafka, command: str, unique: str) -> None:
    env = {**secure_cluster.client_settings().env(),
           **{f"ASTREG_TOPIC_{k.upper()}": f"{v}.{unique}.absent"
              for k, v in {"registrations": "r", "nodes": "n", "locations": "l", "deadletter": "d",
                           "quality": "q", "alerts": "a"}.items()}}
    _fails_with(astreg_argv(*COMMANDS[command]), env, "does not exist on Kafka at")
