"""The compiled Avro writer in schemas/codec.py is byte-identical to fastavro's for every model."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from schemas.codec import Codec
from schemas.models import EndpointLocation, NodeStatus, RegistrationEvent
from tests.support.strategies import endpoint_locations, node_statuses, registration_events

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(registration_events)
def test_registration_event_bytes_equal_fastavro(ev: RegistrationEvent) -> None:
    codec = Codec.for_model(RegistrationEvent)
    assert codec.encode(ev) == codec.encode_fastavro(ev)
    assert codec.decode(codec.encode(ev)) == ev


@FAST
@given(node_statuses)
def test_node_status_bytes_equal_fastavro(ns: NodeStatus) -> None:
    codec = Codec.for_model(NodeStatus)
    assert codec.encode(ns) == codec.encode_fastavro(ns)


@FAST
@given(endpoint_locations)
def test_endpoint_location_bytes_equal_fastavro(loc: EndpointLocation) -> None:
    codec = Codec.for_model(EndpointLocation)
    assert codec.encode(loc) == codec.encode_fastavro(loc)
    assert codec.decode(codec.encode(loc)) == loc
