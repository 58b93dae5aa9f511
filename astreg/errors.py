"""The one exception tree of astreg: every exception class the packages define lives here.

    Exception
    └── AstregError                  base of every error astreg raises on purpose
        ├── ConfigError              bad settings or a broken deployment layout (e.g. topics)
        ├── MalformedAmiEvent        an AMI message that cannot become a RegistrationEvent
        ├── InvalidSipUri (ValueError)
        │                            text that is not a SIP/SIPS URI by RFC 3261's grammar
        ├── UndecodableRecord        Kafka bytes that are not a record of the expected schema
        ├── SchemaRegistryError      the Schema Registry refused or could not be reached
        ├── SinkUnavailable          a store is down or slow: retry after ``retry_after`` seconds
        │   │                        (raised by sinks; the runner pauses, backs off and retries)
        │   └── StoreLost            the store lost what the sink wrote (a table or keys gone):
        │                            set up again, compare offsets, rebuild what is behind
        ├── PermanentWriteError      a record a store can never take: dead-lettered, the sink goes on
        ├── ProducerFenced           a newer producer speaks for this node id: this one stops
        ├── AmiError                 an AMI link failed: cannot connect, closed, no answer in time
        │   └── LoginFailed          the AMI refused the login (the producer retries with backoff)
        ├── FrameTooLarge (ValueError)
        │                            an AMI message longer than the framer's limit (skipped)
        ├── WorkerUnavailable        a worker cannot answer a query correctly now (rebalance,
        │                            recovery, peer down): HTTP 503 with Retry-After
        ├── BadQuery (ValueError)    a query parameter the web API cannot use: HTTP 400
        └── SimulatorError (ValueError)
                                     a request the AMI simulator cannot carry out (unknown
                                     node or phone, bad parameters): HTTP 400 on its control port

``InvalidSipUri``, ``BadQuery`` and ``SimulatorError`` are ``ValueError`` too: they are bad
input, and callers that validate input catch ``ValueError``. The only exceptions defined
elsewhere are private control flow that never leaves its module (``schemas.codec``'s generated
Avro reader: a bad body becomes :class:`UndecodableRecord`, an unsupported shape selects fastavro;
``sinks.base``'s runner: a stop while it waits for its store, a write dropped for a rebuild).

Every error says what was wrong and where; wrap lower-level errors with ``raise ... from exc``.
This module imports nothing from the rest of astreg, so every package may use it.
"""

from __future__ import annotations

__all__ = [
    "AstregError",
    "ConfigError",
    "MalformedAmiEvent",
    "InvalidSipUri",
    "UndecodableRecord",
    "SchemaRegistryError",
    "SinkUnavailable",
    "StoreLost",
    "PermanentWriteError",
    "ProducerFenced",
    "AmiError",
    "LoginFailed",
    "FrameTooLarge",
    "WorkerUnavailable",
    "BadQuery",
    "SimulatorError",
]


class AstregError(Exception):
    """Base of every error astreg raises on purpose."""


class ConfigError(AstregError):
    """Settings or deployment layout that astreg refuses to run on."""


class MalformedAmiEvent(AstregError):
    """An AMI message with missing headers, unknown values or oversize fields."""

    def __init__(self, reason: str, event: str = "", headers: dict[str, str] | None = None):
        self.reason = reason
        self.event = event
        self.headers = dict(headers or {})
        super().__init__(f"malformed AMI event {event or '?'}: {reason}")


class InvalidSipUri(AstregError, ValueError):
    """Text that is not a SIP or SIPS URI by RFC 3261's grammar; ``reason`` names the part."""

    def __init__(self, reason: str, uri: str = ""):
        self.reason = reason
        self.uri = uri
        super().__init__(f"not a SIP URI ({reason}): {uri[:80]!r}")


class UndecodableRecord(AstregError):
    """Bytes that are not a record of the expected schema; names where they came from."""

    def __init__(
        self,
        reason: str,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ):
        self.reason = reason
        self.topic = topic
        self.partition = partition
        self.offset = offset
        where = f"{topic or '?'}[{partition if partition is not None else '?'}]@{offset if offset is not None else '?'}"
        super().__init__(f"undecodable record at {where}: {reason}")


class SchemaRegistryError(AstregError):
    """The Schema Registry answered with an error or could not be reached."""


class SinkUnavailable(AstregError):
    """The store cannot take writes now; try again after ``retry_after`` seconds."""

    def __init__(self, reason: str, retry_after: float = 1.0):
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"sink unavailable ({reason}); retry after {retry_after:.1f}s")


class StoreLost(SinkUnavailable):
    """The store no longer holds what the sink wrote (its table or keys are gone: a database
    dropped and recreated, a flushed Redis). The runner sets the store up again, compares the
    offsets kept in the store with its own and rebuilds the partitions that are behind."""


class PermanentWriteError(AstregError):
    """A record that can never be written (constraint violation): dead-letter it and go on."""


class ProducerFenced(AstregError):
    """Another producer process, started later, speaks for the same node id (Kafka's producer
    fencing, by node): this one stops so the table never follows two producers."""


class AmiError(AstregError):
    """The AMI link failed (cannot connect, not an AMI server, closed, no answer in time)."""


class LoginFailed(AmiError):
    """The AMI refused our credentials (retried with backoff: config may be fixed live)."""


class FrameTooLarge(AstregError, ValueError):
    """An AMI message longer than the framer's limit: reported, then skipped to its end."""


class WorkerUnavailable(AstregError):
    """This worker cannot answer correctly right now (rebalance, recovery, peer down): 503."""


class BadQuery(AstregError, ValueError):
    """A query parameter the API cannot use; the message names it (answered as HTTP 400)."""


class SimulatorError(AstregError, ValueError):
    """A request the simulator cannot carry out (unknown node/phone, bad state name)."""
