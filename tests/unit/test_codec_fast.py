"""The compiled Avro writer in schemas/codec.py is byte-identical to fastavro's for every model."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from astreg.errors import UndecodableRecord
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


# ---------------------------------------------------------------- the generated flat reader


def _fastavro_decode(codec: Codec, data: bytes) -> object:
    """The reference: fastavro's reader + from_dict (what decode() did before the fast reader)."""
    from schemas.codec import from_dict

    return from_dict(codec.model, codec.decode_dict(data))


@FAST
@given(registration_events)
def test_flat_reader_equals_fastavro_reader(ev: RegistrationEvent) -> None:
    codec = Codec.for_model(RegistrationEvent)
    data = codec.encode(ev)
    fast = codec.decode(data)
    assert codec._flat_reader is not None and codec._flat_reader.__name__ == "read"  # the fast path ran
    assert fast == _fastavro_decode(codec, data) == ev
    assert type(fast) is RegistrationEvent and hash(fast) == hash(ev)


@FAST
@given(node_statuses)
def test_flat_reader_node_status(ns: NodeStatus) -> None:
    codec = Codec.for_model(NodeStatus)
    assert codec.decode(codec.encode(ns)) == ns == _fastavro_decode(codec, codec.encode(ns))


def _mangled_bodies_decode_like_fastavro(codec: Codec, good: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(10, len(good) - 1))
    flip = data.draw(st.integers(10, len(good) - 1))
    byte = data.draw(st.integers(0, 255))
    for bad in (good[:cut], good + b"\x00", good[:flip] + bytes([byte]) + good[flip + 1:]):
        try:
            want = _fastavro_decode(codec, bad)
        except (UndecodableRecord, TypeError, ValueError):
            want = None
        try:
            got = codec.decode(bad)
        except UndecodableRecord:
            got = None
        if got is not None:
            assert got == want


@FAST
@given(registration_events, st.data())
def test_flat_reader_rejects_what_fastavro_rejects(ev: RegistrationEvent, data: st.DataObject) -> None:
    """Truncated, extended or byte-flipped bodies: the fast reader either decodes exactly what
    fastavro decodes or raises UndecodableRecord (never another exception, never a wrong row)."""
    codec = Codec.for_model(RegistrationEvent)
    _mangled_bodies_decode_like_fastavro(codec, codec.encode(ev), data)


@FAST
@given(endpoint_locations)
def test_flat_reader_endpoint_location_arrays_and_nested_records(loc: EndpointLocation) -> None:
    """EndpointLocation (an array of Contact records, an array of strings) through the generated
    reader equals fastavro's, tuples and all."""
    codec = Codec.for_model(EndpointLocation)
    data = codec.encode(loc)
    fast = codec.decode(data)
    assert codec._flat_reader is not None and codec._flat_reader.__name__ == "read"  # the fast path ran
    assert fast == _fastavro_decode(codec, data) == loc
    assert type(fast.contacts) is tuple and type(fast.nodes) is tuple and hash(fast) == hash(loc)


@FAST
@given(endpoint_locations, st.data())
def test_flat_reader_endpoint_location_rejects_what_fastavro_rejects(loc: EndpointLocation, data: st.DataObject) -> None:
    codec = Codec.for_model(EndpointLocation)
    _mangled_bodies_decode_like_fastavro(codec, codec.encode(loc), data)


def test_flat_reader_array_blocks_with_sizes_and_lying_counts() -> None:
    """Avro lets a writer split an array into blocks, a negative count followed by the block's
    byte size; a count larger than the bytes left is refused at once (no huge loop)."""
    import io

    import fastavro

    codec = Codec.for_model(EndpointLocation)
    loc = EndpointLocation(endpoint="PJSIP/1", technology="PJSIP", resource="1", updated_at_ms=1,
                           nodes=("n1", "n2", "n3"))
    good = codec.encode(loc)
    plain = io.BytesIO()
    fastavro.schemaless_writer(plain, codec.schema, codec.decode_dict(good))
    body = plain.getvalue()
    nodes = b"\x06\x04n1\x04n2\x04n3\x00"  # count 3, three strings, end
    assert body.count(nodes) == 1
    blocked = bytes([5, 18]) + b"\x04n1\x04n2\x04n3\x00"  # zigzag: count -3, then a block of 9 bytes
    header = good[: len(good) - len(body)]
    assert codec.decode(header + body.replace(nodes, blocked)) == loc
    lying = bytes([0x80, 0x80, 0x80, 0x08]) + b"\x04n1\x00"  # zigzag count 2^23, 4 bytes left
    with pytest.raises(UndecodableRecord, match="array longer than the record"):
        codec.decode(header + body.replace(nodes, lying))


def test_flat_reader_error_messages() -> None:
    codec = Codec.for_model(RegistrationEvent)
    good = codec.encode(RegistrationEvent(endpoint="PJSIP/1", node="n", producer_epoch=1, seq=1, event_time_ms=1))
    with pytest.raises(UndecodableRecord, match="bad Avro body: IndexError: truncated"):
        codec.decode(good[:-1])
    with pytest.raises(UndecodableRecord, match="1 trailing bytes"):
        codec.decode(good + b"\x00")
    with pytest.raises(UndecodableRecord, match="bad Avro body"):
        codec.decode(good[:10] + b"\x07" + good[11:])  # negative string length
    with pytest.raises(UndecodableRecord, match="bad Avro body"):
        codec.decode(good[:10] + b"\x02\xff" + good[12:])  # invalid UTF-8


# ---------------------------------------------------------------- schemas.fastdc


def test_fastdc_maker_and_replacer_build_the_same_objects() -> None:
    import dataclasses

    from schemas.fastdc import maker, replacer
    from streams.rules import ContactState, Row

    make, rep = maker(ContactState), replacer(ContactState)
    a = ContactState("n1", "sip:a", 3, 10, 11, (1, 2))
    b = make("n1", "sip:a", 3, 10, 11, (1, 2))
    assert a == b and hash(a) == hash(b) and type(b) is ContactState
    assert rep(a, stale=True, rtt_us=5) == dataclasses.replace(a, stale=True, rtt_us=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.stale = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        rep(a, nonsense=1)
    assert maker(Row)(endpoint="PJSIP/1") == Row(endpoint="PJSIP/1")

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        x: int

    with pytest.raises(TypeError):
        maker(NoSlots)


def test_fastdc_inline_maker_fills_defaults_and_refuses_missing_fields() -> None:
    import dataclasses

    from schemas.fastdc import inline_maker
    from schemas.models import EndpointLocation
    from streams.rules import Row

    env, lines = inline_maker(Row, {"endpoint": "ep"}, var="r")
    env["ep"] = "PJSIP/7"
    exec("def build():\n" + "\n".join(lines) + "\n    return r", env)  # noqa: S102
    row = env["build"]()
    assert row == Row(endpoint="PJSIP/7") and type(row) is Row
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.version = 3  # type: ignore[misc]
    # default_factory fields (EndpointLocation.contacts / nodes) are called, not shared
    env, lines = inline_maker(EndpointLocation, {"endpoint": "'PJSIP/8'", "technology": "'PJSIP'",
                                                 "resource": "'8'", "updated_at_ms": "1"})
    exec("def build():\n" + "\n".join(lines) + "\n    return o", env)  # noqa: S102
    assert env["build"]() == EndpointLocation(endpoint="PJSIP/8", technology="PJSIP", resource="8", updated_at_ms=1)
    with pytest.raises(TypeError, match="no value for endpoint"):
        inline_maker(Row, {})


def test_ten_byte_varints_wrap_to_64_bits_like_fastavro() -> None:
    """A long written with more than 64 bits (10 varint bytes) reads as fastavro reads it: the
    value wrapped to 64 bits, never a bigger Python int (found by the mangled-bytes test)."""
    codec = Codec.for_model(EndpointLocation)
    loc = EndpointLocation(endpoint="PJSIP/1", technology="PJSIP", resource="1", updated_at_ms=1)
    good = codec.encode(loc)
    one = b"\x02"  # zigzag 1: updated_at_ms
    at = good.rindex(one, 0, len(good) - 1)
    for varint in (b"\x80" * 9 + b"\x01", b"\xff" * 9 + b"\x01", b"\x8a" + b"\x80" * 8 + b"\x02"):
        bad = good[:at] + varint + good[at + 1:]
        try:
            want = _fastavro_decode(codec, bad)
        except Exception:  # noqa: BLE001 - fastavro refused: the fast reader must refuse too
            with pytest.raises(UndecodableRecord):
                codec.decode(bad)
            continue
        assert codec.decode(bad) == want
