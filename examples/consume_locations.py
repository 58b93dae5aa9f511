"""Example consumer of ``asterisk.locations.v1``: print ``endpoint -> node`` for every change.

The smallest correct reader of astreg's public topic, for teams building analytics or
alerting on it: plain aiokafka plus astreg's codec (``schemas/codec.py``, which accepts both
framings: Avro single-object and Confluent). It handles the three kinds of record a reader of
this topic meets:

* a location  → ``PJSIP/1001 -> node1`` (or ``PJSIP/1001 -> - (STALE)`` when no contact is routable)
* a tombstone (null value) → ``PJSIP/1001 -> - (gone)``: the endpoint has no registration left
* undecodable bytes → a line on stderr naming topic/partition/offset, counted, then skipped

Run (the topic is compacted: read it from the beginning to get the current state)::

    python examples/consume_locations.py --bootstrap localhost:29092
    python examples/consume_locations.py --bootstrap localhost:29092 --registry http://localhost:8081

For TLS/SASL pass ``security_protocol``, ``ssl_context``, ``sasl_*`` to ``AIOKafkaConsumer``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiokafka import AIOKafkaConsumer

from astreg.errors import UndecodableRecord
from schemas.codec import SchemaRegistryClient, location_codec
from schemas.models import EndpointLocation

logger = logging.getLogger("consume_locations")


def describe(endpoint: str, location: EndpointLocation | None) -> str:
    """One output line for one record of the topic."""
    if location is None:
        return f"{endpoint} -> - (gone)"
    if location.primary_node is None:
        return f"{endpoint} -> - ({location.status.value})"
    return f"{endpoint} -> {location.primary_node}"


async def consume(
    bootstrap: str,
    topic: str,
    *,
    group: str | None,
    registry_url: str | None,
    max_records: int | None,
    idle_timeout: float | None,
) -> int:
    """Print every record; returns the number of undecodable records skipped."""
    registry = SchemaRegistryClient(registry_url) if registry_url else None
    codec = location_codec(registry=registry, topic=topic)
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,  # None: no consumer group, read every partition (a viewer, not a worker)
        auto_offset_reset="earliest",
        enable_auto_commit=group is not None,
    )
    await consumer.start()
    seen = bad = 0
    try:
        while max_records is None or seen < max_records:
            batches = await consumer.getmany(timeout_ms=int((idle_timeout or 1.0) * 1000))
            if not batches:
                if idle_timeout is not None:
                    break  # nothing new for idle_timeout seconds: done (tests, one-shot dumps)
                continue
            for records in batches.values():
                for rec in records:
                    seen += 1
                    endpoint = rec.key.decode("utf-8", "replace") if rec.key else "?"
                    try:
                        location = None if rec.value is None else codec.decode(
                            rec.value, topic=rec.topic, partition=rec.partition, offset=rec.offset
                        )
                    except UndecodableRecord as exc:
                        bad += 1
                        print(f"skipped {rec.topic}/{rec.partition}/{rec.offset} ({endpoint}): {exc.reason}",
                              file=sys.stderr, flush=True)
                        continue
                    print(describe(endpoint, location), flush=True)
    finally:
        await consumer.stop()
        if registry is not None:
            registry.close()
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("ASTREG_BOOTSTRAP", "127.0.0.1:9092"),
                        help="Kafka bootstrap servers [env ASTREG_BOOTSTRAP]")
    parser.add_argument("--topic", default=os.environ.get("ASTREG_TOPIC_LOCATIONS", "asterisk.locations.v1"),
                        help="locations topic [env ASTREG_TOPIC_LOCATIONS]")
    parser.add_argument("--group", default=None, help="consumer group (default: none, read everything)")
    parser.add_argument("--registry", default=os.environ.get("ASTREG_SCHEMA_REGISTRY_URL"),
                        help="Schema Registry URL, for Confluent-framed records [env ASTREG_SCHEMA_REGISTRY_URL]")
    parser.add_argument("--max-records", type=int, default=None, help="stop after this many records")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="stop after this many seconds without a record")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    bad = asyncio.run(consume(args.bootstrap, args.topic, group=args.group, registry_url=args.registry,
                              max_records=args.max_records, idle_timeout=args.idle_timeout))
    if bad:
        print(f"{bad} undecodable record(s) skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
