"""Decides how records become bytes on Kafka and back: Avro single-object encoding, or Schema Registry framing.

The schemas under `schemas/` are the source of truth. Single-object encoding (Avro spec:
`C3 01`, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's parsing
canonical form, then the binary body) is self-describing and needs no server. With
SCHEMA_REGISTRY_URL set, Confluent's framing (magic 0, 4-byte schema id, body) is used instead,
through confluent-kafka's Avro serdes.
"""
from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
NAMESPACE = "engage.v1"


class DecodeError(ValueError):
    """The bytes are not a record of the expected schema; the message says why."""


class EncodeError(ValueError):
    """The record does not fit its schema; the message says which field."""


def _without_logical_types(schema: Any) -> Any:
    """The same binary layout with logical types dropped, so timestamps stay epoch-millisecond
    ints in Python, as the contract defines them, instead of datetimes."""
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    if isinstance(schema, dict):
        if "logicalType" in schema and isinstance(schema.get("type"), str):
            return schema["type"]
        out = {}
        for k, v in schema.items():
            if k == "fields":
                out[k] = [{**f, "type": _without_logical_types(f["type"])} for f in v]
            elif k in ("type", "items", "values"):
                out[k] = _without_logical_types(v)
            else:
                out[k] = v
        return out
    return schema


def _full_name(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _inline(schema: Any, raw_by_name: dict[str, Any], defined: set[str], namespace: str | None) -> Any:
    """Make a schema self-contained: a named type is written out where it first occurs and
    referred to by name afterwards, which is how Java's reference implementation writes the
    parsing canonical form (and so what its fingerprint covers)."""
    if isinstance(schema, str):
        if schema in _PRIMITIVES:
            return schema
        full = _full_name(schema, namespace)
        if full in defined:
            return full
        if full not in raw_by_name:
            raise ValueError(f"unknown type {schema!r}")
        return _inline(raw_by_name[full], raw_by_name, defined, namespace)
    if isinstance(schema, list):
        return [_inline(s, raw_by_name, defined, namespace) for s in schema]
    if isinstance(schema, dict):
        kind = schema.get("type")
        out = dict(schema)
        if kind in ("record", "error", "enum", "fixed"):
            ns = schema.get("namespace", namespace)
            full = _full_name(schema["name"], ns)
            if full in defined:
                return full
            defined.add(full)
            out["name"] = full
            out.pop("namespace", None)
            if kind in ("record", "error"):
                out["fields"] = [
                    {**f, "type": _inline(f["type"], raw_by_name, defined, ns)} for f in schema["fields"]
                ]
            return out
        if kind == "array":
            out["items"] = _inline(schema["items"], raw_by_name, defined, namespace)
        elif kind == "map":
            out["values"] = _inline(schema["values"], raw_by_name, defined, namespace)
        elif isinstance(kind, (dict, list)):
            out["type"] = _inline(kind, raw_by_name, defined, namespace)
        return out
    raise ValueError(f"not a schema: {schema!r}")


def fingerprint_of(schema: Any) -> bytes:
    """The CRC-64-AVRO fingerprint of a self-contained schema's parsing canonical form, as Java computes it."""
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(schema)), "CRC-64-AVRO"))


def readable(reader: Any, writer: Any) -> list[str]:
    """Why data written with `writer` cannot be read with `reader` (Avro schema resolution); [] when it can.

    Both are self-contained schemas as JSON (named types written out where they first occur).
    """
    return _Resolution().check(_without_logical_types(reader), _without_logical_types(writer), "")


_PROMOTIONS = {"int": {"long", "float", "double"}, "long": {"float", "double"}, "float": {"double"},
               "string": {"bytes"}, "bytes": {"string"}}


class _Resolution:
    def __init__(self):
        self.named: dict[str, dict[str, Any]] = {"r": {}, "w": {}}

    def _resolve(self, side: str, schema: Any) -> Any:
        if isinstance(schema, dict) and schema.get("type") in ("record", "error", "enum", "fixed"):
            self.named[side][schema["name"]] = schema
            self.named[side][schema["name"].rsplit(".", 1)[-1]] = schema
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            return self.named[side].get(schema, self.named[side].get(schema.rsplit(".", 1)[-1], schema))
        if isinstance(schema, dict) and isinstance(schema.get("type"), (str, dict, list)) and \
                schema["type"] not in ("record", "error", "enum", "fixed", "array", "map"):
            return self._resolve(side, schema["type"])
        return schema

    def check(self, reader: Any, writer: Any, where: str) -> list[str]:
        reader, writer = self._resolve("r", reader), self._resolve("w", writer)
        here = where or "the record"
        if isinstance(writer, list):
            return [p for branch in writer for p in self.check(reader, branch, where)]
        if isinstance(reader, list):
            for branch in reader:
                if not self._copy().check(branch, writer, where):
                    return []
            return [f"{here}: {_kind(writer)} fits no branch of {[_kind(b) for b in reader]}"]
        rk, wk = _kind(reader), _kind(writer)
        if rk in _PRIMITIVES or wk in _PRIMITIVES:
            if rk == wk or rk in _PROMOTIONS.get(wk, ()):
                return []
            return [f"{here}: written as {wk}, read as {rk}"]
        if rk != wk:
            return [f"{here}: written as {wk}, read as {rk}"]
        if rk == "array":
            return self.check(reader["items"], writer["items"], f"{where}[]")
        if rk == "map":
            return self.check(reader["values"], writer["values"], f"{where}{{}}")
        if rk == "enum":
            missing = set(writer["symbols"]) - set(reader["symbols"])
            return [] if not missing or "default" in reader else [f"{here}: symbols {sorted(missing)} unknown to the reader"]
        if rk == "fixed":
            return [] if reader.get("size") == writer.get("size") else [f"{here}: fixed size differs"]
        problems = []
        written = {f["name"]: f for f in writer.get("fields", [])}
        for field in reader.get("fields", []):
            path = f"{where}.{field['name']}" if where else field["name"]
            if field["name"] in written:
                problems += self.check(field["type"], written[field["name"]]["type"], path)
            elif "default" not in field:
                problems.append(f"{path}: the writer has no such field and the reader no default")
        return problems

    def _copy(self) -> "_Resolution":
        other = _Resolution()
        other.named = {k: dict(v) for k, v in self.named.items()}
        return other


def _kind(schema: Any) -> str:
    return schema if isinstance(schema, str) else schema.get("type") if isinstance(schema, dict) else "union"


class SchemaStore:
    """Every schema under one folder, self-contained, parsed, fingerprinted; with the released versions
    kept under `released/<Name>/<fingerprint>.avsc`, which records written with them are read through."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        raw_by_name: dict[str, Any] = {}
        for path in sorted(self.folder.glob("*.avsc")):
            raw = json.loads(path.read_text())
            raw_by_name[_full_name(raw["name"], raw.get("namespace"))] = raw
        if not raw_by_name:
            raise ValueError(f"no .avsc files in {self.folder}")
        self.json_by_name: dict[str, dict] = {}
        self.parsed_by_name: dict[str, Any] = {}
        self.canonical_by_name: dict[str, str] = {}
        self.fingerprint_by_name: dict[str, bytes] = {}
        self.name_by_fingerprint: dict[bytes, str] = {}
        for full, raw in raw_by_name.items():
            short = full.rsplit(".", 1)[-1]
            contained = _inline(raw, raw_by_name, set(), raw.get("namespace"))
            # The parsing canonical form drops logical types, so both forms share one fingerprint.
            canonical = to_parsing_canonical_form(parse_schema(contained))
            parsed = parse_schema(_without_logical_types(contained))
            fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
            self.json_by_name[short] = contained
            self.parsed_by_name[short] = parsed
            self.canonical_by_name[short] = canonical
            self.fingerprint_by_name[short] = fp
            self.name_by_fingerprint[fp] = short
        # fingerprint -> (name, parsed writer schema) of versions other than the current one
        self.writers: dict[bytes, tuple[str, Any]] = {}
        for path in sorted(self.folder.glob("released/*/*.avsc")):
            if path.parent.name in self.parsed_by_name:
                self.add_writer(path.parent.name, json.loads(path.read_text()))

    def add_writer(self, name: str, writer: Any) -> bytes:
        """Make records written with `writer` (self-contained JSON) readable as `name`; returns its fingerprint."""
        fp = fingerprint_of(writer)
        if fp != self.fingerprint_by_name.get(name):
            self.writers[fp] = (name, parse_schema(_without_logical_types(writer)))
        return fp

    def contained(self, raw: Any) -> Any:
        """A schema that may name this store's types, made self-contained."""
        by_name = {_full_name(j["name"], NAMESPACE): j for j in self.json_by_name.values()}
        by_name[_full_name(raw["name"], raw.get("namespace"))] = raw
        return _inline(raw, by_name, set(), raw.get("namespace"))

    def names(self) -> list[str]:
        return sorted(self.parsed_by_name)

    def schema(self, name: str) -> Any:
        try:
            return self.parsed_by_name[name]
        except KeyError:
            raise KeyError(f"no schema named {name!r} in {self.folder}") from None


class SingleObjectCodec:
    """Avro single-object encoding with the schemas of one SchemaStore.

    A record written with another version of its schema is read through Avro schema resolution:
    the released versions are in the store; a fingerprint it does not know is asked of `lookup`
    (the writer schemas registered on engage.schemas), which returns (name, writer JSON) or None.
    """

    def __init__(self, store: SchemaStore, lookup=None):
        self.store, self.lookup = store, lookup

    def encode(self, topic: str, name: str, record: dict) -> bytes:
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(self.store.fingerprint_by_name[name])
        try:
            fastavro.schemaless_writer(buf, self.store.schema(name), record, strict_allow_default=True)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise EncodeError(f"{name}: {exc}") from exc
        return buf.getvalue()

    def decode(self, topic: str, name: str, data: bytes | None) -> dict:
        if data is None:
            raise DecodeError("empty value (tombstone) where a record was expected")
        if len(data) < 10 or data[:2] != MAGIC:
            raise DecodeError(
                f"not Avro single-object encoding: expected marker C3 01, got {data[:2].hex(' ') or 'no bytes'}"
            )
        fp = bytes(data[2:10])
        writer, writer_schema = self.store.name_by_fingerprint.get(fp), None
        if writer is None:
            writer, writer_schema = self._other_version(fp, name)
        if writer != name:
            raise DecodeError(f"wrong schema: record is {writer}, expected {name}")
        buf = io.BytesIO(data)
        buf.seek(10)
        try:
            if writer_schema is None:
                record = fastavro.schemaless_reader(buf, self.store.schema(name), None)
            else:
                record = fastavro.schemaless_reader(buf, writer_schema, self.store.schema(name))
        except Exception as exc:  # fastavro raises many types on truncated or corrupt bodies
            raise DecodeError(f"corrupt {name} body: {type(exc).__name__}: {exc}") from exc
        if buf.tell() != len(data):
            raise DecodeError(f"{len(data) - buf.tell()} trailing bytes after the {name} body")
        return record

    def _other_version(self, fp: bytes, name: str) -> tuple[str, Any]:
        known = self.store.writers.get(fp)
        if known is None and self.lookup is not None:
            found = self.lookup(fp)
            if found is not None:
                writer_name, writer_json = found
                if writer_name in self.store.parsed_by_name:
                    self.store.add_writer(writer_name, writer_json)
                    known = self.store.writers.get(fp)
        if known is None:
            raise DecodeError(f"unknown writer schema fingerprint {fp.hex()}; expected {name} (neither a version "
                              "in schemas/ nor one registered with `engage schemas register`)")
        return known


class RegistryCodec:
    """Confluent Schema Registry framing through confluent-kafka's Avro serdes."""

    def __init__(self, store: SchemaStore, url: str, client=None):
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

        self.store = store
        self.client = client or SchemaRegistryClient({"url": url})
        self._serializers = {
            name: AvroSerializer(self.client, json.dumps(store.json_by_name[name]),
                                 conf={"auto.register.schemas": True})
            for name in store.names()
        }
        self._deserializers = {
            # reader schema without logical types: timestamps stay epoch millis, as in the contract
            name: AvroDeserializer(self.client, json.dumps(_without_logical_types(store.json_by_name[name])))
            for name in store.names()
        }

    def encode(self, topic: str, name: str, record: dict) -> bytes:
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            return self._serializers[name](record, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise EncodeError(f"{name}: {exc}") from exc

    def decode(self, topic: str, name: str, data: bytes | None) -> dict:
        from confluent_kafka.serialization import MessageField, SerializationContext

        if data is None:
            raise DecodeError("empty value (tombstone) where a record was expected")
        if len(data) < 5 or data[0] != 0:
            raise DecodeError("not Schema Registry framing: expected magic byte 0 and a schema id")
        try:
            record = self._deserializers[name](data, SerializationContext(topic, MessageField.VALUE))
        except Exception as exc:
            raise DecodeError(f"cannot decode {name}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"record is not a {name}")
        return _as_millis(record)


def _as_millis(value: Any) -> Any:
    """The registry deserializer applies the writer's logical types; the contract wants epoch millis."""
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _as_millis(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_millis(v) for v in value]
    return value

