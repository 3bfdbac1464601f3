"""Wire format: Avro single-object encoding, checked against the spec's reference fingerprint."""
import json

import pytest
from fastavro.schema import parse_schema

from streams.codec import DecodeError, EncodeError, RegistryCodec, SchemaStore, SingleObjectCodec
from streams.settings import REPO_ROOT
from tests.support import wire

STORE = SchemaStore(REPO_ROOT / "schemas")
CODEC = SingleObjectCodec(STORE)
EVENT = wire.interaction(event_id="e1", visitor_id="v1", type_="search", ts=1_700_000_000_000, query="cancel")


def test_every_brief_topic_has_a_schema():
    assert set(STORE.names()) >= {"Interaction", "CustomerProfile", "AgentAvailability", "RuleSet", "Signal",
                                  "EnrichedSignal", "Decision", "Delivery", "Outcome", "DeadLetter"}


def test_fingerprint_matches_the_spec_reference_algorithm_and_java_canonical_form():
    # Given the Interaction schema, whose ts is a long with a logical type
    canonical = STORE.canonical_by_name["Interaction"]
    # Then the canonical form writes it as plain "long", as Java's reference implementation does
    assert '"name":"ts","type":"long"' in canonical and "logicalType" not in canonical
    assert STORE.fingerprint_by_name["Interaction"] == wire.crc64_avro(canonical.encode()).to_bytes(8, "little")


def test_encoding_agrees_byte_for_byte_with_an_independent_encoder():
    assert CODEC.encode("t", "Interaction", EVENT) == wire.encode("Interaction", EVENT)
    assert CODEC.decode("t", "Interaction", wire.encode("Interaction", EVENT)) == EVENT


def test_nested_schema_is_self_contained_with_each_named_type_written_once():
    canonical = json.loads(STORE.canonical_by_name["EnrichedSignal"])
    text = json.dumps(canonical)
    assert text.count('"name": "engage.v1.Signal"') == 1 and text.count('"name": "engage.v1.CustomerProfile"') == 1
    parse_schema(canonical)  # valid on its own


@pytest.mark.parametrize("data, reason", [
    (b"", "not Avro single-object encoding"),
    (b"garbage bytes here", "not Avro single-object encoding"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown writer schema fingerprint"),
    (None, "tombstone"),
])
def test_undecodable_bytes_give_a_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        CODEC.decode("t", "Interaction", data)


def test_record_of_another_schema_is_refused_by_name():
    outcome = CODEC.encode("t", "Outcome", {"outcome_id": "o", "key": "k", "ts": 1, "type": "shown"})
    with pytest.raises(DecodeError, match="wrong schema: record is Outcome, expected Interaction"):
        CODEC.decode("t", "Interaction", outcome)


def test_truncated_and_padded_bodies_are_refused():
    good = CODEC.encode("t", "Interaction", EVENT)
    with pytest.raises(DecodeError, match="corrupt Interaction body"):
        CODEC.decode("t", "Interaction", good[:-5])
    with pytest.raises(DecodeError, match="trailing bytes"):
        CODEC.decode("t", "Interaction", good + b"\x00")


def test_record_missing_a_required_field_cannot_be_encoded():
    with pytest.raises(EncodeError, match="ts"):
        CODEC.encode("t", "Interaction", {"event_id": "e"})


def test_schema_registry_framing_round_trips_with_the_mock_registry():
    from confluent_kafka.schema_registry import SchemaRegistryClient

    client = SchemaRegistryClient.new_client({"url": "mock://engage-test"})
    codec = RegistryCodec(STORE, "mock://engage-test", client=client)
    data = codec.encode("engage.events", "Interaction", EVENT)
    assert data[0] == 0 and len(data) > 5  # Confluent framing: magic 0, schema id, body
    assert codec.decode("engage.events", "Interaction", data) == EVENT
    with pytest.raises(DecodeError, match="not Schema Registry framing"):
        codec.decode("engage.events", "Interaction", wire.encode("Interaction", EVENT))
