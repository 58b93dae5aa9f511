"""Build the stream worker's Faust app from settings: ``create_app(kafka, topics, worker)``.

Returns a :class:`streams.stream_app.StreamApp` holding the ``app``, the ``locations`` table,
the node book, outputs and metrics, with the agent and timers attached; ``streams/cli.py``
runs it (``astreg worker``), the web views attach to ``stream.app``, tests use ``stream.app`` in
``test_context``.
"""

from __future__ import annotations

import faust

from astreg.patches import recovery, rewind
from astreg.settings import KafkaSettings, TopicSettings

from . import agents, timers
from .metrics import StreamMetrics
from .outputs import Outputs
from .settings import WorkerSettings
from .stream_app import StreamApp
from .tables import NodeBook, declare_locations
from .topics import declare_topics

__all__ = ["create_app", "app_id_for"]


def app_id_for(topics: TopicSettings, worker: WorkerSettings) -> str:
    return worker.app_id or f"astreg-{topics.topic_registrations}"


def create_app(kafka: KafkaSettings, topics: TopicSettings, worker: WorkerSettings) -> StreamApp:
    app = faust.App(
        app_id_for(topics, worker), **kafka.faust_kwargs(),
        store="rocksdb://" if worker.store == "rocksdb" else "memory://",
        datadir=str(worker.data_dir), web_port=worker.web_port, web_host=worker.web_host,
        web_bind=worker.web_host, topic_partitions=topics.partitions, topic_allow_declare=False,
        table_standby_replicas=0, producer_acks=-1, consumer_auto_offset_reset="earliest",
        # No linger: aiokafka keeps one request in flight per broker, so under load the records
        # that arrive meanwhile go out together anyway, and at low rates nothing waits 5 ms.
        producer_linger=0.0,
    )
    rewind.install()  # after a rebalance, uncommitted partitions are read again from the start
    locations = declare_locations(app, topics.partitions, worker.row_cache)
    declared = declare_topics(app, topics)
    metrics = StreamMetrics()
    verifier = worker.verifier()
    stream = StreamApp(app, locations, NodeBook(), declared, kafka, worker,
                       outputs=Outputs(app, declared.names, metrics, signer=verifier.workers_signer()),
                       metrics=metrics, verifier=verifier)
    agents.attach(stream)
    timers.attach(stream)
    if worker.bulk_restore:  # a cold restart reads the changelog in bulk (RocksDB store)
        recovery.install(app, stream.locations, kafka)
    return stream
