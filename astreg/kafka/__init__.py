"""Apache Kafka in KRaft mode on loopback, from the official jars on Maven Central.

``astreg kafka`` and the test harness run a real Kafka cluster (1 or 3 brokers, each also a
KRaft controller) without a tarball or Docker: Maven resolves the broker and its runtime
dependencies from ``pom.xml`` beside this file and copies them once into a cache directory;
each broker is ``java -cp 'lib/*' kafka.Kafka server.properties``::

    with ApacheKafka(brokers=3) as cluster:
        print(cluster.bootstrap)           # 127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3
        cluster.kill(2); cluster.start_broker(2)   # fault injection

Listeners of each broker: ``CLIENT`` (what ``bootstrap`` names: PLAINTEXT, or SASL_SSL /
SASL_PLAINTEXT / SSL on request), ``INTERNAL`` (PLAINTEXT, between brokers and for the
readiness check) and ``CONTROLLER`` (KRaft). SCRAM users are written at format time (KRaft keeps
them in its metadata log); TLS uses a CA and broker certificate made in the data directory.

A data directory keeps the cluster (id, ports, users, logs) across restarts; without one the
cluster lives in a temporary directory removed on stop. Brokers die with the process that
started them (parent-death signal), so a killed harness leaves no JVM behind.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..proc import die_with_parent
from .probe import cluster_info

__all__ = ["ApacheKafka", "KafkaRuntime", "kafka_version", "ScramUser"]

logger = logging.getLogger(__name__)

POM = Path(__file__).with_name("pom.xml")
JVM_OPTS = [
    "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent", "-Djava.awt.headless=true",
]
CLIENT_PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SSL", "SASL_SSL")
READY_TIMEOUT = 120.0


def kafka_version() -> str:
    """The Kafka version the pom pins (the reference broker of astreg)."""
    m = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not m:  # pragma: no cover - the pom is ours
        raise ConfigError(f"{POM} names no <kafka.version>")
    return m.group(1)


def _cache_root() -> Path:
    env = os.environ.get("ASTREG_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "astreg"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class KafkaRuntime:
    """The broker's jars in the cache, fetched once by Maven from Maven Central."""

    def __init__(self, cache_dir: Path | None = None, version: str | None = None):
        self.version = version or kafka_version()
        self.dir = (cache_dir or _cache_root()) / f"kafka-{self.version}"
        self.lib = self.dir / "lib"

    @staticmethod
    def java() -> str:
        java_home = os.environ.get("JAVA_HOME")
        java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
        if not java or not Path(java).exists():
            raise ConfigError(
                "Apache Kafka needs Java 17 or newer: no `java` on PATH (Debian: apt-get install "
                "default-jdk-headless, or set JAVA_HOME)"
            )
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        major = int(m.group(1)) if m else 0
        if major == 1 and m and m.group(2):
            major = int(m.group(2))
        if major < 17:
            raise ConfigError(f"Apache Kafka {kafka_version()} needs Java 17 or newer; {java} is Java {major}")
        return java

    def ready(self) -> bool:
        return (self.dir / ".complete").exists() and any(self.lib.glob("kafka_2.13-*.jar"))

    def ensure(self) -> Path:
        """Fetch the jars once (Maven → cache); return the lib directory."""
        if self.ready():
            return self.lib
        mvn = shutil.which("mvn")
        if not mvn:
            raise ConfigError(
                "the Apache Kafka jars are not in the cache and Maven is missing to fetch them "
                "(Debian: apt-get install maven)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="lib.", dir=self.dir))
        logger.info("fetching Apache Kafka %s from Maven Central into %s", self.version, self.lib)
        cmd = [
            mvn, "-q", "-B", "-f", str(POM), f"-Dkafka.version={self.version}",
            "dependency:copy-dependencies", f"-DoutputDirectory={tmp}", "-DincludeScope=runtime",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise ConfigError(f"Maven could not fetch Apache Kafka {self.version}:\n{tail}")
        shutil.rmtree(self.lib, ignore_errors=True)
        tmp.rename(self.lib)
        (self.dir / ".complete").write_text(self.version + "\n")
        return self.lib

    def classpath(self) -> str:
        return str(self.ensure() / "*")


@dataclass(frozen=True)
class ScramUser:
    name: str
    password: str = field(repr=False)


@dataclass
class _Node:
    node_id: int
    client_port: int
    internal_port: int
    controller_port: int
    proc: subprocess.Popen[bytes] | None = None


class ApacheKafka:
    """A KRaft cluster of ``brokers`` combined broker+controller nodes on ``host``."""

    def __init__(
        self,
        brokers: int = 1,
        *,
        port: int | None = None,
        data_dir: Path | None = None,
        host: str = "127.0.0.1",
        protocol: str = "PLAINTEXT",
        users: list[ScramUser] | None = None,
        config: Mapping[str, str] | None = None,
        heap: str = "512m",
        runtime: KafkaRuntime | None = None,
    ):
        if brokers not in (1, 3):
            raise ConfigError(f"--brokers must be 1 or 3, not {brokers}")
        if protocol not in CLIENT_PROTOCOLS:
            raise ConfigError(f"client listener protocol must be one of {', '.join(CLIENT_PROTOCOLS)}")
        if protocol.startswith("SASL") and not users:
            raise ConfigError(f"a {protocol} listener needs at least one SCRAM user")
        self.n = brokers
        self.host = host
        self.protocol = protocol
        self.users = list(users or [])
        self.config = dict(config or {})
        self.heap = heap
        self.runtime = runtime or KafkaRuntime()
        self._tmp = data_dir is None
        self.data_dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="astreg-kafka-"))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._port = port
        self.nodes: list[_Node] = []
        self.cluster_id = ""
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ addresses
    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.client_port}" for n in self.nodes)

    @property
    def internal_bootstrap(self) -> str:
        """PLAINTEXT listener of every broker (inter-broker traffic, readiness checks)."""
        return ",".join(f"{self.host}:{n.internal_port}" for n in self.nodes)

    @property
    def ca_file(self) -> Path | None:
        return self.data_dir / "tls" / "ca.pem" if self.protocol.endswith("SSL") else None

    def client_settings(self, user: ScramUser | None = None, **extra: Any) -> Any:
        """KafkaSettings reaching the CLIENT listener (first SCRAM user unless one is given)."""
        from ..settings import KafkaSettings

        kw: dict[str, Any] = {"bootstrap": self.bootstrap, "security_protocol": self.protocol}
        if self.protocol.startswith("SASL"):
            u = user or self.users[0]
            kw.update(sasl_mechanism="SCRAM-SHA-512", sasl_username=u.name, sasl_password=u.password)
        if self.ca_file is not None:
            kw["ssl_cafile"] = self.ca_file
        kw.update(extra)
        return KafkaSettings(**kw)

    # ------------------------------------------------------------------ layout
    def _load_or_plan(self) -> None:
        meta = self.data_dir / "astreg-kafka.json"
        if meta.exists():
            m = json.loads(meta.read_text())
            if m["brokers"] != self.n:
                raise ConfigError(f"{self.data_dir} holds a {m['brokers']}-broker cluster, not {self.n}")
            if m.get("protocol", "PLAINTEXT") != self.protocol:
                raise ConfigError(
                    f"{self.data_dir} was made with a {m.get('protocol')} client listener, not {self.protocol}"
                )
            self.cluster_id = m["cluster_id"]
            self.nodes = [_Node(**n) for n in m["nodes"]]
            if self._port is not None and self.nodes[0].client_port != self._port:
                raise ConfigError(f"{self.data_dir} serves on port {self.nodes[0].client_port}, not {self._port}")
            return
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")  # may begin with "-": passed as --cluster-id=<id>
        taken: set[int] = set()

        def port(preferred: int | None) -> int:
            p = preferred if preferred is not None else _free_port(self.host)
            while p in taken:
                p = _free_port(self.host)
            taken.add(p)
            return p

        self.nodes = [
            _Node(
                node_id=i + 1,
                client_port=port(self._port + i if self._port is not None else None),
                internal_port=port(None),
                controller_port=port(None),
            )
            for i in range(self.n)
        ]
        meta.write_text(json.dumps({
            "brokers": self.n, "protocol": self.protocol, "cluster_id": self.cluster_id,
            "version": self.runtime.version,
            "nodes": [{k: getattr(n, k) for k in ("node_id", "client_port", "internal_port", "controller_port")}
                      for n in self.nodes],
        }, indent=2))

    def _properties(self, node: _Node) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.nodes)
        rf = str(min(3, self.n))
        p = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": (f"CLIENT://{self.host}:{node.client_port},INTERNAL://{self.host}:{node.internal_port},"
                          f"CONTROLLER://{self.host}:{node.controller_port}"),
            "advertised.listeners": f"CLIENT://{self.host}:{node.client_port},INTERNAL://{self.host}:{node.internal_port}",
            "listener.security.protocol.map": f"CLIENT:{self.protocol},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "INTERNAL",
            "controller.listener.names": "CONTROLLER",
            "log.dirs": str(self.data_dir / f"broker-{node.node_id}" / "data"),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": rf,
            "transaction.state.log.replication.factor": rf,
            "transaction.state.log.min.isr": str(min(2, self.n)),
            "share.coordinator.state.topic.replication.factor": rf,
            "share.coordinator.state.topic.min.isr": str(min(2, self.n)),
            "default.replication.factor": rf,
            "unclean.leader.election.enable": "false",
        }
        if self.protocol.startswith("SASL"):
            p["sasl.enabled.mechanisms"] = "SCRAM-SHA-512,SCRAM-SHA-256"
            for mech in ("scram-sha-512", "scram-sha-256"):
                p[f"listener.name.client.{mech}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                )
        if self.protocol.endswith("SSL"):
            tls = self.data_dir / "tls"
            p["listener.name.client.ssl.keystore.type"] = "PEM"
            p["listener.name.client.ssl.keystore.location"] = str(tls / "broker.pem")
            p["listener.name.client.ssl.truststore.type"] = "PEM"
            p["listener.name.client.ssl.truststore.location"] = str(tls / "ca.pem")
        p.update(self.config)
        return p

    def _write_configs(self) -> None:
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        for node in self.nodes:
            d = self.data_dir / f"broker-{node.node_id}"
            d.mkdir(parents=True, exist_ok=True)
            text = "".join(f"{k}={_escape(v)}\n" for k, v in self._properties(node).items())
            (d / "server.properties").write_text(text)

    def _format(self, java: str, cp: str) -> None:
        for node in self.nodes:
            d = self.data_dir / f"broker-{node.node_id}"
            if (d / "data" / "meta.properties").exists():
                continue
            cmd = [java, "-Xmx256m", f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                   "-cp", cp, "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                   "-c", str(d / "server.properties"), "--ignore-formatted"]
            for u in self.users:
                for mech in ("SCRAM-SHA-512", "SCRAM-SHA-256"):
                    cmd += ["--add-scram", f"{mech}=[name={u.name},password={u.password}]"]
            res = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                 env={**os.environ, "KAFKA_LOG_DIR": str(d)})
            if res.returncode != 0:
                raise ConfigError(f"formatting broker {node.node_id} failed: {(res.stdout + res.stderr).strip()[-800:]}")

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = READY_TIMEOUT) -> ApacheKafka:
        java = self.runtime.java()
        cp = self.runtime.classpath()
        self._load_or_plan()
        if self.protocol.endswith("SSL"):
            _make_tls(self.data_dir / "tls", self.host)
        self._write_configs()
        self._format(java, cp)
        for node in self.nodes:
            self._spawn(node, java, cp)
        self.wait_ready(timeout)
        return self

    def _spawn(self, node: _Node, java: str | None = None, cp: str | None = None) -> None:
        java = java or self.runtime.java()
        cp = cp or self.runtime.classpath()
        d = self.data_dir / f"broker-{node.node_id}"
        log = open(d / "broker.log", "ab")  # noqa: SIM115 - handed to the child
        argv = [java, f"-Xmx{self.heap}", f"-Xms{min(256, _mb(self.heap))}m", *JVM_OPTS,
                f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={d}", "-cp", cp, "kafka.Kafka", str(d / "server.properties")]
        # Own process group; SIGKILL when the process (thread) that started it dies.
        node.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     process_group=0, preexec_fn=die_with_parent(), cwd=d)
        log.close()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running broker is in the cluster metadata (asked on INTERNAL)."""
        deadline = time.monotonic() + timeout
        want = {n.node_id for n in self.nodes if n.proc is not None and n.proc.poll() is None}
        last = ""
        while time.monotonic() < deadline:
            for n in self.nodes:
                if n.proc is not None and n.proc.poll() is not None and n.node_id in want:
                    raise ConfigError(f"Kafka broker {n.node_id} exited with status {n.proc.returncode}:\n"
                                      + self.log_tail(n.node_id))
            try:
                seen = cluster_info(self.host, [n.internal_port for n in self.nodes if n.node_id in want]).brokers
            except OSError as exc:
                last = str(exc)
                seen = frozenset()
            if want <= seen:
                return
            time.sleep(0.2)
        raise ConfigError(f"Kafka brokers {sorted(want)} not ready in {timeout:.0f} s ({last}):\n"
                          + "\n".join(self.log_tail(i) for i in sorted(want)))

    def log_tail(self, node_id: int, lines: int = 20) -> str:
        p = self.data_dir / f"broker-{node_id}" / "broker.log"
        try:
            return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def node(self, node_id: int) -> _Node:
        return self.nodes[node_id - 1]

    def kill(self, node_id: int) -> None:
        """SIGKILL one broker (fault injection)."""
        n = self.node(node_id)
        if n.proc is not None and n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait(30)

    def stop_broker(self, node_id: int, grace: float = 30.0) -> None:
        """SIGTERM one broker (controlled shutdown), SIGKILL after ``grace``."""
        n = self.node(node_id)
        if n.proc is None or n.proc.poll() is not None:
            return
        n.proc.terminate()
        try:
            n.proc.wait(grace)
        except subprocess.TimeoutExpired:
            logger.warning("Kafka broker %d ignored SIGTERM for %.0f s: killing it", node_id, grace)
            n.proc.kill()
            n.proc.wait(30)

    def start_broker(self, node_id: int, timeout: float = READY_TIMEOUT) -> None:
        """Start one stopped broker again and wait until the cluster lists it."""
        n = self.node(node_id)
        if n.proc is None or n.proc.poll() is not None:
            self._spawn(n)
        self.wait_ready(timeout)

    def alive(self) -> list[int]:
        return [n.node_id for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def stop(self, grace: float = 20.0) -> None:
        """Stop every broker (all at once: the last ones cannot shut down cleanly without quorum)."""
        with self._lock:
            running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
            for n in running:
                with contextlib.suppress(ProcessLookupError):
                    n.proc.terminate()  # type: ignore[union-attr]
            deadline = time.monotonic() + grace
            for n in running:
                assert n.proc is not None
                try:
                    n.proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(30)
            if self._tmp:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mb(heap: str) -> int:
    m = re.fullmatch(r"(\d+)([mMgG])", heap)
    if not m:
        raise ConfigError(f"heap size {heap!r} is not like 512m or 1g")
    return int(m.group(1)) * (1024 if m.group(2).lower() == "g" else 1)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\")


def _make_tls(d: Path, host: str) -> None:
    """A private CA and a broker certificate for ``host``/localhost (made once, kept)."""
    if (d / "ca.pem").exists() and (d / "broker.pem").exists():
        return
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "astreg kafka test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    with contextlib.suppress(ValueError):
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(list(dict.fromkeys(sans))), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (d / "broker.pem").write_bytes(key_pem + cert.public_bytes(pem) + ca.public_bytes(pem))
    os.chmod(d / "broker.pem", 0o600)
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))


_LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.org.name = org.apache.kafka
logger.org.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
"""
