"""The worker's topics: inputs consumed as raw bytes (decoded with schemas.codec), outputs.

Every topic, including the table changelog, is created explicitly with matching partition
counts before Faust starts (:func:`changelog_specs` feeds ``astreg.topics.ensure_topics``):
the embedded broker would auto-create it with 4 partitions and break co-partitioning.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from astreg.settings import TopicSettings
from astreg.topics import TopicSpec, compaction_configs

__all__ = ["StreamTopics", "declare_topics", "changelog_name", "changelog_specs", "probe_name"]


@dataclass
class StreamTopics:
    registrations: faust.TopicT
    names: TopicSettings


def declare_topics(app: faust.App, names: TopicSettings) -> StreamTopics:
    registrations = app.topic(
        names.topic_registrations,
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=names.partitions, internal=False,
    )
    return StreamTopics(registrations=registrations, names=names)


def changelog_name(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def probe_name(app_id: str) -> str:
    """The workers' write probe: a record per worker every tick proves the cluster takes writes."""
    return f"{app_id}-probe"


def changelog_specs(app_id: str, names: TopicSettings) -> list[TopicSpec]:
    return [
        TopicSpec(changelog_name(app_id, "locations"), names.partitions, "compact", copartitioned=True),
        # Keyed by worker id, compacted: one small record per worker.
        TopicSpec(probe_name(app_id), 1, "compact", extra=compaction_configs(names)),
        # Faust's leader-election topic: one partition (the broker would auto-create 4).
        TopicSpec(f"{app_id}-__assignor-__leader", 1, "compact"),
    ]
