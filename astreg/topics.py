"""Create the topics of the contract, and refuse to run on a broken layout.

``astreg topics create`` is idempotent: existing topics with the expected partition count and
cleanup policy are left alone; a topic with another partition count or policy stops the command
with a clear message (a wrong partition count silently breaks co-partitioning of the table).
Topics are always created explicitly because the embedded broker auto-creates unknown topics
with 4 partitions on the first metadata request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .errors import ConfigError
from .patches.aiokafka import known_brokers
from .settings import KafkaSettings, TopicSettings

__all__ = ["TopicSpec", "topic_specs", "ensure_topics", "TopicCheck", "compaction_configs", "replication"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    cleanup_policy: str  # "delete" or "compact"
    retention_ms: int | None = None
    # Co-partitioned with the table (keyed by endpoint and read by the workers' agent): another
    # partition count silently breaks the layout, so it is an error. For the other topics a
    # different count only changes parallelism: a warning.
    copartitioned: bool = False
    extra: tuple[tuple[str, str], ...] = ()

    def configs(self) -> dict[str, str]:
        cfg = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            cfg["retention.ms"] = str(self.retention_ms)
        cfg.update(self.extra)
        return cfg


def compaction_configs(t: TopicSettings) -> tuple[tuple[str, str], ...]:
    """The compaction settings of every compacted topic, set deliberately (docs/topics.md):

    * ``segment.ms``: the active segment is never cleaned, so rolling it bounds how long a
      superseded value or a tombstone can stay (Kafka's default, 7 days, would make a rebuilding
      sink replay a week of moves);
    * ``min.cleanable.dirty.ratio``: clean once this share of the log is superseded (Kafka: 0.5),
      keeping the topic close to one record per live endpoint so a rebuild reads little;
    * ``delete.retention.ms``: how long a tombstone stays readable after cleaning, the time a
      lagging consumer (a stopped sink) has to see a removal before it must rebuild;
    * ``max.compaction.lag.ms``: the longest a record stays uncompacted, whatever the ratio.
    """
    return (
        ("segment.ms", str(t.compact_segment_ms)),
        ("min.cleanable.dirty.ratio", str(t.compact_dirty_ratio)),
        ("delete.retention.ms", str(t.compact_delete_retention_ms)),
        ("max.compaction.lag.ms", str(max(t.compact_segment_ms, t.compact_max_lag_ms))),
    )


@dataclass(frozen=True)
class TopicCheck:
    name: str
    action: str  # "created" | "exists"
    partitions: int
    cleanup_policy: str | None


def topic_specs(t: TopicSettings) -> list[TopicSpec]:
    """Every topic of SPEC.md with its layout."""
    compact = compaction_configs(t)
    return [
        TopicSpec(t.topic_registrations, t.partitions, "delete", t.registrations_retention_ms, copartitioned=True),
        # Few nodes, read whole by every worker (a global table): one partition keeps it simple.
        TopicSpec(t.topic_nodes, 1, "compact", extra=compact),
        TopicSpec(t.topic_locations, t.partitions, "compact", copartitioned=True, extra=compact),
        TopicSpec(t.topic_deadletter, t.partitions, "delete", t.registrations_retention_ms),
        # Quality samples are history like registrations; alerts are keyed by alert id and the
        # latest record per id is the alert's state, so compaction keeps exactly what matters.
        TopicSpec(t.topic_quality, t.partitions, "delete", t.registrations_retention_ms),
        TopicSpec(t.topic_alerts, t.partitions, "compact", extra=compact),
    ]


def replication(t: TopicSettings, brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas): RF min(3, brokers), min ISR 2 at RF >= 3.

    With RF 3 and min ISR 2 an acks=all write survives the loss of any one broker and is refused
    (never silently kept on one copy) when two are down."""
    rf = t.replication_factor or min(3, brokers)
    if rf > brokers:
        raise ConfigError(f"replication factor {rf} needs {rf} brokers; the cluster has {brokers}")
    isr = t.min_insync_replicas or (2 if rf >= 3 else 1)
    if isr > rf:
        raise ConfigError(f"min.insync.replicas {isr} is more than the replication factor {rf}")
    return rf, isr


async def ensure_topics(
    kafka: KafkaSettings,
    topics: TopicSettings,
    extra: list[TopicSpec] | None = None,
    timeout: float = 30.0,
) -> list[TopicCheck]:
    """Create missing topics; verify existing ones; raise ConfigError on a mismatch."""
    specs = topic_specs(topics) + list(extra or [])
    admin = AIOKafkaAdminClient(
        client_id=f"{kafka.client_id}-admin", request_timeout_ms=int(timeout * 1000), **kafka.aiokafka_kwargs()
    )
    await asyncio.wait_for(admin.start(), timeout)
    try:
        brokers = known_brokers(admin) or 1  # what the bootstrap Metadata listed
        rf, isr = replication(topics, brokers)
        existing = set(await admin.list_topics())
        new = [
            NewTopic(s.name, s.partitions, rf, topic_configs={**s.configs(), "min.insync.replicas": str(isr)})
            for s in specs
            if s.name not in existing
        ]
        created: set[str] = set()
        if new:
            resp = await admin.create_topics(new, timeout_ms=int(timeout * 1000))
            for name, code, *_ in getattr(resp, "topic_errors", []) or []:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise ConfigError(f"cannot create topic {name}: Kafka error code {code}")
            created = {n.name for n in new}
        layout = await _partition_counts(admin, [s.name for s in specs], timeout)
        policies = await _cleanup_policies(admin, [s.name for s in specs])
        out = []
        problems = []
        for s in specs:
            have = layout.get(s.name)
            if have is None:
                problems.append(f"topic {s.name} does not exist after creation")
                continue
            if have != s.partitions and not s.copartitioned:
                logger.warning("topic %s has %d partitions (astreg would create %d): left as it is",
                               s.name, have, s.partitions)
            elif have != s.partitions:
                problems.append(
                    f"topic {s.name} has {have} partitions, astreg expects {s.partitions} "
                    f"(co-partitioning of the table would break): recreate it or set --partitions {have}"
                )
            pol = policies.get(s.name)
            if pol is not None and pol != s.cleanup_policy and s.name not in created:
                problems.append(
                    f"topic {s.name} has cleanup.policy={pol}, astreg expects {s.cleanup_policy}"
                )
            out.append(TopicCheck(s.name, "created" if s.name in created else "exists", have, pol))
        if problems:
            raise ConfigError("broken topic layout:\n  " + "\n  ".join(problems))
        for c in out:
            logger.info("topic %s %s (%d partitions)", c.name, c.action, c.partitions)
        return out
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> dict[str, int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        described = await admin.describe_topics(names)
        counts = {
            d["topic"]: len(d["partitions"])
            for d in described
            if d.get("error_code", 0) == 0 and d.get("partitions")
        }
        if len(counts) == len(names) or asyncio.get_running_loop().time() > deadline:
            return counts
        await asyncio.sleep(0.2)  # freshly created topics may take a moment to show


async def _cleanup_policies(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, str]:
    """cleanup.policy per topic; empty when the broker cannot describe configs."""
    try:
        resp = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n, {"cleanup.policy": None}) for n in names]
        )
    except (KafkaError, Exception) as exc:  # noqa: BLE001 - an old/minimal broker: do not block on it
        logger.warning("broker cannot describe topic configs (%s): cleanup policies not verified", exc)
        return {}
    out: dict[str, str] = {}
    for r in resp:
        for res in getattr(r, "resources", []):
            # (error_code, error_message, resource_type, resource_name, config_entries)
            name, entries = res[3], res[4]
            for entry in entries:
                if entry[0] == "cleanup.policy" and entry[1] is not None:
                    out[name] = entry[1]
    return out
