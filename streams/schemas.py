"""Decides which writer schemas the engine reads besides its own: released versions in schemas/, and versions producers register.

Avro single-object encoding names the writer's schema by fingerprint only. A Java or Go producer
upgrades at its own pace: it may write with a version older or newer than the workers'. Released
versions are kept in `schemas/released/<Name>/<fingerprint>.avsc`; any other version is registered
on the compacted `engage.schemas` topic with `engage schemas register FILE`, which refuses one the
current schema cannot read (Avro schema resolution: a field the reader needs without a default,
a type that does not promote). A worker meeting an unknown fingerprint reads that topic (at most
once per fingerprint per 10 s) and resolves the record with the registered writer schema.
"""
from __future__ import annotations

import getpass
import json
import logging
import time
from pathlib import Path

from fastavro.schema import SchemaParseException

from streams import clients, topics
from streams.codec import SchemaStore, SingleObjectCodec, fingerprint_of, readable
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_SCHEMA_BYTES = 64 * 1024
RETRY_MISS_S = 10.0


class RegistrationError(ValueError):
    """A writer schema that cannot be registered; the message says why."""


def load_writer(store: SchemaStore, path: Path) -> tuple[str, dict, str]:
    """(contract name, self-contained schema, fingerprint hex) of a schema file; RegistrationError if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistrationError(f"{path}: cannot read: {exc}") from None
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise RegistrationError(f"{path}: larger than {MAX_SCHEMA_BYTES:,} bytes")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistrationError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    if not isinstance(raw, dict) or raw.get("type") != "record" or not isinstance(raw.get("name"), str):
        raise RegistrationError(f"{path}: not an Avro record schema")
    name = raw["name"].rsplit(".", 1)[-1]
    if name not in store.parsed_by_name:
        raise RegistrationError(f"{path}: {name} is not a schema of the contract (known: {', '.join(store.names())})")
    try:
        writer = store.contained(raw)
        fp = fingerprint_of(writer).hex()
    except (SchemaParseException, ValueError, KeyError, TypeError) as exc:
        raise RegistrationError(f"{path}: not a valid Avro schema: {exc}") from None
    problems = readable(store.json_by_name[name], writer)
    if problems:
        raise RegistrationError(f"{path}: the current {name} cannot read records written with it: "
                                + "; ".join(problems[:5]))
    return name, writer, fp


def register(settings: Settings, store: SchemaStore, loaded: tuple[str, dict, str], author: str | None = None) -> dict:
    """Publish a writer schema `load_writer` accepted to engage.schemas; returns the record."""
    name, writer, fp = loaded
    record = {"fingerprint": fp, "name": name, "schema": json.dumps(writer, separators=(",", ":")),
              "ts": int(time.time() * 1000), "author": author or whoami()}
    topic = settings.topic(topics.SCHEMAS.name)
    try:
        clients.send_one(settings, topic, fp.encode(), SingleObjectCodec(store).encode(topic, topics.SCHEMAS.schema, record))
    except clients.SendError as exc:
        raise RegistrationError(str(exc)) from None
    return record


def look_up_writer_schemas(settings: Settings, codec) -> None:
    """Let `codec` read records of writer schemas other than ours, looked up on engage.schemas (without a
    schema registry; with one, the registry does it)."""
    if settings.schema_registry_url is None:
        codec.lookup = RegisteredSchemas(settings, codec.store)


class RegisteredSchemas:
    """The codec's lookup for fingerprints it does not know: the writer schemas on engage.schemas.

    Every schema read from the topic is checked again (fingerprint and readability), so a record
    written there by other means cannot make the workers misread data.
    """

    def __init__(self, settings: Settings, store: SchemaStore):
        self.settings, self.store = settings, store
        self.known: dict[bytes, tuple[str, dict]] = {}
        self.next_offset = 0
        self._misses: dict[bytes, float] = {}  # fingerprint -> when the topic was last read for it

    def __call__(self, fp: bytes) -> tuple[str, dict] | None:
        if fp not in self.known:
            last = self._misses.get(fp)
            if last is not None and time.monotonic() - last < RETRY_MISS_S:
                return None
            if len(self._misses) > 10_000:  # bounded whatever fingerprints producers send
                self._misses.clear()
            self._misses[fp] = time.monotonic()
            self.refresh()
        return self.known.get(fp)

    def refresh(self, timeout_s: float = 5.0) -> None:
        topic = self.settings.topic(topics.SCHEMAS.name)
        try:
            stored = clients.read_to_end(self.settings, topic, start=self.next_offset, timeout_s=timeout_s,
                                         group_prefix=f"{self.settings.app_id}-schemas")
        except clients.ReadError as exc:
            log.error("cannot read the registered writer schemas: %s", exc)
            return
        codec = SingleObjectCodec(self.store)
        for offset, _key, value in stored:
            self.next_offset = offset + 1
            try:
                record = codec.decode(topic, topics.SCHEMAS.schema, value)
                writer = json.loads(record["schema"])
                fp = fingerprint_of(writer).hex()
            except (ValueError, KeyError, TypeError, SchemaParseException) as exc:
                log.error("%s offset %d is not a usable writer schema, ignored: %s", topic, offset, exc)
                continue
            name = record["name"]
            if fp != record["fingerprint"] or name not in self.store.parsed_by_name or \
                    readable(self.store.json_by_name[name], writer):
                log.error("%s offset %d: writer schema %s for %s does not check out, ignored", topic, offset,
                          record["fingerprint"], name)
                continue
            self.known[bytes.fromhex(fp)] = (name, writer)


def whoami() -> str:
    """Who runs this command, for the author field of what it publishes."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return "unknown"
