"""From simulator scenarios through the real producer and the real alerter on the embedded
broker: call quality, flapping, contact loss, a registration storm, an AMI link cut and a
silent node each raise their alert once and resolve it once.

The simulator plays two Asterisk nodes; one in-process :class:`NodeProducer` per node publishes
registrations, node status and quality samples; ``astreg alerts run`` is a separate process.
SNAPSHOT_HEALED needs the stream workers' RECONCILE events and is covered by test_alerter.py.
"""

from __future__ import annotations

import asyncio

from astreg.proc import ProcessGroup, astreg_argv
from astreg.settings import KafkaSettings, TopicSettings
from producers.node import NodeProducer, ProducerSettings
from producers.simulator import SimConfig, Simulator
from producers.simulator.scenarios import run_scenario
from schemas.quality import AlertKind, AlertState
from streams.alerts.runner import active_alerts, read_alerts
from tests.support.alerts import alerter_env, by_id, wait_until

THRESHOLDS = dict(alert_node_stale_s=2.5, alert_node_down_s=4, alert_storm_registrations=3, alert_storm_window_s=3,
                  alert_contact_loss_percent=50, alert_contact_loss_min=3, alert_contact_loss_window_s=3,
                  alert_flapping_changes=4, alert_flapping_window_s=3, alert_jitter_ms=20, alert_loss_fraction=0.05,
                  alert_quality_window_s=3, alert_quality_min_samples=3, alert_tick_s=0.2)


def _producer(sim: Simulator, node: str, kafka: KafkaSettings, topics: TopicSettings) -> NodeProducer:
    s = ProducerSettings(ami=f"127.0.0.1:{sim.ports[node]}", ami_user="astreg", ami_secret="astreg",
                         heartbeat_interval=0.5, ping_timeout=1.0, linger_ms=1)
    return NodeProducer(s, kafka, topics)


async def test_simulated_cluster_raises_and_resolves_each_alert_once(
    kafka: KafkaSettings, topics: TopicSettings, procs: ProcessGroup
) -> None:
    alerter = procs.start("alerter", astreg_argv("alerts", "run"), env=alerter_env(kafka, topics, **THRESHOLDS))
    cfg = SimConfig(nodes=2, phones=12, ami_port=0, seed=5, initial="spread", qualify_every=1, rtcp_interval=0.3,
                    security_events=False)
    async with Simulator(cfg) as sim:
        producers = {n: _producer(sim, n, kafka, topics) for n in ("node1", "node2")}
        try:
            for p in producers.values():
                await p.start()
            for p in producers.values():
                await asyncio.wait_for(p.connected.wait(), 20)
            await wait_until(lambda: "caught up" in alerter.log() or not alerter.alive(), 30, "the alerter")

            async def alerts() -> dict[str, list[AlertState]]:
                return by_id(await read_alerts(kafka, topics.topic_alerts))

            async def raised(*ids: str) -> bool:
                have = await alerts()
                return all(i in have for i in ids)

            # A poor call between two phones of node1: jitter and loss on both phone legs.
            await run_scenario(sim, "bad_call", caller=1, callee=3, seconds=1.5, jitter_ms=60.0, loss=0.2)
            await wait_until(lambda: raised("HIGH_JITTER/node1/PJSIP/1001", "HIGH_LOSS/node1/PJSIP/1003"), 20,
                             "jitter and loss alerts")
            # Phone 2 (node2) flaps: 6 Reachable/Unreachable changes in 1.2 s.
            await run_scenario(sim, "flapping", phone=2, changes=6, window=1.2)
            await wait_until(lambda: raised("ENDPOINT_FLAPPING/node2/PJSIP/1002"), 20, "flapping")
            # node2 loses 4 of its 6 phones.
            for phone in (4, 6, 8, 10):
                await sim.unregister(phone, "node2")
            await wait_until(lambda: raised("CONTACT_LOSS/node2"), 20, "contact loss")
            # node1's AMI link is cut, and node2 sees a burst of new registrations.
            await sim.crash("node1", "close")
            for phone in (4, 6, 8, 10):
                await sim.register(phone, "node2", port=5070 + phone)
            await wait_until(lambda: raised("AMI_LINK_DOWN/node1", "REGISTRATION_STORM/node2"), 20, "link and storm")
            await sim.recover("node1")
            # node2's producer goes away: the node falls silent, then comes back.
            await producers["node2"].stop()
            await wait_until(lambda: raised("NODE_DOWN/node2"), 20, "node down")
            producers["node2"] = _producer(sim, "node2", kafka, topics)
            await producers["node2"].start()

            async def settled() -> bool:
                return not active_alerts(await read_alerts(kafka, topics.topic_alerts))

            await wait_until(settled, 30, "every alert resolved")
        finally:
            for p in producers.values():
                await p.stop()
    states = await alerts()
    expected = {"HIGH_JITTER/node1/PJSIP/1001", "HIGH_JITTER/node1/PJSIP/1003", "HIGH_LOSS/node1/PJSIP/1001",
                "HIGH_LOSS/node1/PJSIP/1003", "ENDPOINT_FLAPPING/node2/PJSIP/1002", "CONTACT_LOSS/node2",
                "AMI_LINK_DOWN/node1", "REGISTRATION_STORM/node2", "NODE_STALE/node2", "NODE_DOWN/node2"}
    assert expected <= set(states), sorted(states)
    assert all(s == [AlertState.RAISED, AlertState.RESOLVED] for s in states.values()), states
    kinds = {a.kind for a in await read_alerts(kafka, topics.topic_alerts)}
    assert kinds >= {AlertKind.HIGH_JITTER, AlertKind.HIGH_LOSS, AlertKind.ENDPOINT_FLAPPING, AlertKind.CONTACT_LOSS,
                     AlertKind.AMI_LINK_DOWN, AlertKind.REGISTRATION_STORM, AlertKind.NODE_STALE, AlertKind.NODE_DOWN}
