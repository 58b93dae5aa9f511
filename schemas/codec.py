"""Avro encoding and decoding of astreg records, in both framings of the contract.

* **Single-object encoding** (default): ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's canonical form + the Avro body.
* **Confluent wire format** (when a Schema Registry URL is configured): ``00`` + 4-byte
  big-endian schema id + the Avro body; the writer schema is registered under the subject
  ``<topic>-value`` and fetched by id when reading.

Readers accept both framings whatever they write, resolve old writer schemas to today's reader
schema (schema evolution), and reject anything else with :class:`UndecodableRecord` naming the
topic/partition/offset. Usage::

    codec = Codec.for_model(RegistrationEvent)
    data = codec.encode(event)
    event = codec.decode(data, topic=t, partition=p, offset=o)
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import io
import json
import operator
import struct
import threading
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Generic, TypeVar

import fastavro
import fastavro.schema
import httpx

from astreg.errors import SchemaRegistryError, UndecodableRecord

from . import models, quality
from .fastdc import inline_maker

__all__ = [
    "SCHEMA_DIR",
    "Codec",
    "SchemaRegistryClient",
    "load_schema",
    "fingerprint",
    "to_dict",
    "from_dict",
    "registration_codec",
    "node_codec",
    "location_codec",
]

SCHEMA_DIR = Path(__file__).resolve().parent
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"

T = TypeVar("T")

_SCHEMA_FILES: dict[type, str] = {
    models.RegistrationEvent: "registration_event.avsc",
    models.NodeStatus: "node_status.avsc",
    models.EndpointLocation: "endpoint_location.avsc",
    quality.QualitySample: "quality_sample.avsc",
    quality.Alert: "alert.avsc",
}


def load_schema(name_or_path: str | Path) -> dict[str, Any]:
    """Load an ``.avsc`` file (a bare name is looked up in ``schemas/``)."""
    path = Path(name_or_path)
    if not path.is_absolute() and not path.exists():
        path = SCHEMA_DIR / path
    return json.loads(path.read_text(encoding="utf-8"))


def _strip_logical_types(node: Any) -> Any:
    # astreg keeps times as epoch-ms ints in memory; fastavro would turn timestamp-millis into
    # datetimes on read. The canonical form (and so the fingerprint) ignores logicalType anyway.
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def fingerprint(schema: dict[str, Any]) -> bytes:
    """CRC-64-AVRO fingerprint of the schema's parsing canonical form, little-endian bytes."""
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    hexfp = fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
    return bytes.fromhex(hexfp)


# ---------------------------------------------------------------- dataclass <-> dict


_Conv = tuple[str, Callable[[Any], Any], Callable[[Any], Any]]


def _field_converters(cls: type) -> list[_Conv]:
    hints = typing.get_type_hints(cls)
    out: list[_Conv] = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        origin = typing.get_origin(tp)
        inner = args[0] if origin in (typing.Union, types.UnionType) and len(args) == 1 else tp
        if isinstance(inner, type) and issubclass(inner, enum.Enum):
            ecls = inner
            out.append((f.name, _enc_enum, _make_dec_enum(ecls)))
        elif typing.get_origin(inner) is tuple:
            item = typing.get_args(inner)[0]
            if dataclasses.is_dataclass(item):
                out.append((f.name, _make_enc_list(typing.cast(type, item)), _make_dec_list(typing.cast(type, item))))
            else:
                out.append((f.name, list, tuple))
        else:
            out.append((f.name, _ident, _ident))
    return out


def _ident(v: Any) -> Any:
    return v


def _enc_enum(v: Any) -> Any:
    return None if v is None else v.value


def _make_dec_enum(ecls: type[enum.Enum]) -> Callable[[Any], Any]:
    def dec(v: Any) -> Any:
        return None if v is None else ecls(v)

    return dec


def _make_enc_list(item: type) -> Callable[[Any], Any]:
    return lambda seq: [to_dict(x) for x in seq]


def _make_dec_list(item: type) -> Callable[[Any], Any]:
    return lambda seq: tuple(from_dict(item, x) for x in seq)


_CONVERTERS: dict[type, list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]]] = {}


def _converters(cls: type) -> list[tuple[str, Callable[[Any], Any], Callable[[Any], Any]]]:
    conv = _CONVERTERS.get(cls)
    if conv is None:
        conv = _CONVERTERS[cls] = _field_converters(cls)
    return conv


def to_dict(obj: Any) -> dict[str, Any]:
    """A model instance as the plain dict Avro (and JSON) wants: enums as symbols."""
    return {name: enc(getattr(obj, name)) for name, enc, _ in _converters(type(obj))}


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a model instance from a decoded dict; fields the model lacks are ignored."""
    fast = _FROM_DICT.get(cls)
    if fast is None:
        fast = _FROM_DICT[cls] = _compile_from_dict(cls)
    return fast(data)  # type: ignore[no-any-return]


def _from_dict_slow(cls: type[T], data: dict[str, Any]) -> T:
    kwargs = {name: dec(data[name]) for name, _, dec in _converters(cls) if name in data}
    return cls(**kwargs)


_FROM_DICT: dict[type, Callable[[dict[str, Any]], Any]] = {}


def _compile_from_dict(cls: type) -> Callable[[dict[str, Any]], Any]:
    # Hot path (the worker decodes every event): one generated call with every field present
    # (what fastavro returns for today's reader schema); enum symbols looked up in a dict of
    # members (an Enum call costs ~1 µs). Anything else (missing fields, unknown symbols) takes
    # the generic path above, which raises what it always raised.
    env: dict[str, Any] = {"cls": cls, "slow": _from_dict_slow}
    args = []
    for name, _, dec in _converters(cls):
        ftype = typing.get_type_hints(cls)[name]
        inner = [a for a in typing.get_args(ftype) if a is not type(None)]
        etype = inner[0] if len(inner) == 1 and typing.get_origin(ftype) in (typing.Union, types.UnionType) else ftype
        if isinstance(etype, type) and issubclass(etype, enum.Enum):
            env[f"E_{name}"] = {m.value: m for m in etype}
            env[f"E_{name}"][None] = None
            args.append(f"{name}=E_{name}[d[{name!r}]]")
        elif dec is _ident:
            args.append(f"{name}=d[{name!r}]")
        else:
            env[f"D_{name}"] = dec
            args.append(f"{name}=D_{name}(d[{name!r}])")
    src = "def from_dict(d):\n    try:\n        return cls(" + ", ".join(args) + ")\n" \
          "    except (KeyError, TypeError):\n        return slow(cls, d)\n"
    exec(compile(src, f"<from_dict {cls.__name__}>", "exec"), env)  # noqa: S102 - generated from our own models
    return env["from_dict"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- Schema Registry


class SchemaRegistryClient:
    """Minimal Confluent Schema Registry client: register a subject's schema, fetch by id.

    Synchronous on purpose: it is called once per schema (results are cached), so a blocking
    round trip on first use costs less than making every encode/decode a coroutine.
    """

    def __init__(self, url: str, *, auth: tuple[str, str] | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, auth=auth, timeout=timeout)
        self._by_id: dict[int, dict[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """Register ``schema`` under ``subject`` (idempotent) and return its id."""
        text = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        key = (subject, text)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        try:
            resp = self._client.post(
                f"/subjects/{subject}/versions",
                json={"schema": text},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"cannot reach schema registry {self.url}: {exc}") from exc
        if resp.status_code >= 400:
            raise SchemaRegistryError(
                f"schema registry refused subject {subject!r}: {resp.status_code} {resp.text[:200]}"
            )
        schema_id = int(resp.json()["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._by_id[schema_id] = schema
        return schema_id

    def get(self, schema_id: int) -> dict[str, Any]:
        """The writer schema with this id."""
        with self._lock:
            if schema_id in self._by_id:
                return self._by_id[schema_id]
        try:
            resp = self._client.get(f"/schemas/ids/{schema_id}")
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"cannot reach schema registry {self.url}: {exc}") from exc
        if resp.status_code == 404:
            raise SchemaRegistryError(f"schema id {schema_id} unknown to registry {self.url}")
        if resp.status_code >= 400:
            raise SchemaRegistryError(f"schema registry error {resp.status_code}: {resp.text[:200]}")
        schema = json.loads(resp.json()["schema"])
        with self._lock:
            self._by_id[schema_id] = schema
        return schema

    def close(self) -> None:
        self._client.close()


# ---------------------------------------------------------------- codec


class Codec(Generic[T]):
    """Encode/decode one record type; see the module docstring for framings."""

    def __init__(
        self,
        model: type[T],
        schema: dict[str, Any],
        *,
        registry: SchemaRegistryClient | None = None,
        subject: str | None = None,
        writers: Iterable[dict[str, Any]] = (),
    ):
        self.model = model
        self.schema = schema
        self._fast: Callable[[Any, bytearray], None] | None = None
        self._reader = fastavro.parse_schema(_strip_logical_types(copy.deepcopy(schema)))
        self.fingerprint = fingerprint(schema)
        self._prefix = SINGLE_OBJECT_MAGIC + self.fingerprint
        self._own_single_object = self._prefix  # bytes this codec's own schema wrote: fast reader
        self._own_confluent = b"-"  # (set below with a registry: magic byte + schema id)
        self._flat_reader: Callable[[bytes, int], Any] | None = None
        self._writers: dict[bytes, Any] = {self.fingerprint: self._reader}
        for w in writers:
            self.add_writer(w)
        self.registry = registry
        self.subject = subject
        self._registry_writers: dict[int, Any] = {}
        if registry is not None:
            if not subject:
                raise ValueError("a Schema Registry codec needs a subject (e.g. '<topic>-value')")
            schema_id = registry.register(subject, schema)
            self._prefix = CONFLUENT_MAGIC + struct.pack(">I", schema_id)
            self._own_confluent = self._prefix
            self._registry_writers[schema_id] = self._reader

    @classmethod
    def for_model(
        cls,
        model: type[T],
        *,
        registry: SchemaRegistryClient | None = None,
        topic: str | None = None,
    ) -> Codec[T]:
        """The codec for one of the contract's record types (today's ``.avsc``)."""
        schema = load_schema(_SCHEMA_FILES[model])
        subject = f"{topic}-value" if topic else None
        return cls(model, schema, registry=registry, subject=subject, writers=_history(model))

    def add_writer(self, schema: dict[str, Any]) -> None:
        """Accept single-object bytes written with another (older or newer) version."""
        self._writers[fingerprint(schema)] = fastavro.parse_schema(
            _strip_logical_types(copy.deepcopy(schema))
        )

    def encode(self, obj: T) -> bytes:
        # Hot path (the producer encodes every AMI event): a writer compiled from the schema
        # for this dataclass, byte-identical to fastavro's (tests compare both).
        writer = self._fast
        if writer is None:
            writer = self._fast = _compile_writer(self.model, _strip_logical_types(self.schema))
        out = bytearray(self._prefix)
        writer(obj, out)
        return bytes(out)

    def encode_fastavro(self, obj: T) -> bytes:
        """The reference encoding through fastavro (kept for tests and as the spec)."""
        buf = io.BytesIO()
        buf.write(self._prefix)
        fastavro.schemaless_writer(buf, self._reader, to_dict(obj))
        return buf.getvalue()

    def decode_dict(
        self,
        data: bytes | None,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> dict[str, Any]:
        """Decode to a plain dict (today's reader schema), raising UndecodableRecord."""
        where: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
        if data is None:
            raise UndecodableRecord("null value where a record was expected", **where)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise UndecodableRecord(f"value is {type(data).__name__}, not bytes", **where)
        data = bytes(data)
        if data[:2] == SINGLE_OBJECT_MAGIC:
            if len(data) < 10:
                raise UndecodableRecord("truncated single-object header", **where)
            writer = self._writers.get(data[2:10])
            if writer is None:
                raise UndecodableRecord(
                    f"unknown schema fingerprint {data[2:10].hex()} (not a {self.model.__name__})",
                    **where,
                )
            body = data[10:]
        elif data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            schema_id = struct.unpack(">I", data[1:5])[0]
            writer = self._registry_writers.get(schema_id)
            if writer is None:
                if self.registry is None:
                    raise UndecodableRecord(
                        f"Confluent-framed record (schema id {schema_id}) but no schema registry configured",
                        **where,
                    )
                try:
                    wschema = self.registry.get(schema_id)
                except SchemaRegistryError as exc:
                    raise UndecodableRecord(str(exc), **where) from exc
                if wschema.get("name") != self.schema.get("name"):
                    raise UndecodableRecord(
                        f"schema id {schema_id} is {wschema.get('name')!r}, not {self.schema.get('name')!r}",
                        **where,
                    )
                writer = fastavro.parse_schema(_strip_logical_types(copy.deepcopy(wschema)))
                self._registry_writers[schema_id] = writer
            body = data[5:]
        else:
            raise UndecodableRecord(
                f"unknown framing (first bytes {data[:4].hex() or 'empty'}; expected c301 or 00)",
                **where,
            )
        buf = io.BytesIO(body)
        try:
            if writer is self._reader:
                record = fastavro.schemaless_reader(buf, writer, None)
            else:
                record = fastavro.schemaless_reader(buf, writer, self._reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError...
            raise UndecodableRecord(f"bad Avro body: {type(exc).__name__}: {exc}", **where) from exc
        if buf.tell() != len(body):
            raise UndecodableRecord(
                f"{len(body) - buf.tell()} trailing bytes after the record", **where
            )
        if not isinstance(record, dict):
            raise UndecodableRecord("body is not a record", **where)
        return record

    def decode(
        self,
        data: bytes | None,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> T:
        if type(data) is bytes:  # noqa: E721 - exactly bytes: the hot path (memoryview etc. below)
            reader = self._flat_reader
            if reader is None:
                reader = self._flat_reader = _generate_flat_reader(
                    _strip_logical_types(self.schema), self.model) or _NO_READER
            if reader is not _NO_READER:
                if data[:10] == self._own_single_object:
                    start = 10
                elif data[:5] == self._own_confluent:
                    start = 5
                else:
                    start = 0
                if start:
                    try:
                        return reader(data, start)  # type: ignore[no-any-return]
                    except (IndexError, UnicodeDecodeError, _BadBody) as exc:
                        reason = "truncated" if isinstance(exc, IndexError) else str(exc)
                        raise UndecodableRecord(
                            f"bad Avro body: {type(exc).__name__}: {reason}",
                            topic=topic, partition=partition, offset=offset,
                        ) from exc
        record = self.decode_dict(data, topic=topic, partition=partition, offset=offset)
        try:
            return from_dict(self.model, record)
        except (TypeError, ValueError) as exc:
            raise UndecodableRecord(
                f"record does not fit {self.model.__name__}: {exc}",
                topic=topic,
                partition=partition,
                offset=offset,
            ) from exc


# ---------------------------------------------------------------- compiled writer
#
# fastavro's schemaless_writer resolves every union branch from the Python value at run time;
# for astreg's flat records that costs far more than the bytes it writes. This writer is
# compiled once per (model, schema) from the same schema and covers the types the contract
# uses: null, boolean, int, long, string, enum, [null, X] unions, arrays and nested records.


def _write_long(n: int, out: bytearray) -> None:
    n = (n << 1) ^ (n >> 63)
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _compile_type(schema: Any, named: dict[str, Any], model: type | None) -> Callable[[Any, bytearray], None]:
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        branches = schema
        if len(branches) == 2 and "null" in branches:
            null_index = branches.index("null")
            other = branches[1 - null_index]
            inner = _compile_type(other, named, model)
            tag_null = bytes([null_index * 2])
            tag_value = bytes([(1 - null_index) * 2])

            def write_optional(v: Any, out: bytearray) -> None:
                if v is None:
                    out += tag_null
                else:
                    out += tag_value
                    inner(v, out)

            return write_optional
        raise TypeError(f"unsupported union {branches}")
    if isinstance(schema, dict):
        t = schema["type"]
        if t == "record":
            named[schema.get("name", "")] = schema
            if "namespace" in schema:
                named[f"{schema['namespace']}.{schema['name']}"] = schema
            return _compile_record(schema, named, model)
        if t == "enum":
            named[schema["name"]] = schema
            index = {sym: i for i, sym in enumerate(schema["symbols"])}
            default = index.get(schema.get("default", ""), 0)

            def write_enum(v: Any, out: bytearray) -> None:
                _write_long(index.get(v.value if isinstance(v, enum.Enum) else v, default), out)

            return write_enum
        if t == "array":
            inner = _compile_type(schema["items"], named, None)

            def write_array(v: Any, out: bytearray) -> None:
                if v:
                    _write_long(len(v), out)
                    for x in v:
                        inner(x, out)
                out.append(0)

            return write_array
        if t == "map":
            value = _compile_type(schema["values"], named, None)

            def write_map(v: Any, out: bytearray) -> None:
                if v:
                    _write_long(len(v), out)
                    for k, x in v.items():
                        b = k.encode("utf-8")
                        _write_long(len(b), out)
                        out += b
                        value(x, out)
                out.append(0)

            return write_map
        return _compile_type(t, named, model)
    if schema in ("long", "int"):
        return _write_long
    if schema == "string":

        def write_string(v: str, out: bytearray) -> None:
            b = v.encode("utf-8")
            _write_long(len(b), out)
            out += b

        return write_string
    if schema == "boolean":

        def write_bool(v: bool, out: bytearray) -> None:
            out.append(1 if v else 0)

        return write_bool
    if schema == "double":
        pack_double = struct.Struct("<d").pack

        def write_double(v: float, out: bytearray) -> None:
            out += pack_double(v)

        return write_double
    if schema == "float":
        pack_float = struct.Struct("<f").pack

        def write_float(v: float, out: bytearray) -> None:
            out += pack_float(v)

        return write_float
    if schema == "null":
        return lambda v, out: None
    if schema == "bytes":

        def write_bytes(v: bytes, out: bytearray) -> None:
            _write_long(len(v), out)
            out += v

        return write_bytes
    raise TypeError(f"unsupported Avro type {schema!r}")


def _compile_record(schema: dict[str, Any], named: dict[str, Any], model: type | None) -> Callable[[Any, bytearray], None]:
    fast = _generate_flat_writer(schema, named)
    if fast is not None:
        return fast
    writers = [(f["name"], _compile_type(f["type"], named, None)) for f in schema["fields"]]
    getters = [(operator.attrgetter(name), w) for name, w in writers]

    def write_record(obj: Any, out: bytearray) -> None:
        if isinstance(obj, dict):
            for name, w in writers:
                w(obj.get(name), out)
            return
        for get, w in getters:
            w(get(obj), out)

    return write_record


def _generate_flat_writer(schema: dict[str, Any], named: dict[str, Any]) -> Callable[[Any, bytearray], None] | None:
    """Straight-line Python source for a record of scalars, enums, [null, scalar] unions and
    arrays of those or of such records (RegistrationEvent, NodeStatus, EndpointLocation): no
    per-field call, small ints and short strings inline. Anything else (maps, nested records
    outside arrays, other unions) uses the closure writer above."""
    lines = ["def write(obj, out):", "    if isinstance(obj, dict):", "        return slow(obj, out)"]
    env: dict[str, Any] = {"_wl": _write_long}

    def scalar(t: Any, var: str, indent: str, fname: str) -> list[str] | None:
        if isinstance(t, str) and t in named:
            t = named[t]
        if isinstance(t, dict) and t.get("type") == "enum":
            named[t["name"]] = t
            table: dict[Any, bytes] = {}
            for i, sym in enumerate(t["symbols"]):
                buf = bytearray()
                _write_long(i, buf)
                table[sym] = bytes(buf)
            dbuf = bytearray()
            _write_long(t["symbols"].index(t.get("default", t["symbols"][0])), dbuf)
            env[f"E_{fname}"] = table
            env[f"D_{fname}"] = bytes(dbuf)
            return [f"{indent}out += E_{fname}.get({var}) or D_{fname}"]
        if isinstance(t, dict):
            t = t.get("type")
            if isinstance(t, dict | list):
                return None
        if t in ("long", "int"):  # zig-zag varint, inline (timestamps take 6-7 bytes)
            return [f"{indent}if 0 <= {var} < 64: out.append({var} << 1)", f"{indent}else:",
                    f"{indent}    z = ({var} << 1) ^ ({var} >> 63)",
                    f"{indent}    while z > 127: out.append((z & 127) | 128); z >>= 7",
                    f"{indent}    out.append(z)"]
        if t == "string":
            return [f"{indent}b = {var}.encode()", f"{indent}n = len(b)",
                    f"{indent}if n < 64: out.append(n << 1)", f"{indent}else: _wl(n, out)", f"{indent}out += b"]
        if t == "boolean":
            return [f"{indent}out.append(1 if {var} else 0)"]
        return None

    for f in schema["fields"]:
        name, t = f["name"], f["type"]
        if not name.isidentifier():
            return None
        lines.append(f"    v = obj.{name}")
        if isinstance(t, list):
            if len(t) != 2 or "null" not in t:
                return None
            ni = t.index("null")
            body = scalar(t[1 - ni], "v", "        ", name)
            if body is None:
                return None
            lines += ["    if v is None:", f"        out.append({ni * 2})", "    else:",
                      f"        out.append({(1 - ni) * 2})", *body]
        elif isinstance(t, dict) and t.get("type") == "array":
            items = named.get(t["items"], t["items"]) if isinstance(t["items"], str) else t["items"]
            head = ["    if v:", "        n = len(v)", "        if n < 64: out.append(n << 1)", "        else: _wl(n, out)"]
            if isinstance(items, dict) and items.get("type") == "record":
                named[items["name"]] = items
                item_writer = _generate_flat_writer(items, named)
                if item_writer is None:
                    return None
                env[f"W_{name}"] = item_writer
                lines += [*head, f"        for x in v: W_{name}(x, out)", "    out.append(0)"]
            else:
                body = scalar(items, "x", "            ", name)
                if body is None:
                    return None
                lines += [*head, "        for x in v:", *body, "    out.append(0)"]
        else:
            body = scalar(t, "v", "    ", name)
            if body is None:
                return None
            lines += body
    writers = [(f["name"], _compile_type(f["type"], named, None)) for f in schema["fields"]]

    def slow(obj: dict[str, Any], out: bytearray) -> None:
        for fname, w in writers:
            w(obj.get(fname), out)

    env["slow"] = slow
    exec(compile("\n".join(lines), f"<avro writer {schema.get('name')}>", "exec"), env)  # noqa: S102 - generated from our own .avsc
    return env["write"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- compiled reader
#
# fastavro.schemaless_reader costs ~20 µs per RegistrationEvent (a BytesIO, the schema walk,
# a dict) and from_dict ~9 µs more; the worker decodes every event. For a flat record of
# scalars, enums and [null, scalar] unions read with its own writer schema (the normal case),
# this generated reader goes from bytes straight to the model in one function. Anything else
# (other writer versions, registry schemas, nested types) keeps fastavro. Tests compare both
# on generated and malformed input.


# _BadBody and _Unsupported are private control flow of the generated reader, not errors of
# astreg (so not in astreg.errors): neither leaves this module. _BadBody is raised by the
# generated code ("Bad") and turned into UndecodableRecord by Codec.decode; _Unsupported stops
# generating a reader and selects fastavro instead.
class _BadBody(ValueError):
    """A body the generated reader rejects (negative length, bad union branch, trailing bytes)."""


def _no_reader(data: bytes, start: int) -> Any:  # marker: no flat reader for this record
    raise NotImplementedError


_NO_READER = _no_reader


class _Unsupported(Exception):
    """A schema or model shape the generated reader does not cover: fastavro reads it."""


def _generate_flat_reader(schema: dict[str, Any], model: type) -> Callable[[bytes, int], Any] | None:
    """``read(data, start) -> model`` for the record at ``data[start:]``; raises IndexError
    (truncated), UnicodeDecodeError or _BadBody (anything else wrong, incl. trailing bytes).

    Covers what the contract uses: null, boolean, int, long, string, enum, [null, X] unions of
    those, arrays of those or of records, and nested records, each record built inline into its
    frozen slotted dataclass (schemas.fastdc). Anything else: None (fastavro reads it)."""
    env: dict[str, Any] = {"Bad": _BadBody}
    lines: list[str] = []
    try:
        _gen_record_reader(schema, model, env, lines, [0], top=True)
    except _Unsupported:
        return None
    exec(compile("\n".join(lines), f"<avro reader {schema.get('name')}>", "exec"), env)  # noqa: S102 - generated from our own .avsc
    return env["read"]  # type: ignore[no-any-return]


def _read_long_lines(var: str, ind: str) -> list[str]:
    return [f"{ind}b = buf[pos]; pos += 1", f"{ind}if b < 128: {var} = (b >> 1) ^ -(b & 1)", f"{ind}else:",
            f"{ind}    n = b & 127; s = 7",
            f"{ind}    while b > 127:",
            f"{ind}        b = buf[pos]; pos += 1; n |= (b & 127) << s; s += 7",
            f"{ind}        if s > 70: raise Bad('varint too long')",
            f"{ind}    n &= 0xFFFFFFFFFFFFFFFF",  # a 10-byte varint wraps to 64 bits, as fastavro and Java read it
            f"{ind}    {var} = (n >> 1) ^ -(n & 1)"]


def _gen_record_reader(schema: dict[str, Any], model: type, env: dict[str, Any], lines: list[str],
                       counter: list[int], top: bool = False) -> str:
    """Add ``def R<k>(buf, pos, size) -> (obj, pos)`` for one record to ``lines``; its name.

    ``top``: the record is the whole body, ``def read(buf, pos) -> obj`` (no call on the hot
    path for a flat record), which refuses trailing bytes."""
    if not dataclasses.is_dataclass(model) or not schema.get("fields"):
        raise _Unsupported(getattr(model, "__name__", str(model)))
    k = counter[0]
    counter[0] += 1
    name = f"R{k}"
    hints = typing.get_type_hints(model)
    fields = {f.name for f in dataclasses.fields(model)}
    body: list[str] = []
    values: dict[str, str] = {}

    def scalar(t: Any, var: str, ind: str, ftype: Any) -> list[str]:
        if isinstance(t, dict) and t.get("type") == "enum":
            inner = [a for a in typing.get_args(ftype) if a is not type(None)] if ftype is not None else []
            ecls = inner[0] if len(inner) == 1 else ftype
            members: tuple[Any, ...]
            if isinstance(ecls, type) and issubclass(ecls, enum.Enum):
                try:
                    members = tuple(ecls(sym) for sym in t["symbols"])
                except ValueError as exc:
                    raise _Unsupported(str(exc)) from exc
            else:
                members = tuple(t["symbols"])
            ename = f"E{k}_{len(env)}"
            env[ename] = members
            return [*_read_long_lines("i", ind), f"{ind}if i < 0: raise Bad('negative enum index')",
                    f"{ind}{var} = {ename}[i]"]
        if isinstance(t, dict) and t.get("type") == "record":
            rmodel = ftype
            rname = _gen_record_reader(t, rmodel, env, lines, counter)
            return [f"{ind}{var}, pos = {rname}(buf, pos, size)"]
        if isinstance(t, dict):
            t = t.get("type")
            if isinstance(t, dict | list):
                raise _Unsupported(str(t))
        if t in ("long", "int"):
            return _read_long_lines(var, ind)
        if t == "string":
            return [*_read_long_lines("ln", ind), f"{ind}if ln < 0: raise Bad('negative string length')",
                    f"{ind}end = pos + ln", f"{ind}if end > size: raise IndexError('string past the end')",
                    f"{ind}{var} = buf[pos:end].decode(); pos = end"]
        if t == "boolean":
            return [f"{ind}b = buf[pos]; pos += 1", f"{ind}if b > 1: raise Bad('bad boolean')", f"{ind}{var} = b == 1"]
        raise _Unsupported(str(t))

    for f in schema["fields"]:
        fname, t = f["name"], f["type"]
        if not fname.isidentifier():
            raise _Unsupported(fname)
        var = f"f_{fname}"
        ftype = hints.get(fname)
        if isinstance(t, list):
            if len(t) != 2 or "null" not in t:
                raise _Unsupported(str(t))
            ni = t.index("null")
            inner = [a for a in typing.get_args(ftype) if a is not type(None)] if ftype is not None else []
            branch = scalar(t[1 - ni], var, "        ", inner[0] if len(inner) == 1 else ftype)
            body += ["    b = buf[pos]; pos += 1", f"    if b == {ni * 2}: {var} = None",
                     f"    elif b == {(1 - ni) * 2}:", *branch, "    else: raise Bad('bad union branch')"]
        elif isinstance(t, dict) and t.get("type") == "array":
            origin = typing.get_origin(ftype)
            args = typing.get_args(ftype)
            if origin not in (tuple, list) or not args:
                raise _Unsupported(f"{fname}: {ftype}")
            item = scalar(t["items"], "it", "            ", args[0])
            # Every supported item takes at least one byte: a count beyond the bytes left is a lie.
            body += [f"    {var} = []", "    while True:", *_read_long_lines("cnt", "        "),
                     "        if cnt == 0: break",
                     "        if cnt < 0:", "            cnt = -cnt", *_read_long_lines("bsz", "            "),
                     "        if cnt > size - pos: raise Bad('array longer than the record')",
                     "        for _ in range(cnt):", *item, f"            {var}.append(it)"]
            if origin is tuple:
                body.append(f"    {var} = tuple({var})")
        else:
            body += scalar(t, var, "    ", ftype)
        if fname in fields:
            values[fname] = var
    if {f.name for f in dataclasses.fields(model) if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING} - set(values):
        raise _Unsupported("a required model field the schema lacks")  # the generic path complains
    try:
        # A frozen dataclass's __init__ sets each field through object.__setattr__ (~6 µs for
        # RegistrationEvent); schemas.fastdc builds the same object from its slots, inline.
        dc_env, dc_lines = inline_maker(model, values, var="obj", prefix=f"_dc{k}_")
        env.update(dc_env)
        body += dc_lines
    except TypeError:  # not slotted, or has __post_init__: its own constructor
        env[f"M{k}"] = model
        body.append(f"    obj = M{k}(" + ", ".join(f"{n}={v}" for n, v in values.items()) + ")")
    if top:
        lines += ["def read(buf, pos):", "    size = len(buf)", *body,
                  "    if pos != size: raise Bad(f'{size - pos} trailing bytes after the record')", "    return obj"]
        return "read"
    lines += [f"def {name}(buf, pos, size):", *body, "    return obj, pos", ""]
    return name


def _compile_writer(model: type, schema: dict[str, Any]) -> Callable[[Any, bytearray], None]:
    return _compile_record(schema, {}, model)


def _history(model: type) -> list[dict[str, Any]]:
    # Older versions of a schema live in schemas/history/<file stem>/*.avsc; their bytes stay
    # readable forever (the topics keep history for analytics).
    stem = Path(_SCHEMA_FILES[model]).stem
    folder = SCHEMA_DIR / "history" / stem
    if not folder.is_dir():
        return []
    return [load_schema(p) for p in sorted(folder.glob("*.avsc"))]


def registration_codec(
    registry: SchemaRegistryClient | None = None, topic: str | None = None
) -> Codec[models.RegistrationEvent]:
    return Codec.for_model(models.RegistrationEvent, registry=registry, topic=topic)


def node_codec(
    registry: SchemaRegistryClient | None = None, topic: str | None = None
) -> Codec[models.NodeStatus]:
    return Codec.for_model(models.NodeStatus, registry=registry, topic=topic)


def location_codec(
    registry: SchemaRegistryClient | None = None, topic: str | None = None
) -> Codec[models.EndpointLocation]:
    return Codec.for_model(models.EndpointLocation, registry=registry, topic=topic)
