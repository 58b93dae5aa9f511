"""Before a component starts: can it reach Kafka, log in, trust the brokers, find its topics?

aiokafka reports every bootstrap failure as ``KafkaConnectionError("Unable to bootstrap")`` and
logs the reason separately; an operator needs the reason. :func:`check_kafka` connects to each
bootstrap server itself and turns the first failure into one :class:`ConfigError` line that says
what is wrong and what to change (a wrong address, a refused SASL login, an untrusted
certificate, a plaintext client on a TLS listener, a missing topic). Each command calls it
first and exits non-zero with that line, without a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import ssl
from collections.abc import Iterable

from .errors import ConfigError
from .settings import KafkaSettings

__all__ = ["check_kafka", "explain", "preflight"]


def explain(kafka: KafkaSettings, server: str, exc: BaseException) -> str:
    """One line saying why ``server`` refused ``kafka``'s connection."""
    from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

    cause: BaseException = exc
    while isinstance(cause, KafkaConnectionError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, SaslAuthenticationFailed):
        return (f"Kafka at {server} refused the SASL login of user {kafka.sasl_username!r} "
                f"({kafka.sasl_mechanism}): wrong user name or password")
    if isinstance(cause, UnsupportedSaslMechanismError):
        return f"Kafka at {server} does not offer SASL mechanism {kafka.sasl_mechanism}: {cause}"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return (f"TLS: the certificate of Kafka at {server} is not trusted ({cause.verify_message}): "
                "set --ssl-cafile to the CA that signed it")
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake with Kafka at {server} failed ({cause.reason or cause}): check --security-protocol"
    if isinstance(cause, TimeoutError):
        return f"Kafka at {server} did not answer in time: check --bootstrap and the network"
    if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
        return f"cannot reach Kafka at {server}: connection refused (check --bootstrap)"
    if isinstance(cause, OSError) and cause.errno is not None:
        return f"cannot reach Kafka at {server}: {cause.strerror or cause} (check --bootstrap)"
    if isinstance(cause, asyncio.IncompleteReadError) or (
        isinstance(cause, KafkaConnectionError) and "closed" in str(cause)
    ):
        hint = ("the listener probably expects TLS or SASL (--security-protocol)"
                if kafka.security_protocol == "PLAINTEXT" else "check --security-protocol and --sasl-mechanism")
        return f"Kafka at {server} closed the connection: {hint}"
    return f"cannot connect to Kafka at {server}: {cause}"


async def _try(kafka: KafkaSettings, server: str, timeout: float) -> None:
    from aiokafka.conn import create_conn

    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"bootstrap server {server!r} is not HOST:PORT")
    kw = kafka.aiokafka_kwargs()
    conn = await asyncio.wait_for(
        create_conn(
            host.strip("[]"), int(port), client_id=f"{kafka.client_id}-preflight",
            request_timeout_ms=int(timeout * 1000), ssl_context=kw.get("ssl_context"),
            security_protocol=kafka.security_protocol, sasl_mechanism=kw.get("sasl_mechanism"),
            sasl_plain_username=kw.get("sasl_plain_username"), sasl_plain_password=kw.get("sasl_plain_password"),
        ),
        timeout,
    )
    conn.close()


async def check_kafka(kafka: KafkaSettings, topics: Iterable[str] = (), timeout: float = 10.0) -> None:
    """Raise ConfigError (one line) unless a bootstrap server takes us and every topic exists."""
    from aiokafka.errors import KafkaError, SaslAuthenticationFailed

    if not kafka.servers:
        raise ConfigError("no Kafka bootstrap server given (--bootstrap HOST:PORT)")
    reasons: list[str] = []
    ok = False
    for server in kafka.servers:
        try:
            await _try(kafka, server, timeout)
            ok = True
            break
        except (TimeoutError, OSError, KafkaError, ssl.SSLError) as exc:
            reasons.append(explain(kafka, server, exc))
            # A refused login or an untrusted certificate will not differ on the next server.
            if isinstance(exc, SaslAuthenticationFailed | ssl.SSLError):
                break
    if not ok:
        raise ConfigError("; ".join(dict.fromkeys(reasons)))
    wanted = [t for t in topics if t]
    if not wanted:
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(client_id=f"{kafka.client_id}-preflight", request_timeout_ms=int(timeout * 1000),
                                **kafka.aiokafka_kwargs())
    try:
        await asyncio.wait_for(admin.start(), timeout)
        existing = set(await admin.list_topics())
    except (TimeoutError, KafkaError, OSError) as exc:
        raise ConfigError(explain(kafka, kafka.servers[0], exc)) from exc
    finally:
        await admin.close()
    missing = [t for t in wanted if t not in existing]
    if missing:
        raise ConfigError(
            f"topic {missing[0]} does not exist on Kafka at {kafka.bootstrap}"
            + (f" (nor {', '.join(missing[1:])})" if len(missing) > 1 else "")
            + ": run `astreg topics create` first"
        )


def preflight(kafka: KafkaSettings, topics: Iterable[str] = (), timeout: float = 10.0) -> None:
    """:func:`check_kafka` for a command's entry point: a failure is one line and exit status 1."""
    import click

    try:
        asyncio.run(check_kafka(kafka, topics, timeout))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
