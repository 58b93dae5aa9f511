"""The agent ``track_registrations``: registration events → table rows → locations topic.

It takes the registrations topic in batches (raw bytes, decoded here with schemas.codec),
applies :func:`streams.rules.decide` to each event, then per endpoint of the batch writes the
table once if the durable state changed and publishes the row (or a tombstone) once if what
consumers see changed. Undecodable or impossible records go to the dead-letter topic with the
reason in headers; nothing here raises on bad input. Outputs go through
:class:`streams.outputs.Outputs` (the app's producer), so the agent stays free of client code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from astreg.auth import Verifier
from astreg.delivery import delivered
from astreg.errors import UndecodableRecord
from astreg.partition import partition_for
from astreg.patches import bulk
from schemas.codec import registration_codec
from schemas.models import EventKind, RegistrationEvent, Source
from schemas.validate import registration_problem

from .rules import DEFAULT_SKEW_MS, Row, decide, durable_rest
from .stream_app import StreamApp

__all__ = ["attach", "Plan", "plan_batch", "check_event", "Checks", "is_synthetic"]

logger = logging.getLogger(__name__)

# Ignore reasons that mean "this record can never have been valid" → dead-letter topic.
DEADLETTER_REASONS = frozenset({"seq_backwards"})


_SYNTHETIC_KINDS = frozenset({EventKind.STALE, EventKind.EXPIRE, EventKind.RECONCILE})


def is_synthetic(ev: RegistrationEvent) -> bool:
    """A decision of the workers (signed with their key), not an observation of a node."""
    return ev.source is Source.SYNTHETIC or ev.kind in _SYNTHETIC_KINDS


def _no_epoch(node: str) -> int | None:
    return None


@dataclass
class Checks:
    """What a worker checks on every record besides decoding (docs/security.md).

    ``verifier``: the record's signature is its node's (or the workers' for synthetic events);
    ``partitions``: the registrations topic's partition count (the record must be in its key's
    partition); ``epoch_of``: the node's current producer epoch as announced on the nodes topic
    (older producers are fenced)."""

    verifier: Verifier = field(default_factory=lambda: Verifier(None))
    partitions: int | None = None
    epoch_of: Callable[[str], int | None] = _no_epoch


# murmur2 is pure Python in aiokafka (~1.5 µs): remember the partitions of the keys seen lately.
_partition_of = functools.lru_cache(maxsize=1 << 18)(partition_for)


def _record_ms(msg: Any) -> int | None:
    """The broker timestamp of a record in ms (aiokafka: int ms; Faust: float seconds)."""
    t = getattr(msg, "timestamp", None)
    if t is None:
        return None
    return int(t * 1000) if isinstance(t, float) else int(t)


def check_event(ev: RegistrationEvent, msg: Any, now_ms: int, checks: Checks) -> str | None:
    """Why a decoded event may not be applied (a dead-letter reason), or None."""
    if not ev.endpoint:
        return "missing_endpoint"
    if not ev.node:
        return "missing_node"
    key = msg.key
    if key is None:
        return "missing_key"  # placed by no rule: its endpoint's partition never sees it
    if key != ev.endpoint.encode():
        return "key_mismatch"  # would break co-partitioning of the table
    if checks.partitions and msg.partition != _partition_of(key, checks.partitions):
        return "wrong_partition"  # the endpoint's row lives in another partition
    problem = checks.verifier.check(b"registrations", ev.node, is_synthetic(ev), key, msg.value,
                                    getattr(msg, "headers", None))
    if problem is not None:
        return problem
    return registration_problem(ev, now_ms, _record_ms(msg))


@dataclass
class Plan:
    """What one batch of events does: rows to write, rows to publish, dead letters, counts."""

    writes: list[tuple[str, Row, Any]] = field(default_factory=list)  # (endpoint, row, its last event)
    publish: list[tuple[str, Row, int | None]] = field(default_factory=list)  # (endpoint, row, source partition)
    deadletters: list[tuple[Any, str, str | None]] = field(default_factory=list)  # (message, reason, error)
    outcomes: Counter[str] = field(default_factory=Counter)
    size_delta: int = 0  # rows that gained (+1) or lost (-1) their last contact
    nodes: set[str] = field(default_factory=set)  # nodes whose observations were applied


def plan_batch(events: list[Any], read: Callable[[str, Any], Row | None], decode: Callable[..., RegistrationEvent],
               now_ms: int, skew_ms: int = DEFAULT_SKEW_MS, checks: Checks | None = None) -> Plan:
    """Apply a batch of Faust events to their rows, synchronously (no await per event).

    Each endpoint's row is read once (``read(endpoint, event)``), every event of the batch is
    applied in order, then the row is to be written only if its durable state changed and
    published only if what consumers see changed (docs/stream.md "Publication").
    """
    plan = Plan()
    before: dict[str, Row | None] = {}
    rows: dict[str, Row] = {}
    last_event: dict[str, Any] = {}
    replayed: set[str] = set()  # endpoints with an event read again (a restart, a rebalance)
    outcomes = plan.outcomes
    checks = checks or Checks()
    epoch_of = checks.epoch_of
    for event in events:
        msg = event.message
        try:
            rec = decode(msg.value, topic=msg.topic, partition=msg.partition, offset=msg.offset)
        except UndecodableRecord as exc:
            outcomes["deadletter"] += 1
            plan.deadletters.append((msg, "undecodable", exc.reason))
            continue
        problem = check_event(rec, msg, now_ms, checks)
        if problem is not None:
            outcomes["deadletter"] += 1
            plan.deadletters.append((msg, problem, None))
            continue
        current = None if is_synthetic(rec) else epoch_of(rec.node)
        if current is not None and rec.producer_epoch < current:
            outcomes["fenced"] += 1  # a producer the node's newer one replaced: never flips the table
            continue
        key = rec.endpoint
        row = rows.get(key)
        if row is None and key not in before:
            row = before[key] = read(key, event)
        out = decide(row, rec, msg.offset, now_ms=now_ms, skew_ms=skew_ms, current_epoch=current)
        if out.reason in DEADLETTER_REASONS:
            outcomes["deadletter"] += 1
            plan.deadletters.append((msg, out.reason, None))
            continue
        outcomes[out.reason] += 1
        if out.reason == "replay":
            replayed.add(key)
        if current is None and not is_synthetic(rec):
            plan.nodes.add(rec.node)  # never announced on the nodes topic (yet): the timers watch it
        rows[key] = out.row
        last_event[key] = event
    for key, row in rows.items():
        old = before.get(key)
        # The rules bump ``version`` on every step that changes what consumers see, so an
        # unchanged version means an unchanged visible_key; only the rest of the durable state
        # (snapshot confirmations, expiries, devices) is compared then. A changed version may
        # (rarely: A -> B -> A inside one batch) republish an identical record: harmless.
        # An event read again was applied before, but its location record may never have been
        # acknowledged (the source offset stays uncommitted until it is, then the worker
        # stopped): publish the row again. Replays happen only after a restart or a rebalance,
        # the locations topic is compacted and every consumer is idempotent.
        again = key in replayed and old is not None
        if old is not None and (row is old or (
                old.version == row.version and durable_rest(old) == durable_rest(row))):
            if again:
                plan.publish.append((key, row, _source_partition(last_event[key])))
            continue
        plan.writes.append((key, row, last_event[key]))
        had, has = bool(old is not None and old.contacts), bool(row.contacts)
        plan.size_delta += has - had
        if old is None and not row.contacts:
            continue  # nothing was ever published for it
        if again or old is None or old.version != row.version:
            plan.publish.append((key, row, _source_partition(last_event[key])))
    return plan


def _source_partition(event: Any) -> int | None:
    """The partition of the event's record when it is keyed by the endpoint (placed by murmur2,
    like the location record: see Outputs.publish), else None."""
    msg = event.message
    return msg.partition if msg.key is not None else None


def attach(stream: StreamApp) -> None:
    app, table, settings = stream.app, stream.locations, stream.settings
    codec = registration_codec()
    outputs = stream.outputs
    metrics = stream.metrics
    src = stream.topics.names.topic_registrations

    @app.agent(stream.topics.registrations, name="track_registrations")  # type: ignore[arg-type]
    async def track_registrations(records: Any) -> AsyncIterator[int]:
        """Apply every registration event to its endpoint's row, a batch at a time."""
        async for events in records.take_events(settings.batch_size, within=settings.batch_within):
            t0 = time.perf_counter()
            # Faust acks these events when the next batch is taken: wait for the cluster to
            # acknowledge their outputs first (the bulk ingest acks asynchronously instead).
            try:
                await delivered(await apply_batch(events))
            except Exception as exc:  # noqa: BLE001 - any delivery failure stops the worker
                await outputs_lost(exc, len(events))
                raise
            logger.debug("batch of %d events applied in %.1f ms", len(events), (time.perf_counter() - t0) * 1000)
            yield len(events)

    applied = stream.applied

    checks = Checks(verifier=stream.verifier, partitions=stream.topics.names.partitions,
                    epoch_of=stream.nodes.epoch_of)

    async def outputs_lost(exc: BaseException, count: int) -> None:
        """The cluster refused the outputs of ``count`` events: their offsets stay uncommitted
        and the worker stops, so that they are applied and published again (by its restart or
        by the next owner of the partitions)."""
        metrics.outputs_failed.inc()
        logger.error("the outputs of %d registration events were not acknowledged by the cluster (%s: %s); "
                     "their offsets stay uncommitted and the worker stops", count, type(exc).__name__, exc)
        await app.crash(exc)

    async def apply_batch(events: list[Any]) -> list[asyncio.Future[Any]]:
        """Apply a batch; return the delivery futures of everything it sent (changelog,
        locations, dead letters): its offsets may be committed once they are acknowledged."""
        plan = plan_batch(events, table.read, codec.decode, int(time.time() * 1000),
                          int(stream.settings.max_clock_skew * 1000), checks)
        # Each changelog record goes to the partition of the endpoint's last event (co-partitioned).
        futures = await table.write_batch(plan.writes)
        for msg, reason, error in plan.deadletters:
            sent = await outputs.deadletter(src, msg.key, msg.value, reason, msg.partition, msg.offset, error)
            if isinstance(sent, asyncio.Future):
                futures.append(sent)
        futures += await outputs.publish(plan.publish)
        for outcome, n in plan.outcomes.items():
            metrics.events.labels(outcome).inc(n)
        if plan.writes:
            metrics.table_writes.inc(len(plan.writes))
        if plan.size_delta:
            metrics.table_size.inc(plan.size_delta)
        if plan.nodes:
            stream.table_nodes.update(plan.nodes)
        for event in events:  # per partition in offset order: the last one is the highest
            applied[event.message.partition] = event.message.offset
        return futures

    stream.apply_batch = apply_batch
    if settings.ingest == "bulk":  # the agent stays declared: subscription + co-partitioning
        bulk.install(app, src, apply_batch, settings.batch_size, outputs_lost, metrics)
    stream.agent = track_registrations
