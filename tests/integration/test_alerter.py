"""The real alerter process on the embedded broker: every alert kind raised and resolved exactly
once on asterisk.alerts.v1 and at an Alertmanager-like webhook that is down for a while; a
restarted alerter repeats nothing; ``astreg alerts show`` prints what is active."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from dataclasses import replace

import httpx

from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from schemas.models import ContactStatus, EventKind, LinkState, NodeEventKind, Source
from schemas.quality import AlertKind, AlertState
from streams.alerts.runner import active_alerts, read_alerts
from tests.support.alerts import Feeder, Receiver, alerter_env, by_id, free_port, wait_until

# Short windows so a whole raise/resolve cycle takes seconds.
THRESHOLDS = dict(alert_node_stale_s=2, alert_node_down_s=4, alert_storm_registrations=5, alert_storm_window_s=3,
                  alert_contact_loss_percent=50, alert_contact_loss_min=3, alert_contact_loss_window_s=3,
                  alert_flapping_changes=4, alert_flapping_window_s=3, alert_jitter_ms=20, alert_loss_fraction=0.05,
                  alert_quality_window_s=6, alert_quality_min_samples=3, alert_snapshot_healed_contacts=2,
                  alert_snapshot_window_s=3, alert_tick_s=0.2)
ALL_KINDS = {k for k in AlertKind if k is not AlertKind.UNKNOWN}


async def _heartbeats(feed: Feeder, links: dict[str, LinkState], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await feed.send(*(feed.node(n, NodeEventKind.HEARTBEAT, link) for n, link in links.items()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _raise_everything(feed: Feeder, links: dict[str, LinkState]) -> None:
    """One stimulus per alert kind (see THRESHOLDS)."""
    await feed.send(feed.node("lonely"))  # then silence: NODE_STALE after 2 s, NODE_DOWN after 4 s
    links["n1"] = LinkState.DOWN
    await feed.send(feed.node("n1", NodeEventKind.AMI_DOWN, LinkState.DOWN))
    await feed.send(*(feed.contact("n1", f"PJSIP/{3000 + i}", ContactStatus.NON_QUALIFIED) for i in range(6)))
    await feed.send(*(feed.contact("n2", f"PJSIP/{4000 + i}", ContactStatus.REACHABLE, Source.SNAPSHOT)
                      for i in range(6)))
    await feed.send(*(feed.contact("n2", f"PJSIP/{4000 + i}", ContactStatus.REMOVED) for i in range(4)))
    flaps = [ContactStatus.NON_QUALIFIED] + [ContactStatus.REACHABLE, ContactStatus.UNREACHABLE] * 3
    await feed.send(*(feed.contact("n1", "PJSIP/2001", s) for s in flaps))
    await feed.send(*(feed.rtcp("n1", "PJSIP/1006", jitter_ms=40.0, loss=0.2) for _ in range(3)))
    await feed.send(*(feed.contact("n2", f"PJSIP/{5000 + i}", ContactStatus.UNKNOWN, Source.SYNTHETIC,
                                   EventKind.RECONCILE, epoch=feed.epoch, seq=77) for i in range(3)))
    # Two producers for "twin": the feeder's (newest, started 1.2 s ago: more than the second a
    # record may lag, less than the stale threshold) and an older one that still writes now; then
    # only the newest beats (DUPLICATE_PRODUCER resolves after the stale window).
    started = replace(feed.node("twin", NodeEventKind.BOOTED), event_time_ms=feed.now() - 1200)
    older = replace(feed.node("twin"), producer_epoch=feed.epoch - 1)
    await feed.send(started, older)
    links["twin"] = LinkState.UP


async def test_every_alert_kind_raised_and_resolved_once_through_a_webhook_that_was_down(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup
) -> None:
    receiver = Receiver(free_port())  # not listening yet: the webhook is down
    metrics_port = free_port()
    env = alerter_env(kafka, topics, alert_webhook=receiver.url, alert_webhook_max_backoff_s=1,
                      alert_metrics_port=metrics_port, **THRESHOLDS)
    alerter = procs.start("alerter", astreg_argv("alerts", "run"), env=env)
    await wait_until(lambda: "caught up" in alerter.log() or not alerter.alive(), 30, "the alerter to start")
    assert alerter.alive(), alerter.log()
    links = {"n1": LinkState.UP, "n2": LinkState.UP}
    stop = asyncio.Event()
    async with Feeder(kafka, topics) as feed:
        beats = asyncio.create_task(_heartbeats(feed, links, stop))
        try:
            await _raise_everything(feed, links)

            async def raised() -> set[AlertKind]:
                return {a.kind for a in await read_alerts(kafka, topics.topic_alerts) if a.state is AlertState.RAISED}

            await wait_until(lambda: _superset(raised(), ALL_KINDS), 30, "every kind raised")
            # While they are active: the example consumer lists them, /metrics counts them. More bad
            # reports keep HIGH_JITTER up (and must not raise it twice).
            sent_at = feed.now()
            await feed.send(*(feed.rtcp("n1", "PJSIP/1006", jitter_ms=40.0, loss=0.2) for _ in range(3)))
            async with httpx.AsyncClient() as http:

                async def taken() -> bool:
                    quality = (await http.get(f"http://127.0.0.1:{metrics_port}/quality")).json()
                    return any(q["endpoint"] == "PJSIP/1006" and (q["last_sample_ms"] or 0) >= sent_at
                               for q in quality)

                await wait_until(taken, 15, "the alerter to take the new reports of PJSIP/1006")
                text = (await http.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                quality = (await http.get(f"http://127.0.0.1:{metrics_port}/quality")).json()
            assert 'astreg_alerts_total{kind="HIGH_JITTER",state="RAISED"} 1.0' in text
            assert 'astreg_quality_jitter_ms{endpoint="PJSIP/1006",node="n1",stat="mean"} 40.0' in text
            assert [q["jitter_mean_ms"] for q in quality if q["endpoint"] == "PJSIP/1006"] == [40.0]
            code, out, err = await _show(env)  # not blocking the loop: heartbeats go on meanwhile
            assert code == 0, err
            assert "NODE_DOWN/lonely" in out and "AMI_LINK_DOWN/n1" in out, out
            assert receiver.received == []
            await receiver.start()  # the webhook comes back: the queued alerts go out in order

            await feed.send(feed.node("lonely", NodeEventKind.BOOTED))
            links["lonely"] = LinkState.UP
            links["n1"] = LinkState.UP
            await feed.send(feed.node("n1", NodeEventKind.AMI_UP, LinkState.UP))

            async def settled() -> bool:
                alerts = await read_alerts(kafka, topics.topic_alerts)
                return {a.kind for a in alerts} == ALL_KINDS and not active_alerts(alerts)

            await wait_until(settled, 40, "every alert resolved")
            published = len(await read_alerts(kafka, topics.topic_alerts))
            await wait_until(lambda: len(receiver.received) >= published, 20, "webhook deliveries")
            # Checked while heartbeats still flow: once they stop the nodes go stale again within
            # 2 s and (rightly) raise new alerts.
            alerts = await read_alerts(kafka, topics.topic_alerts)
            assert {a.kind for a in alerts} == ALL_KINDS
            assert all(states == [AlertState.RAISED, AlertState.RESOLVED] for states in by_id(alerts).values()), by_id(alerts)
            for a in alerts:
                assert a.summary and a.figures, a
            # The webhook got each alert exactly once raised (no endsAt) and then once resolved.
            hooks: dict[str, list[str]] = {}
            for item in receiver.received:
                hooks.setdefault(item["labels"]["alert_id"], []).append("resolved" if "endsAt" in item else "raised")
                assert item["labels"]["alertname"] in {k.value for k in ALL_KINDS}
                assert json.loads(item["annotations"]["figures"])
            assert hooks == {aid: ["raised", "resolved"] for aid in by_id(alerts)}
            assert "webhook" in alerter.log() and "failed" in alerter.log()  # it really was down and retried
            code, out, err = await _show(env)
            assert code == 0 and out.strip().endswith(f"0 active alert(s) in {topics.topic_alerts}"), (out, err)
        finally:
            stop.set()
            await beats
            await receiver.stop()


async def test_a_restarted_alerter_repeats_no_raise_and_still_resolves(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup
) -> None:
    env = alerter_env(kafka, topics, **{**THRESHOLDS, "alert_quality_window_s": 8})
    alerter = procs.start("alerter", astreg_argv("alerts", "run"), env=env)
    await wait_until(lambda: "caught up" in alerter.log() or not alerter.alive(), 30, "the alerter to start")
    links = {"n1": LinkState.UP}
    stop = asyncio.Event()
    async with Feeder(kafka, topics) as feed:
        beats = asyncio.create_task(_heartbeats(feed, links, stop))
        try:
            await feed.send(feed.node("lonely"))
            await feed.send(*(feed.rtcp("n1", "PJSIP/1006", jitter_ms=40.0, loss=0.0) for _ in range(3)))

            async def ids() -> set[str]:
                return {a.alert_id for a in active_alerts(await read_alerts(kafka, topics.topic_alerts))}

            want = {"HIGH_JITTER/n1/PJSIP/1006", "NODE_STALE/lonely"}
            await wait_until(lambda: _superset(ids(), want), 20, "jitter and stale raised")
            assert alerter.stop() == 0, alerter.log()
            alerter = procs.start("alerter2", astreg_argv("alerts", "run"), env=env)
            await wait_until(lambda: "caught up" in alerter.log() or not alerter.alive(), 30, "the restart")
            assert "2 active alerts restored" in alerter.log() or "3 active alerts restored" in alerter.log()
            await feed.send(feed.node("lonely", NodeEventKind.BOOTED))
            links["lonely"] = LinkState.UP

            async def done() -> bool:
                return not active_alerts(await read_alerts(kafka, topics.topic_alerts))

            await wait_until(done, 30, "everything resolved after the restart")
        finally:
            stop.set()
            await beats
    states = by_id(await read_alerts(kafka, topics.topic_alerts))
    assert states["HIGH_JITTER/n1/PJSIP/1006"] == [AlertState.RAISED, AlertState.RESOLVED]
    assert all(s == [AlertState.RAISED, AlertState.RESOLVED] for s in states.values()), states


async def _superset(coro: object, want: set) -> bool:  # type: ignore[type-arg]
    have = await coro  # type: ignore[misc]
    return want <= have


async def _show(env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``astreg alerts show`` as a user would, without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(*astreg_argv("alerts", "show"), env={**os.environ, **env},
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_undecodable_quality_record_is_dead_lettered_and_the_alerter_goes_on(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup
) -> None:
    from aiokafka import AIOKafkaProducer

    alerter = procs.start("alerter", astreg_argv("alerts", "run"), env=alerter_env(kafka, topics, **THRESHOLDS))
    await wait_until(lambda: "caught up" in alerter.log() or not alerter.alive(), 30, "the alerter to start")
    producer = AIOKafkaProducer(**kafka.aiokafka_kwargs())
    await producer.start()
    try:
        await producer.send_and_wait(topics.topic_quality, b"\xc3\x01not avro at all", key=b"PJSIP/1")
    finally:
        await producer.stop()
    async with Feeder(kafka, topics) as feed:
        await feed.send(*(feed.rtcp("n1", "PJSIP/1006", jitter_ms=40.0, loss=0.0) for _ in range(3)))

        async def raised() -> bool:
            return any(a.alert_id == "HIGH_JITTER/n1/PJSIP/1006" for a in await read_alerts(kafka, topics.topic_alerts))

        await wait_until(raised, 20, "a valid sample after the bad one still alerts")
    async def dead_letters() -> list:  # type: ignore[type-arg]
        from aiokafka import AIOKafkaConsumer, TopicPartition

        c = AIOKafkaConsumer(**kafka.aiokafka_kwargs(), enable_auto_commit=False, group_id=None)
        await c.start()
        try:
            tps = [TopicPartition(topics.topic_deadletter, p) for p in range(topics.partitions)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            got = await c.getmany(timeout_ms=1000)
            return [r for rs in got.values() for r in rs]
        finally:
            await c.stop()

    records = await wait_until(dead_letters, 20, "the dead letter")
    assert records[0].value == b"\xc3\x01not avro at all" and records[0].key == b"PJSIP/1"
    headers = dict(records[0].headers)
    assert headers["astreg.component"] == b"alerter" and headers["astreg.reason"] == b"undecodable"
    assert alerter.alive()
