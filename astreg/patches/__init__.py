"""Every hook into Faust's, mode's and aiokafka's private API, and nowhere else.

One module per concern, each listing in ``INTERNALS`` the private names it relies on
(``"module:Class.name"``, with the parameter names where it calls or replaces a method, or
``"module:Class.name uses <text>"`` where it relies on what that code does).
``tests/unit/test_patches.py`` resolves every one against the installed libraries and names the
internal and the library version when one is gone or changed; pyproject.toml pins those libraries
to the minor versions they were checked against.

* :mod:`.aiokafka`: leave the group at generation 0 (embedded broker), the app's aiokafka
  producer, cluster metadata.
* :mod:`.embedded`: Faust's end offsets and fetch wait on the embedded broker.
* :mod:`.bulk`: registrations from Faust's fetch straight to the agent's batch (``--ingest bulk``).
* :mod:`.recovery`: cold restore of the table in bulk inside Faust's recovery.
* :mod:`.rewind`: a seek "to the committed offsets" takes uncommitted partitions to the
  beginning (aiokafka leaves them where a dropped fetch moved them).
* :mod:`.faust_store`: byte-level reads and writes of a table's store.
* :mod:`.faust_monitor`: Faust's Prometheus sensor with cached label children.
* :mod:`.web`: Faust's built-in web views dropped.

Importing any of them changes nothing: a component installs what it needs when it starts
(:func:`install` for the broker-related patches, ``install`` of :mod:`.bulk`, :mod:`.recovery`
and :mod:`.rewind` for the worker's app).
"""

from __future__ import annotations

from astreg.settings import KafkaSettings

from . import aiokafka as aiokafka_patches
from . import embedded

__all__ = ["install"]


def install(kafka: KafkaSettings, *, faust: bool = False) -> None:
    """What a component with group consumers needs on this broker; call once at start-up.

    On the embedded broker: consumers leave their group on close in its first generation too
    (:func:`.aiokafka.leave_groups_at_generation_zero`) and, with ``faust`` (the worker), Faust's
    end offsets and fetch wait are made right for it (:func:`.embedded.install`). On Apache Kafka
    nothing is patched. Idempotent."""
    if not kafka.embedded:
        return
    aiokafka_patches.leave_groups_at_generation_zero()
    if faust:
        embedded.install(kafka)
