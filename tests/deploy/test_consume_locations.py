"""examples/consume_locations.py against the embedded broker: locations, a not-routable row, a
tombstone and garbage bytes, in both framings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer

from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import SchemaRegistryClient, location_codec
from schemas.models import EndpointLocation, LocationStatus
from tests.support.registry import LocalSchemaRegistry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "consume_locations.py"


def location(endpoint: str, node: str | None, status: LocationStatus) -> EndpointLocation:
    tech, _, resource = endpoint.partition("/")
    return EndpointLocation(endpoint=endpoint, technology=tech, resource=resource, updated_at_ms=1_790_000_000_000,
                            primary_node=node, status=status, nodes=(node,) if node else ())


async def produce(kafka: KafkaSettings, topic: str, records: list[tuple[str, bytes | None]]) -> None:
    producer = AIOKafkaProducer(enable_idempotence=kafka.idempotent, **kafka.aiokafka_kwargs())
    await producer.start()
    try:
        for key, value in records:
            # One partition: the output order is then the produce order.
            await producer.send_and_wait(topic, value, key=key.encode(), partition=0)
    finally:
        await producer.stop()


def run_example(kafka: KafkaSettings, topic: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--bootstrap", kafka.bootstrap, "--topic", topic,
         "--max-records", "5", "--idle-timeout", "5", *extra],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


async def test_prints_endpoint_to_node_and_survives_bad_records(kafka: KafkaSettings, topics: TopicSettings) -> None:
    codec = location_codec()
    await produce(kafka, topics.topic_locations, [
        ("PJSIP/1001", codec.encode(location("PJSIP/1001", "node1", LocationStatus.REGISTERED))),
        ("PJSIP/1002", b"\xc3\x01not-avro-at-all"),
        ("PJSIP/1002", codec.encode(location("PJSIP/1002", None, LocationStatus.STALE))),
        ("PJSIP/1001", None),
        ("PJSIP/1003", codec.encode(location("PJSIP/1003", "node2", LocationStatus.REGISTERED))),
    ])
    res = run_example(kafka, topics.topic_locations)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "PJSIP/1001 -> node1",
        "PJSIP/1002 -> - (STALE)",
        "PJSIP/1001 -> - (gone)",
        "PJSIP/1003 -> node2",
    ]
    assert f"skipped {topics.topic_locations}/0/1 (PJSIP/1002)" in res.stderr
    assert "1 undecodable record(s) skipped" in res.stderr


async def test_reads_confluent_framing_through_a_registry(kafka: KafkaSettings, topics: TopicSettings) -> None:
    with LocalSchemaRegistry() as registry:
        url = registry.url
        client = SchemaRegistryClient(url)
        codec = location_codec(registry=client, topic=topics.topic_locations)
        plain = location_codec()
        await produce(kafka, topics.topic_locations, [
            ("PJSIP/2001", codec.encode(location("PJSIP/2001", "node3", LocationStatus.REGISTERED))),
            ("PJSIP/2002", plain.encode(location("PJSIP/2002", "node1", LocationStatus.REGISTERED))),
            ("PJSIP/2001", None),
            ("PJSIP/2003", b"\x00\x00\x00\x03\xe7garbage"),
            ("PJSIP/2004", b"{\"json\": true}"),
        ])
        client.close()
        res = run_example(kafka, topics.topic_locations, "--registry", url)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["PJSIP/2001 -> node3", "PJSIP/2002 -> node1", "PJSIP/2001 -> - (gone)"]
    assert "2 undecodable record(s) skipped" in res.stderr
