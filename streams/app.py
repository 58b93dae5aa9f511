"""Build the stream worker's Faust app from settings: ``create_app(kafka, topics, worker)``.

Returns a :class:`StreamApp` holding the ``app``, the ``locations`` table, the node book and
metrics, with the agent and timers attached; ``streams/cli.py`` runs it (``astreg worker``),
the web views attach to ``stream.app``, tests use ``stream.app`` in ``test_context``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import faust

from astreg.settings import KafkaSettings, TopicSettings

from .metrics import StreamMetrics
from .settings import WorkerSettings
from .tables import LocationsTable, NodeBook, declare_locations
from .topics import StreamTopics, declare_topics

__all__ = ["StreamApp", "create_app", "app_id_for"]


@dataclass
class StreamApp:
    app: faust.App
    locations: LocationsTable
    nodes: NodeBook
    topics: StreamTopics
    kafka: KafkaSettings
    settings: WorkerSettings
    metrics: StreamMetrics = field(default_factory=StreamMetrics)
    agent: Any = None  # the track_registrations agent (set by agents.attach)
    outputs: Any = None  # agents.Outputs: locations, dead letters, synthetic events
    apply_batch: Any = None
    # Highest registrations offset this worker applied, per partition (timers: is a synthetic
    # event it sent applied yet?).
    applied: dict[int, int] = field(default_factory=dict)


def app_id_for(topics: TopicSettings, worker: WorkerSettings) -> str:
    return worker.app_id or f"astreg-{topics.topic_registrations}"


def create_app(kafka: KafkaSettings, topics: TopicSettings, worker: WorkerSettings) -> StreamApp:
    app = faust.App(
        app_id_for(topics, worker), **kafka.faust_kwargs(),
        store="rocksdb://" if worker.store == "rocksdb" else "memory://",
        datadir=str(worker.data_dir), web_port=worker.web_port, web_host=worker.web_host,
        web_bind=worker.web_host, topic_partitions=topics.partitions, topic_allow_declare=False,
        table_standby_replicas=0, producer_acks=-1, consumer_auto_offset_reset="earliest",
        producer_linger=0.005,  # a few ms of linger: batches of records instead of one request each
    )
    stream = StreamApp(app, declare_locations(app, topics.partitions, worker.row_cache), NodeBook(),
                       declare_topics(app, topics), kafka, worker)
    from astreg.patches import recovery as restore

    from . import agents, timers  # attach the agent and timers to this app

    agents.attach(stream)
    timers.attach(stream)
    restore.install(stream)  # a cold restart reads the changelog in bulk (RocksDB store)
    return stream
