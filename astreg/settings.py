"""Settings shared by every astreg process: Kafka connection and topic names.

Read once per process at the edge (the CLI builds them from options and ``ASTREG_*``
environment variables) and passed down. Secrets are ``SecretStr`` and never logged. The
same ``KafkaSettings`` feed aiokafka clients (:meth:`KafkaSettings.aiokafka_kwargs`) and Faust
(:meth:`KafkaSettings.faust_kwargs`), so producer, worker, sinks, topics and bench all connect
the same way. Every settings class of astreg, here or next to the code it configures, derives
from :class:`AstregSettings`, so every command reads the environment by the same rules.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .auth import Verifier, load_key
from .errors import ConfigError

__all__ = ["AstregSettings", "AuthSettings", "KafkaSettings", "TopicSettings", "TOPIC_DEFAULTS", "EMBEDDED_FETCH_MAX_WAIT_MS"]

TOPIC_DEFAULTS = {
    "registrations": "asterisk.registrations.v1",
    "nodes": "asterisk.nodes.v1",
    "locations": "asterisk.locations.v1",
    "deadletter": "asterisk.deadletter.v1",
    "quality": "asterisk.quality.v1",
    "alerts": "asterisk.alerts.v1",
}


# The embedded broker answers a fetch only when its max wait expires, even if records arrived.
EMBEDDED_FETCH_MAX_WAIT_MS = 20


class AstregSettings(BaseSettings):
    """Base of every astreg settings class: one way to read the environment for every command.

    A subclass overrides ``env_prefix`` only (``ASTREG_SQL_`` ...), so a variable means the
    same thing to every command that reads it:

    * ``ASTREG_*`` variables a class has no field for are ignored (``extra="ignore"``): one
      environment file feeds the producer, the worker and the sinks alike.
    * Settings are frozen: read once at the edge and passed down, never changed on the way.
    * An empty variable (``ASTREG_X=``) is unset, the field keeps its default
      (``env_ignore_empty``). systemd ``EnvironmentFile=`` lines and compose ``environment:``
      entries write ``X=`` for "no value", and click, which reads the same variables for the
      options, already skips empty ones; otherwise a command would fail to parse ``""`` as a
      port or take it as a value (an empty token, an empty key prefix). An empty value on
      purpose is given as an option (``--key-prefix ''``).
    """

    model_config = SettingsConfigDict(env_prefix="ASTREG_", extra="ignore", frozen=True, env_ignore_empty=True)


class AuthSettings(AstregSettings):
    """Record authenticity (astreg/auth.py): the keys a producer signs with and a worker checks.

    Without a key a command refuses to start, unless ``--insecure-no-auth`` says so: a
    pipeline that applies unsigned records lets anyone who can write its topics route calls.
    """

    cluster_key_file: Path | None = Field(
        None, description="Cluster secret (astreg keys new). Workers check every record with the node keys "
        "derived from it; a producer given it derives its own node's key.")
    insecure_no_auth: bool = Field(
        False, description="Run without record authenticity: records are neither signed nor checked, and "
        "whoever can write the registrations topic controls call routing.")

    def _require_key(self) -> None:
        if not self.insecure_no_auth and not self._has_key():
            raise ConfigError(f"no key: give {self._key_options()} (astreg keys --help), or --insecure-no-auth "
                              "to run without record authenticity")

    def _has_key(self) -> bool:
        return self.cluster_key_file is not None

    def _key_options(self) -> str:
        return "--cluster-key-file / ASTREG_CLUSTER_KEY_FILE"

    def verifier(self) -> Verifier:
        """The workers' check of every record (passes everything with --insecure-no-auth);
        ConfigError without a key."""
        self._require_key()
        if self.insecure_no_auth or self.cluster_key_file is None:
            return Verifier(None)
        return Verifier(load_key(self.cluster_key_file))


class KafkaSettings(AstregSettings):
    """How every astreg process reaches Kafka."""

    bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated HOST:PORT."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers (TLS).")
    ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Client private key for mutual TLS.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client key.")
    client_id: str = Field("astreg", description="Kafka client id prefix.")
    idempotence: bool | None = Field(
        None,
        description="Idempotent producers with acks=all [default: on; off on the embedded broker, which cannot].",
    )
    embedded: bool | None = Field(
        None,
        description="The broker is the embedded Tansu one: short group timeouts, no idempotence "
        "[default: recognised from the broker's cluster id].",
    )
    session_timeout: float = Field(
        10.0, ge=3, le=300,
        description="Seconds a consumer group member (worker, sink) may stay silent before its partitions "
        "move to the others: how long a killed worker's endpoints go unanswered (Kafka's default: 45).",
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent Schema Registry URL; unset = Avro single-object encoding."
    )

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ConfigError(f"security protocol {self.security_protocol} needs --sasl-username")
        if self.embedded and self.idempotence:
            raise ConfigError("the embedded broker cannot do idempotent producers")
        return self

    @property
    def idempotent(self) -> bool:
        """Whether producers are idempotent: asked for, or by default unless on the embedded broker."""
        return bool(self.idempotence) if self.idempotence is not None else not self.embedded

    def resolved(self, wait: float = 5.0) -> KafkaSettings:
        """These settings with ``embedded`` decided: when unset, ask the broker its cluster id.

        The embedded broker (see :mod:`astreg.broker`) is recognised by its cluster id, so no
        command needs a tuning flag for it. A broker that does not answer within ``wait`` seconds,
        or a TLS/SASL listener (never the embedded broker), counts as Apache Kafka."""
        if self.embedded is not None:
            return self
        embedded = False
        if self.security_protocol == "PLAINTEXT":
            embedded = _probe_embedded(self.servers, wait)
        return self.model_copy(update={"embedded": embedded})

    def env(self) -> dict[str, str]:
        """``ASTREG_*`` variables that give a child ``astreg`` process this connection (secrets
        travel in the environment, never on a command line)."""
        env = {"ASTREG_BOOTSTRAP": self.bootstrap, "ASTREG_SECURITY_PROTOCOL": self.security_protocol,
               "ASTREG_SASL_MECHANISM": self.sasl_mechanism}
        if self.embedded is not None:
            env["ASTREG_EMBEDDED"] = "1" if self.embedded else "0"
        if self.idempotence is not None:
            env["ASTREG_IDEMPOTENCE"] = "1" if self.idempotence else "0"
        if self.sasl_username:
            env["ASTREG_SASL_USERNAME"] = self.sasl_username
        if self.sasl_password is not None:
            env["ASTREG_SASL_PASSWORD"] = self.sasl_password.get_secret_value()
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                env[f"ASTREG_{name.upper()}"] = str(value)
        return env

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.security_protocol.endswith("SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(
                str(self.ssl_certfile),
                str(self.ssl_keyfile) if self.ssl_keyfile else None,
                self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
            )
        return ctx

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Connection arguments for any aiokafka client."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        ctx = self.ssl_context()
        if ctx is not None:
            kw["ssl_context"] = ctx
        return kw

    def group_kwargs(self) -> dict[str, Any]:
        """Consumer tuning: on the embedded broker short group timeouts (its joins wait the
        whole rebalance timeout) and a short fetch wait (its long-polling fetch is not woken by
        new records, so every hop would wait up to ``fetch_max_wait_ms``, Faust's 1500 ms, instead of
        a few ms); Kafka's defaults otherwise."""
        if not self.embedded:
            return {
                "session_timeout_ms": int(self.session_timeout * 1000),
                "heartbeat_interval_ms": int(self._heartbeat_interval() * 1000),
            }
        return {
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "rebalance_timeout_ms": 3000,
            "fetch_max_wait_ms": EMBEDDED_FETCH_MAX_WAIT_MS,
        }

    def _heartbeat_interval(self) -> float:
        """A third of the session timeout (Kafka's rule of thumb), at most 3 s."""
        return min(3.0, self.session_timeout / 3)

    def faust_kwargs(self) -> dict[str, Any]:
        """Broker settings for ``faust.App(...)``."""
        from faust.auth import SASLCredentials, SSLCredentials  # Faust only where it's used

        kw: dict[str, Any] = {
            "broker": ";".join(f"kafka://{s}" for s in self.servers),
            "broker_client_id": self.client_id,
        }
        if self.security_protocol.startswith("SASL"):
            kw["broker_credentials"] = SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password.get_secret_value() if self.sasl_password else None,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context(),
            )
        elif self.security_protocol == "SSL":
            kw["broker_credentials"] = SSLCredentials(self.ssl_context())
        if not self.embedded:
            kw.update(broker_session_timeout=self.session_timeout,
                      broker_heartbeat_interval=self._heartbeat_interval())
        if self.embedded:
            kw.update(
                broker_rebalance_timeout=3,
                broker_session_timeout=6,
                broker_heartbeat_interval=1,
                producer_max_batch_size=16384,
                recovery_consistency_check=False,
            )
        return kw

    def __repr__(self) -> str:  # SecretStr already masks; keep repr short for logs
        return f"KafkaSettings(bootstrap={self.bootstrap!r}, security_protocol={self.security_protocol!r})"


def _probe_embedded(servers: list[str], wait: float) -> bool:
    import time

    from .kafka.probe import cluster_info

    deadline = time.monotonic() + wait
    while True:
        for server in servers:
            host, _, port = server.rpartition(":")
            try:
                return cluster_info(host.strip("[]") or "127.0.0.1", [int(port)], timeout=1.0).embedded
            except (OSError, ValueError):
                continue
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


class TopicSettings(AstregSettings):
    """Topic names (the public contract) and layout."""

    topic_registrations: str = Field(TOPIC_DEFAULTS["registrations"], description="Registrations topic.")
    topic_nodes: str = Field(TOPIC_DEFAULTS["nodes"], description="Node status topic.")
    topic_locations: str = Field(TOPIC_DEFAULTS["locations"], description="Locations topic.")
    topic_deadletter: str = Field(TOPIC_DEFAULTS["deadletter"], description="Dead-letter topic.")
    topic_quality: str = Field(TOPIC_DEFAULTS["quality"], description="Call quality samples topic.")
    topic_alerts: str = Field(TOPIC_DEFAULTS["alerts"], description="Alerts topic (compacted).")
    partitions: int = Field(12, ge=1, description="Partitions of the endpoint-keyed topics.")
    replication_factor: int | None = Field(
        None, ge=1, description="Replication factor of created topics [default: min(3, brokers)]."
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas of created topics [default: 2 at RF 3, else 1]."
    )
    compact_segment_ms: int = Field(
        3600 * 1000, ge=1000, description="segment.ms of the compacted topics (bounds how long old values stay)."
    )
    compact_dirty_ratio: float = Field(
        0.1, gt=0, le=0.9, description="min.cleanable.dirty.ratio of the compacted topics."
    )
    compact_delete_retention_ms: int = Field(
        24 * 3600 * 1000, ge=0, description="delete.retention.ms of the compacted topics (tombstone lifetime)."
    )
    compact_max_lag_ms: int = Field(
        6 * 3600 * 1000, ge=1000, description="max.compaction.lag.ms of the compacted topics."
    )
    registrations_retention_ms: int = Field(
        7 * 24 * 3600 * 1000, description="Retention of the registrations history (ms)."
    )

    def with_suffix(self, suffix: str) -> TopicSettings:
        """Same layout, every topic name suffixed (tests and side-by-side benchmarks)."""
        return self.model_copy(
            update={
                "topic_registrations": f"{self.topic_registrations}.{suffix}",
                "topic_nodes": f"{self.topic_nodes}.{suffix}",
                "topic_locations": f"{self.topic_locations}.{suffix}",
                "topic_deadletter": f"{self.topic_deadletter}.{suffix}",
                "topic_quality": f"{self.topic_quality}.{suffix}",
                "topic_alerts": f"{self.topic_alerts}.{suffix}",
            }
        )
