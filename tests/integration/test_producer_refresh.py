"""The registrations a real Asterisk 22 does not announce, seen by the producer (simulator).

A refresh REGISTER emits only ChallengeSent/SuccessfulAuth: the producer asks for the endpoint's
contacts and publishes a REFRESH when the expiration moved forward. A new contact's details (user
agent, expiry, Call-ID, qualify frequency) follow its ContactStatus at once. Endpoints without
authentication are found by the periodic expiration comparison. The snapshot asks only for what
the node has: no SIPpeers (and so no RequestBadFormat security event) without chan_sip.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from astreg.settings import KafkaSettings, TopicSettings
from producers.node import NodeProducer, ProducerSettings
from producers.simulator import SimConfig, Simulator
from producers.simulator.state import successful_auth
from schemas.models import EventKind, RegistrationEvent, Source
from tests.support.amiclient import RawAmi
from tests.support.topic_reader import TopicReader, completed_snapshots
from tests.support.transcripts import parse_messages

pytestmark = pytest.mark.integration


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[Simulator]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    s = Simulator(SimConfig(nodes=2, phones=8, ami_port=0, seed=5, initial="spread", **overrides))
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def settings(sim: Simulator, node: str, **kw: Any) -> ProducerSettings:
    return ProducerSettings(ami=f"127.0.0.1:{sim.ports[node]}", ami_user="astreg", ami_secret="astreg",
                            heartbeat_interval=0.5, ping_timeout=1.0, linger_ms=1, **kw)


def of(reader: TopicReader, endpoint: str, kind: EventKind) -> list[RegistrationEvent]:
    return [e for e in reader.data.events() if e.endpoint == endpoint and e.kind is kind]


async def test_a_refresh_register_is_published_as_a_refresh_with_the_new_expiration(
        sim: Simulator, kafka: KafkaSettings, topics: TopicSettings) -> None:
    p = NodeProducer(settings(sim, "node1"), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        listed = next(e for e in reader.data.events() if e.endpoint == "PJSIP/1003" and e.snapshot_id)
        t0 = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() < t0 + 1.05:  # expirations have a one-second resolution
            await reader.poll(0.1)
        await sim.refresh("1003", "node1")
        await reader.until(lambda d: bool(of(reader, "PJSIP/1003", EventKind.REFRESH)), timeout=2.0)
        (ev,) = of(reader, "PJSIP/1003", EventKind.REFRESH)
        assert ev.node == "node1" and ev.contact_uri == listed.contact_uri
        assert ev.expires_at_ms is not None and listed.expires_at_ms is not None
        assert ev.expires_at_ms > listed.expires_at_ms
        assert (ev.producer_epoch, ev.seq) > (listed.producer_epoch, listed.seq)
        # an authenticated INVITE's SuccessfulAuth (no expiration moved) is looked at, publishes nothing
        asked = p.details_asked
        node = sim.nodes["node1"]
        node.emit([successful_auth("1003", "call-1@10.0.0.3", "127.0.0.1/5161", "10.0.0.3/5060", time.time())])
        deadline = asyncio.get_running_loop().time() + 3.0
        while p.details_asked == asked or p._asks:  # asked, and its answer handled
            assert asyncio.get_running_loop().time() < deadline, "the SuccessfulAuth was not looked at"
            await reader.poll(0.1)
        await reader.catch_up(asyncio.get_running_loop().time() + 3.0)
        assert len(of(reader, "PJSIP/1003", EventKind.REFRESH)) == 1
    finally:
        await reader.stop()
        await p.stop()


async def test_a_new_contact_gets_its_details_at_once(sim: Simulator, kafka: KafkaSettings, topics: TopicSettings) -> None:
    p = NodeProducer(settings(sim, "node2"), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node2")))
        await sim.register("1001", "node2", user_agent="Yealink T46U", qualify=True)

        def details(d: Any) -> list[RegistrationEvent]:
            return [e for e in of(reader, "PJSIP/1001", EventKind.CONTACT) if e.node == "node2" and e.cause == "details"]

        await reader.until(lambda d: bool(details(d)), timeout=2.0)
        (ev,) = details(reader.data)
        assert ev.user_agent == "Yealink T46U" and ev.qualify_frequency_s == 5
        assert ev.call_id and ev.expires_at_ms and ev.transport is None and ev.contact_status is None
        live = [e for e in of(reader, "PJSIP/1001", EventKind.CONTACT) if e.node == "node2" and e.contact_status]
        assert live and (live[0].producer_epoch, live[0].seq) < (ev.producer_epoch, ev.seq)
    finally:
        await reader.stop()
        await p.stop()


@pytest.mark.parametrize("sim", [{"security_events": False}], indirect=True)
async def test_refreshes_without_security_events_are_found_by_the_expiration_scan(
        sim: Simulator, kafka: KafkaSettings, topics: TopicSettings) -> None:
    p = NodeProducer(settings(sim, "node1", refresh_scan_interval=1.0), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        t0 = asyncio.get_running_loop().time()
        while asyncio.get_running_loop().time() < t0 + 1.05:
            await reader.poll(0.1)
        await sim.refresh("1005", "node1")
        await reader.until(lambda d: bool(of(reader, "PJSIP/1005", EventKind.REFRESH)), timeout=4.0)
        assert p.details_asked == 0  # no security event: nothing asked per endpoint
        # read from the node's contact list, not seen as it happened: the worker places it by its
        # expiration (rules.py), not as the latest registration
        assert {e.source for e in of(reader, "PJSIP/1005", EventKind.REFRESH)} == {Source.SNAPSHOT}
    finally:
        await reader.stop()
        await p.stop()


async def test_the_snapshot_does_not_ask_for_sippeers_without_chan_sip(
        sim: Simulator, kafka: KafkaSettings, topics: TopicSettings) -> None:
    monitor = await RawAmi.connect("127.0.0.1", sim.ports["node1"])
    await monitor.login()
    p = NodeProducer(settings(sim, "node1"), kafka, topics)
    reader = await TopicReader(kafka, topics).start()
    try:
        await p.start()
        await reader.until(lambda d: bool(completed_snapshots(d, "node1")))
        p.request_snapshot("test")
        await reader.until(lambda d: len(completed_snapshots(d, "node1")) >= 2)
        seen = [dict(parse_messages(m)) for m in await monitor.read_all(quiet=0.3)]
        logins = [m for m in seen if m.get("Event") == "SuccessfulAuth" and m.get("Service") == "AMI"]
        assert logins, "the monitor sees the security class"
        assert [m for m in seen if m.get("Event") == "RequestBadFormat"] == []
    finally:
        await monitor.close()
        await reader.stop()
        await p.stop()
