"""The Avro contract: model mirrors, both framings, golden bytes, evolution, bad input."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings

from astreg.errors import UndecodableRecord
from schemas.codec import Codec, SchemaRegistryClient, load_schema
from schemas.models import EndpointLocation, NodeStatus, RegistrationEvent
from tests.support import strategies as s
from tests.support.golden import GOLDEN, REGISTRATION
from tests.support.registry import LocalSchemaRegistry

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "golden"
MODELS = {
    "registration_event.avsc": RegistrationEvent,
    "node_status.avsc": NodeStatus,
    "endpoint_location.avsc": EndpointLocation,
}


@pytest.mark.parametrize("avsc, model", MODELS.items())
def test_dataclass_fields_equal_avsc_fields(avsc: str, model: type) -> None:
    schema = load_schema(avsc)
    assert sorted(f["name"] for f in schema["fields"]) == sorted(f.name for f in dataclasses.fields(model))


def test_contact_fields_equal_avsc_fields() -> None:
    from schemas.models import Contact

    schema = load_schema("endpoint_location.avsc")
    contact = next(f for f in schema["fields"] if f["name"] == "contacts")["type"]["items"]
    assert sorted(f["name"] for f in contact["fields"]) == sorted(f.name for f in dataclasses.fields(Contact))


def _enums(node: object) -> list[dict]:
    found = []
    if isinstance(node, dict):
        if node.get("type") == "enum":
            found.append(node)
        for v in node.values():
            found += _enums(v)
    elif isinstance(node, list):
        for v in node:
            found += _enums(v)
    return found


@pytest.mark.parametrize("avsc", MODELS)
def test_every_enum_has_a_default_and_optional_fields_default_to_null(avsc: str) -> None:
    schema = load_schema(avsc)
    for enum in _enums(schema):
        assert enum.get("default") in enum["symbols"], enum["name"]
    for f in schema["fields"]:
        if isinstance(f["type"], list) and f["type"][0] == "null":
            assert "default" in f and f["default"] is None, f["name"]


@settings(max_examples=150, deadline=None)
@given(s.registration_events)
def test_registration_round_trip_single_object(ev: RegistrationEvent) -> None:
    codec = Codec.for_model(RegistrationEvent)
    data = codec.encode(ev)
    assert data[:2] == b"\xc3\x01"
    assert codec.decode(data) == ev


@settings(max_examples=100, deadline=None)
@given(s.node_statuses)
def test_node_status_round_trip_single_object(ns: NodeStatus) -> None:
    codec = Codec.for_model(NodeStatus)
    assert codec.decode(codec.encode(ns)) == ns


@settings(max_examples=100, deadline=None)
@given(s.endpoint_locations)
def test_location_round_trip_single_object(loc: EndpointLocation) -> None:
    codec = Codec.for_model(EndpointLocation)
    assert codec.decode(codec.encode(loc)) == loc


@pytest.fixture(scope="module")
def registry():  # type: ignore[no-untyped-def]
    with LocalSchemaRegistry() as reg:
        yield reg


@settings(max_examples=60, deadline=None)
@given(ev=s.registration_events, ns=s.node_statuses, loc=s.endpoint_locations)
def test_round_trip_confluent_wire_format(registry: LocalSchemaRegistry, ev, ns, loc) -> None:  # type: ignore[no-untyped-def]
    client = SchemaRegistryClient(registry.url)
    for obj, topic in ((ev, "r"), (ns, "n"), (loc, "l")):
        writer = Codec.for_model(type(obj), registry=client, topic=topic)
        data = writer.encode(obj)
        assert data[:1] == b"\x00"
        # a reader with its own client (cold cache) fetches the writer schema by id
        reader = Codec.for_model(type(obj), registry=SchemaRegistryClient(registry.url), topic=topic)
        assert reader.decode(data) == obj
    assert set(registry.subjects) >= {"r-value", "n-value", "l-value"}


def test_single_object_reader_accepts_confluent_and_vice_versa(registry: LocalSchemaRegistry) -> None:
    plain = Codec.for_model(RegistrationEvent)
    confluent = Codec.for_model(RegistrationEvent, registry=SchemaRegistryClient(registry.url), topic="x")
    assert confluent.decode(plain.encode(REGISTRATION)) == REGISTRATION
    # a reader configured with a registry reads registry-framed bytes; without one it says why
    data = confluent.encode(REGISTRATION)
    with pytest.raises(UndecodableRecord, match="no schema registry configured"):
        plain.decode(data, topic="x", partition=0, offset=1)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_committed_golden_bytes_decode_with_todays_reader(name: str) -> None:
    expected = GOLDEN[name]
    data = (GOLDEN_DIR / name).read_bytes()
    assert Codec.for_model(type(expected)).decode(data) == expected


def test_reader_with_a_new_optional_field_reads_old_bytes() -> None:
    old = load_schema("registration_event.avsc")
    new = copy.deepcopy(old)
    new["fields"].append({"name": "jitter_ms", "type": ["null", "double"], "default": None})
    old_bytes = Codec(RegistrationEvent, old).encode(REGISTRATION)
    reader = Codec(RegistrationEvent, new, writers=[old])
    record = reader.decode_dict(old_bytes)
    assert record["jitter_ms"] is None
    assert record["endpoint"] == "PJSIP/1001" and record["rtt_us"] == 449
    # and the model ignores the field it does not know yet
    assert reader.decode(old_bytes) == REGISTRATION


def test_unknown_enum_symbol_reads_as_default() -> None:
    new = copy.deepcopy(load_schema("registration_event.avsc"))
    kind = next(f for f in new["fields"] if f["name"] == "kind")
    kind["type"]["symbols"].append("QUALITY")
    writer = Codec(RegistrationEvent, new)
    data = writer.encode(dataclasses.replace(REGISTRATION))
    # rewrite through a dict so the new symbol is really on the wire
    import io

    import fastavro

    from schemas.codec import _strip_logical_types, to_dict

    rec = to_dict(REGISTRATION)
    rec["kind"] = "QUALITY"
    buf = io.BytesIO()
    buf.write(data[:10])
    fastavro.schemaless_writer(buf, fastavro.parse_schema(_strip_logical_types(new)), rec)
    reader = Codec.for_model(RegistrationEvent)
    reader.add_writer(new)
    assert reader.decode(buf.getvalue()).kind.value == "UNKNOWN"


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xde\xad\xbe\xef garbage", "unknown framing"),
        (b"", "unknown framing"),
        (None, "null value"),
        (b"\xc3\x01\x00\x01", "truncated single-object header"),
    ],
)
def test_garbage_is_undecodable_with_a_reason(data: bytes | None, reason: str) -> None:
    with pytest.raises(UndecodableRecord, match=reason) as info:
        Codec.for_model(RegistrationEvent).decode(data, topic="asterisk.registrations.v1", partition=3, offset=17)
    assert "asterisk.registrations.v1[3]@17" in str(info.value)
    assert info.value.offset == 17


def test_truncated_record_is_undecodable() -> None:
    codec = Codec.for_model(RegistrationEvent)
    data = codec.encode(REGISTRATION)
    with pytest.raises(UndecodableRecord, match="bad Avro body"):
        codec.decode(data[:-15], topic="t", partition=0, offset=5)


def test_trailing_bytes_are_undecodable() -> None:
    codec = Codec.for_model(RegistrationEvent)
    with pytest.raises(UndecodableRecord, match="trailing bytes"):
        codec.decode(codec.encode(REGISTRATION) + b"\x00\x00")


def test_record_of_another_schema_is_undecodable() -> None:
    node_bytes = (GOLDEN_DIR / "node_status.v1.bin").read_bytes()
    with pytest.raises(UndecodableRecord, match=r"unknown schema fingerprint .*\(not a RegistrationEvent\)"):
        Codec.for_model(RegistrationEvent).decode(node_bytes, topic="t", partition=1, offset=2)


def test_registry_schema_of_another_record_is_undecodable(registry: LocalSchemaRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    node_bytes = Codec.for_model(NodeStatus, registry=client, topic="nodes").encode(GOLDEN["node_status.v1.bin"])
    with pytest.raises(UndecodableRecord, match="is 'NodeStatus', not 'RegistrationEvent'"):
        Codec.for_model(RegistrationEvent, registry=client, topic="regs").decode(node_bytes)


def test_unknown_registry_id_is_undecodable(registry: LocalSchemaRegistry) -> None:
    client = SchemaRegistryClient(registry.url)
    reader = Codec.for_model(RegistrationEvent, registry=client, topic="regs")
    with pytest.raises(UndecodableRecord, match="unknown to registry"):
        reader.decode(b"\x00\x00\x00\x03\xe7" + b"\x00" * 10)
