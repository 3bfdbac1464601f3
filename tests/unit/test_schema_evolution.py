"""Records written with other versions of a schema are read through Avro schema resolution, or refused with the reason."""
from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from streams.codec import DecodeError, SchemaStore, SingleObjectCodec, readable
from streams.schemas import RegistrationError, load_writer
from streams.settings import REPO_ROOT
from tests.unit.test_schema_compatibility import contained, git_versions

STORE = SchemaStore(REPO_ROOT / "schemas")
CURRENT = json.loads((REPO_ROOT / "schemas" / "Interaction.avsc").read_text())


def variant(change) -> dict:
    schema = json.loads(json.dumps(CURRENT))
    change(schema["fields"])
    return schema


OLDER = variant(lambda fields: fields.pop())  # before `attributes` (default {})
NEWER = variant(lambda fields: fields.append({"name": "device", "type": ["null", "string"], "default": None}))
NO_VISITOR = variant(lambda fields: fields.pop(2))  # visitor_id has no default
VALUE_AS_TEXT = variant(lambda fields: fields.__setitem__(8, {"name": "value", "type": ["null", "string"], "default": None}))


def written_with(schema: dict, record: dict) -> bytes:
    """Single-object encoding by hand (fastavro and the spec), apart from the code under test."""
    parsed = parse_schema(schema)
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
    return b"\xc3\x01" + fp + buf.getvalue()


EVENT = {"event_id": "e1", "ts": 1_700_000_000_000, "visitor_id": "v1", "customer_id": None, "channel": "web",
         "type": "search", "path": "/help", "query": "cancel", "value": None}


def test_every_version_of_every_schema_in_the_history_is_read():
    # Given each schema as of every commit that changed schemas/: its fingerprint is the current one or a released one
    for version in git_versions():
        for name in version:
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(contained(version, name))), "CRC-64-AVRO"))
            assert STORE.fingerprint_by_name[name] == fp or STORE.writers[fp][0] == name, (name, fp.hex())


def test_a_released_older_version_is_read_with_the_fields_it_lacked_defaulted():
    old = json.loads(next((REPO_ROOT / "schemas" / "released" / "DeadLetter").glob("*.avsc")).read_text())
    record = {"ts": 1, "stage": "data", "topic": "t", "partition": 0, "offset": 5, "key": b"k", "value": b"v", "error": "x"}
    got = SingleObjectCodec(STORE).decode("t", "DeadLetter", written_with(old, record))
    assert got["offset"] == 5 and got["truncated"] is False and got["value_length"] is None


@pytest.mark.parametrize("writer, record, expected", [
    (OLDER, EVENT, {**EVENT, "attributes": {}}),
    (NEWER, {**EVENT, "attributes": {"a": "b"}, "device": "ios"}, {**EVENT, "attributes": {"a": "b"}}),
])
def test_a_registered_older_or_newer_writer_is_resolved(writer, record, expected):
    # Given a codec whose lookup knows the producer's writer schema (as engage.schemas would)
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(writer)), "CRC-64-AVRO"))
    codec = SingleObjectCodec(SchemaStore(REPO_ROOT / "schemas"), lookup=lambda f: ("Interaction", writer) if f == fp else None)
    # When a record written with it arrives, then it reads as the current Interaction
    assert codec.decode("engage.events", "Interaction", written_with(writer, record)) == expected


def test_an_unknown_writer_is_a_decode_error_that_says_how_to_fix_it():
    codec = SingleObjectCodec(SchemaStore(REPO_ROOT / "schemas"), lookup=lambda fp: None)
    with pytest.raises(DecodeError, match="engage schemas register"):
        codec.decode("engage.events", "Interaction", written_with(NEWER, {**EVENT, "attributes": {}, "device": None}))


def test_readability_follows_avro_resolution():
    assert readable(STORE.json_by_name["Interaction"], OLDER) == []
    assert readable(STORE.json_by_name["Interaction"], NEWER) == []
    assert readable(STORE.json_by_name["Interaction"], NO_VISITOR) == [
        "visitor_id: the writer has no such field and the reader no default"]
    assert readable(STORE.json_by_name["Interaction"], VALUE_AS_TEXT) == ["value: string fits no branch of ['null', 'double']"]
    assert readable({"type": "record", "name": "R", "fields": [{"name": "n", "type": "double"}]},
                    {"type": "record", "name": "R", "fields": [{"name": "n", "type": "int"}]}) == []  # int promotes


@pytest.mark.parametrize("schema, reason", [
    (NO_VISITOR, "the current Interaction cannot read records written with it: visitor_id"),
    (VALUE_AS_TEXT, "value: string fits no branch"),
    ({"type": "record", "name": "Basket", "fields": []}, "Basket is not a schema of the contract"),
    ({"type": "record", "name": "Interaction", "fields": [{"name": "x", "type": "nope"}]}, "not a valid Avro schema"),
])
def test_an_incompatible_or_unknown_schema_is_refused(tmp_path: Path, schema, reason):
    path = tmp_path / "writer.avsc"
    path.write_text(json.dumps(schema))
    with pytest.raises(RegistrationError) as refused:
        load_writer(STORE, path)
    assert reason in str(refused.value)


PROFILE = json.loads((REPO_ROOT / "schemas" / "CustomerProfile.avsc").read_text())
# a CRM connector built before `timezone` and `attributes`, and one that adds a field of its own
PROFILE_OLDER = {**PROFILE, "fields": [f for f in PROFILE["fields"] if f["name"] not in ("timezone", "attributes")]}
PROFILE_NEWER = {**PROFILE, "fields": PROFILE["fields"] + [{"name": "loyalty_tier", "type": "string", "default": ""}]}
CRM_ROW = {"customer_id": "C1", "updated_ts": 1_700_000_000_000, "display_name": None, "segment": "gold", "clv": 10.0,
           "preferred_channel": None, "marketing_consent": True, "opted_out": False, "channels_opted_out": []}


@pytest.mark.parametrize("writer, record, expected", [
    (PROFILE_OLDER, CRM_ROW, {**CRM_ROW, "timezone": "UTC", "attributes": {}}),
    (PROFILE_NEWER, {**CRM_ROW, "timezone": "Europe/Paris", "attributes": {}, "loyalty_tier": "2"},
     {**CRM_ROW, "timezone": "Europe/Paris", "attributes": {}}),
])
def test_profiles_from_an_older_or_newer_crm_connector_are_read_once_registered(writer, record, expected):
    fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parse_schema(writer)), "CRC-64-AVRO"))
    codec = SingleObjectCodec(SchemaStore(REPO_ROOT / "schemas"),
                              lookup=lambda f: ("CustomerProfile", writer) if f == fp else None)
    assert codec.decode("engage.profiles", "CustomerProfile", written_with(writer, record)) == expected
