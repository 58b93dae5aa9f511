"""Read back what a producer wrote: decode the registrations/nodes/dead-letter topics and fold
them into "contacts per node" the way the pipeline's reconciliation would (for comparing with
the simulator's truth).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from astreg.settings import KafkaSettings, TopicSettings
from schemas.codec import Codec
from schemas.models import ContactStatus, EventKind, NodeEventKind, NodeStatus, RegistrationEvent

REG = Codec.for_model(RegistrationEvent)
NODE = Codec.for_model(NodeStatus)


@dataclass
class Consumed:
    registrations: list[tuple[int, int, bytes, RegistrationEvent]] = field(default_factory=list)  # partition, offset, key
    nodes: list[NodeStatus] = field(default_factory=list)
    deadletters: list[tuple[bytes, bytes, dict[str, bytes]]] = field(default_factory=list)

    def events(self) -> list[RegistrationEvent]:
        return [e for *_, e in self.registrations]


class TopicReader:
    """Keeps a consumer on the three producer topics and accumulates everything decoded."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings):
        self.kafka = kafka
        self.topics = topics
        self.data = Consumed()
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> TopicReader:
        c = AIOKafkaConsumer(
            **self.kafka.aiokafka_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await c.start()
        names = [self.topics.topic_registrations, self.topics.topic_nodes, self.topics.topic_deadletter]
        tps = []
        for name in names:
            parts = c.partitions_for_topic(name)
            for _ in range(50):
                if parts:
                    break
                await c._client.force_metadata_update()
                await asyncio.sleep(0.1)  # poll interval: metadata of a topic just created may lag
                parts = c.partitions_for_topic(name)
            tps += [TopicPartition(name, p) for p in sorted(parts or ())]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        self._consumer = c
        return self

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def poll(self, timeout: float = 0.3) -> int:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=10000)
        n = 0
        for tp, records in batches.items():
            for r in records:
                n += 1
                if tp.topic == self.topics.topic_registrations:
                    self.data.registrations.append((tp.partition, r.offset, r.key, REG.decode(r.value)))
                elif tp.topic == self.topics.topic_nodes:
                    self.data.nodes.append(NODE.decode(r.value))
                else:
                    self.data.deadletters.append((r.key, r.value, dict(r.headers or ())))
        return n

    async def until(self, predicate: Callable[[Consumed], bool], timeout: float = 20.0,
                    explain: Callable[[Consumed], object] | None = None) -> Consumed:
        """Poll until ``predicate(data)`` holds; fail with what was seen on timeout (and with
        ``explain(data)``, when given, saying what differs)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self.data):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"timed out: {len(self.data.registrations)} registrations, {len(self.data.nodes)} node records "
                    f"({[n.kind.value for n in self.data.nodes[-8:]]}), {len(self.data.deadletters)} dead letters"
                    + (f"; {explain(self.data)}" if explain is not None else "")
                )
            await self.poll()
        await self.catch_up(deadline)
        return self.data

    async def catch_up(self, deadline: float) -> None:
        """Read every partition up to its end as of now: a marker seen on the nodes topic does
        not mean the rows it follows (other topic, other partitions) were read already."""
        assert self._consumer is not None
        c = self._consumer
        ends = await c.end_offsets(list(c.assignment()))
        while True:
            behind = [tp for tp, end in ends.items() if await c.position(tp) < end]
            if not behind:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out reading up to the end offsets {ends}")
            await self.poll()


def completed_snapshots(data: Consumed, node: str | None = None) -> list[NodeStatus]:
    return [n for n in data.nodes if n.kind is NodeEventKind.SNAPSHOT_COMPLETE and (node is None or n.node == node)]


def fold_contacts(data: Consumed) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """node → {(endpoint, uri): contact} after replaying everything in each node's (epoch, seq)
    order and applying every completed snapshot's reconciliation (docs/design.md)."""
    per_node: dict[str, list[tuple[tuple[int, int], Any]]] = {}
    for ev in data.events():
        per_node.setdefault(ev.node, []).append(((ev.producer_epoch, ev.seq), ev))
    for ns in data.nodes:
        per_node.setdefault(ns.node, []).append(((ns.producer_epoch, ns.seq), ns))
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for node, items in per_node.items():
        items.sort(key=lambda x: x[0])
        contacts: dict[tuple[str, str], dict[str, Any]] = {}
        seen: set[tuple[int, int]] = set()
        for pos, item in items:
            if pos in seen:  # a retried batch written twice
                continue
            seen.add(pos)
            if isinstance(item, NodeStatus):
                if item.kind is NodeEventKind.SNAPSHOT_COMPLETE and item.snapshot_begin_seq is not None:
                    begin = (item.producer_epoch, item.snapshot_begin_seq)
                    contacts = {k: c for k, c in contacts.items() if c["confirmed"] >= begin}
                continue
            ev = item
            if ev.kind not in (EventKind.CONTACT, EventKind.REFRESH) or not ev.contact_uri:
                continue
            key = (ev.endpoint, ev.contact_uri)
            if ev.contact_status is ContactStatus.REMOVED:
                contacts.pop(key, None)
                continue
            if ev.contact_status is None and key not in contacts:
                continue  # a refresh or the node's details never create a contact (streams/rules.py)
            c = contacts.setdefault(key, {})
            c.update(confirmed=pos, ip=ev.ip, port=ev.port)
            if ev.contact_status is not None:
                c["status"] = ev.contact_status
            if ev.user_agent is not None:
                c["user_agent"] = ev.user_agent
        out[node] = contacts
    return out
