"""The Apache Kafka broker a bench run starts for itself (``--kafka apache``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["BENCH_BROKER_CONFIG", "apache_broker"]

# Broker tuning of the benchmark harness (as the tests'): no initial rebalance delay, small
# internal topics. Never a product default.
BENCH_BROKER_CONFIG = {
    "group.initial.rebalance.delay.ms": "0",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
}


def apache_broker(work: Path) -> Any:
    """One Apache Kafka broker with its data under ``work/kafka`` (not started)."""
    from astreg.kafka import ApacheKafka

    return ApacheKafka(brokers=1, data_dir=work / "kafka", config=BENCH_BROKER_CONFIG)
