"""The one way astreg components keep Prometheus metrics: a registry per component.

Every component (producer, stream worker, alerter, sink) has one metrics class deriving from
:class:`ComponentMetrics`: it owns a ``CollectorRegistry`` of its own and registers its series
there, the component constructs it and passes it to its parts, and the component's ``/metrics``
serves that registry. Nothing is registered on prometheus_client's global ``REGISTRY`` (at
import time or later), so several components in one process (tests, benchmarks) never collide
and each ``/metrics`` shows only its own component. A fresh registry also carries the process,
platform and garbage-collector figures (``process_*``, ``python_*``) the global one would have.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
    start_http_server,
)

__all__ = ["ComponentMetrics"]


class ComponentMetrics:
    """Base of a component's metrics class: ``self.registry`` holds everything it exposes.

    ``registry``: an existing registry to add to (its owner already added the process
    figures); None: a new one of this component's own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (the body of ``/metrics``)."""
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose ``/metrics`` on ``port`` (a daemon thread of prometheus-client)."""
        start_http_server(port, addr=addr, registry=self.registry)
