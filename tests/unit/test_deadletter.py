"""What is kept of a record no stage can use: whole when it fits, else a reference; a failed send never loses it."""
from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

from streams import topics
from streams.deadletter import MAX_KEPT_BYTES, PREFIX_BYTES, dead_letter
from tests.support import wire
from tests.support.stage import Stage, async_test


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


@async_test
async def test_a_dead_letter_the_broker_refuses_is_sent_again_as_a_reference_and_never_raises(tmp_path):
    # Given a dead-letter topic whose first sends fail (as a record larger than the topic allows does)
    st = Stage(tmp_path)
    topic = st.engine.topic[topics.DEADLETTER.name]
    capture, calls = topic.send.side_effect, []

    async def refuse_twice(**kw):
        calls.append(kw)
        if len(calls) <= 2:
            raise RuntimeError("MessageSizeTooLargeError")
        return await capture(**kw)

    topic.send.side_effect = refuse_twice
    message = SimpleNamespace(topic="engage.events", partition=1, offset=9, key=b"v1", value=b"x" * 5000)
    # When a stage dead-letters a record, then it returns (no exception into the agent)
    await st.engine.dead_letter("detection", message, ValueError("not Avro"))
    # And the record that reached the topic is the reference form, after the failed attempts
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    assert len(calls) == 3 and dead["truncated"] and dead["value"] == b"x" * PREFIX_BYTES
    assert dead["value_length"] == 5000 and dead["offset"] == 9


@async_test
async def test_a_batch_send_the_broker_fails_for_one_record_sends_that_record_again_and_returns(tmp_path):
    # Given an events topic whose broker fails the first delivery of one record (the future fails, as a
    # leader change does), while the other records of the batch go through
    st = Stage(tmp_path)
    topic = st.engine.topic[topics.EVENTS.name]
    capture, calls = topic.send.side_effect, []

    async def fail_first_v2(**kw):
        calls.append(kw["key"])
        if kw["key"] == b"v2" and calls.count(b"v2") == 1:
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(RuntimeError("NotLeaderForPartitionError"))
            return failed
        return await capture(**kw)

    topic.send.side_effect = fail_first_v2
    records = [(topics.EVENTS, v, wire.interaction(f"e{i}", v, "page_view", 1_700_000_000_000)) for i, v in
               enumerate(["v1", "v2", "v3"])]
    # When a stage sends them as one batch, then it returns once every record was taken
    await st.engine.send_all(records)
    # And the failed record was sent again, alone, after the batch
    assert calls == [b"v1", b"v2", b"v3", b"v2"]
    assert [key for key, _, _ in st.out(topics.EVENTS)] == [b"v1", b"v3", b"v2"]
