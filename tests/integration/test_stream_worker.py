"""The stream worker on a real broker: registrations in, locations topic out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from astreg.proc import ProcessGroup
from astreg.settings import KafkaSettings, TopicSettings
from schemas.models import ContactStatus, EventKind, LocationStatus, RegistrationEvent, Source
from tests.support.locations import produce, read_locations, start_worker, wait_for

pytestmark = pytest.mark.integration


def ev(endpoint: str, node: str, seq: int, status: ContactStatus, uri: str | None = None, epoch: int = 1) -> RegistrationEvent:
    return RegistrationEvent(
        endpoint=endpoint, node=node, producer_epoch=epoch, seq=seq, event_time_ms=int(time.time() * 1000),
        kind=EventKind.CONTACT, source=Source.LIVE, contact_status=status,
        contact_uri=uri or f"sip:{endpoint.split('/')[1]}@10.0.0.{seq % 250}:5060",
    )


async def test_register_move_unregister(kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup,
                                        tmp_path: Path) -> None:
    start_worker(procs, kafka, topics, "w1", tmp_path / "w1")
    uri_a, uri_b = "sip:1001@10.0.0.1:5060", "sip:1001@10.0.0.2:5060"
    await produce(kafka, topics, [
        ev("PJSIP/1001", "A", 1, ContactStatus.NON_QUALIFIED, uri_a),
        ev("PJSIP/1001", "A", 2, ContactStatus.REACHABLE, uri_a),
        ev("PJSIP/1002", "A", 3, ContactStatus.NON_QUALIFIED, "sip:1002@10.0.0.9:5060"),
        ev("PJSIP/1001", "B", 1, ContactStatus.NON_QUALIFIED, uri_b),  # moved to B
        ev("PJSIP/1001", "A", 4, ContactStatus.REACHABLE, uri_a),  # A qualifies its leftover
        ev("PJSIP/1002", "A", 5, ContactStatus.REMOVED, "sip:1002@10.0.0.9:5060"),
    ])

    async def check() -> dict:
        locs = await read_locations(kafka, topics.topic_locations)
        return locs if "PJSIP/1001" in locs and "PJSIP/1002" not in locs and len(locs["PJSIP/1001"].nodes) == 2 else {}

    locs = await wait_for(check, timeout=60)
    assert locs, "worker never published the expected rows"
    row = locs["PJSIP/1001"]
    assert row.primary_node == "B" and row.contact_uri == uri_b and row.status is LocationStatus.REGISTERED
    assert row.nodes == ("B", "A")
