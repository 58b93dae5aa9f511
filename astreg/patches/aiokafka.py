"""aiokafka's private API: leaving a group at generation 0, the app's producer, cluster metadata.

* :func:`leave_groups_at_generation_zero`: on the embedded broker (Tansu) a consumer leaves its
  group on close in the group's first generation too (installed by :func:`astreg.patches.install`).
* :func:`app_producer`: the aiokafka producer underneath a Faust app's producer, for record
  batches (``streams/produce.py``): Faust has no public accessor for it.
* :func:`refresh_metadata` / :func:`known_brokers`: what a client's cluster metadata says, asked
  again or read as it is; aiokafka's consumer and admin client keep their client private.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.consumer import group_coordinator
from aiokafka.errors import KafkaError
from aiokafka.protocol.group import LeaveGroupRequest

if TYPE_CHECKING:
    from faust.types import AppT

__all__ = ["INTERNALS", "leave_groups_at_generation_zero", "app_producer", "refresh_metadata", "known_brokers"]

logger = logging.getLogger(__name__)

INTERNALS = [
    # leave_groups_at_generation_zero: replaces the method, does what it does for generation > 0
    "aiokafka.consumer.group_coordinator:GroupCoordinator._maybe_leave_group(self)",
    "aiokafka.consumer.group_coordinator:GroupCoordinator._send_req(self, request)",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.reset_generation(self)",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.generation",
    "aiokafka.consumer.group_coordinator:GroupCoordinator._group_instance_id",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.group_id",
    "aiokafka.consumer.group_coordinator:GroupCoordinator.member_id",
    "aiokafka.protocol.group:LeaveGroupRequest(group, member_id)",
    # app_producer
    "faust.transport.drivers.aiokafka:Producer._ensure_producer(self)",
    # refresh_metadata, known_brokers
    "aiokafka.consumer.consumer:AIOKafkaConsumer._client",
    "aiokafka.admin.client:AIOKafkaAdminClient._client",
    "aiokafka.client:AIOKafkaClient.force_metadata_update(self)",
    "aiokafka.client:AIOKafkaClient.cluster",
    "aiokafka.cluster:ClusterMetadata.brokers(self)",
]


def leave_groups_at_generation_zero() -> None:
    """Make aiokafka consumers leave their group on close at generation 0 too (embedded broker).

    Tansu numbers a group's first generation 0, Kafka 1. aiokafka sends LeaveGroup on close
    only when ``generation > 0``, so on Tansu a consumer stopped in its group's first generation
    stays a member until its session times out: the next member's join then waits for it (a
    worker restarted right after the first one stopped waits the whole session timeout
    before it owns its partitions). Apache Kafka never hands out generation 0, so nothing
    changes there. Idempotent."""
    cls: Any = group_coordinator.GroupCoordinator
    if getattr(cls, "_astreg_leaves_at_zero", False):
        return
    original = cls._maybe_leave_group

    async def _maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self._group_instance_id is None:
            try:  # what the original does for generation > 0: one attempt, no resend
                await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))
            except KafkaError as err:
                logger.warning("LeaveGroup (generation 0) failed: %s", err)
            self.reset_generation()
            return
        await original(self)

    cls._maybe_leave_group = _maybe_leave_group
    cls._astreg_leaves_at_zero = True


def app_producer(app: AppT) -> AIOKafkaProducer:
    """The aiokafka producer of a Faust app (started with the app's producer; made if not yet)."""
    producer: Any = app.producer
    return producer._ensure_producer()  # type: ignore[no-any-return]


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the cluster for its metadata again (a topic created a moment ago may be missing)."""
    await consumer._client.force_metadata_update()


def known_brokers(admin: AIOKafkaAdminClient) -> int:
    """How many brokers the admin client's last metadata listed (the bootstrap answer)."""
    return len(admin._client.cluster.brokers())
