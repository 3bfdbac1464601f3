"""What is kept of a record no stage can use: whole when it fits, else a reference."""
from __future__ import annotations

import hashlib

from streams.deadletter import MAX_KEPT_BYTES, PREFIX_BYTES, dead_letter


def test_a_record_that_fits_is_kept_whole_with_its_length_and_hash():
    record = dead_letter("detection", "engage.events", 3, 42, b"v1", b"\x00garbage", ValueError("not Avro"))
    assert (record["key"], record["value"], record["truncated"]) == (b"v1", b"\x00garbage", False)
    assert record["value_length"] == 8 and record["value_sha256"] == hashlib.sha256(b"\x00garbage").hexdigest()
    assert record["error"] == "ValueError: not Avro"


def test_a_record_too_large_to_keep_whole_is_kept_as_a_reference():
    # Given an original that leaves no room for the dead-letter's own fields
    value = bytes(range(256)) * (MAX_KEPT_BYTES // 256 + 1)
    record = dead_letter("detection", "engage.events", 0, 7, b"v1", value, "not Avro")
    # Then the reference, the length, the hash and the first bytes are kept
    assert record["truncated"] and record["value"] == value[:PREFIX_BYTES] and record["key"] == b"v1"
    assert (record["topic"], record["partition"], record["offset"]) == ("engage.events", 0, 7)
    assert record["value_length"] == len(value) and record["value_sha256"] == hashlib.sha256(value).hexdigest()
