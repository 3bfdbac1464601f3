"""The four stages end to end on a real broker, driven from outside with confluent-kafka."""
from __future__ import annotations

import time
import uuid

import pytest

from streams.decision.policy import in_control_group, in_global_holdout
from tests.support.stage import SHIPPED_ACTIONS

pytestmark = pytest.mark.integration
POLICY = SHIPPED_ACTIONS.policy  # rules/actions.yaml, which the workers load


def customer_outside_control(action_id: str) -> str:
    """A new customer id that is neither in the action's control group nor in the global hold-out."""
    while True:
        cid = f"C-{uuid.uuid4().hex[:10]}"
        if not in_control_group(cid, action_id, POLICY.control_share) and not in_global_holdout(cid, POLICY.holdout_share):
            return cid


def customer_in_control(action_id: str) -> str:
    """A new customer id held out of the action (its control group), not of everything."""
    while True:
        cid = f"C-{uuid.uuid4().hex[:10]}"
        if in_control_group(cid, action_id, POLICY.control_share) and not in_global_holdout(cid, POLICY.holdout_share):
            return cid


def now_ms() -> int:
    return int(time.time() * 1000)


def test_known_customer_searching_to_cancel_gets_a_delivery_with_the_reason(pipeline, produce, read):
    # Given a high-value customer whose profile the CRM has published
    cid = customer_outside_control("retention-callback")
    produce.profile(cid, clv=2600.0, display_name="Ada")
    deliveries = read("engage.delivery", "Delivery")
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    t = now_ms()
    # When they log in and search for how to cancel
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="login", ts=t, customer_id=cid, path="/account/login")
    produce.event(event_id=f"{visitor}-2", visitor_id=visitor, type_="search", ts=t + 1000, customer_id=cid,
                  path="/help/search", query="How do I cancel my contract?")
    # Then a voice callback is delivered for them, with the reason and context for the agent
    found = deliveries.wait_for(lambda d: d["customer_id"] == cid)
    assert len(found) == 1, "expected one delivery"
    d, meta = found[0]
    assert d["channel"] == "voice_callback" and meta["headers"]["channel"] == b"voice_callback"
    assert meta["key"] == cid.encode()
    assert d["action_id"] == "retention-callback" and d["skill"] == "retention"
    assert "cancel" in d["reason"].lower()
    assert d["context"]["evidence"] == "search 'How do I cancel my contract?'"
    assert d["context"]["clv"] == "2600.00" and d["context"]["segment"] == "gold"
    assert d["message"].startswith("Hi Ada,")
    assert d["expires_at"] - d["signal_ts"] == 15 * 60_000


def test_unknown_visitor_gets_a_decision_but_no_crm_data(pipeline, produce, read):
    # Given an anonymous visitor
    decisions = read("engage.decisions", "Decision")
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    # When they search to cancel
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=now_ms(), query="cancel subscription")
    # Then a decision is made for the visitor, keyed by visitor, without customer data
    found = decisions.wait_for(lambda d: d["visitor_id"] == visitor)
    assert len(found) == 1
    d, meta = found[0]
    assert meta["key"] == visitor.encode()
    assert d["known"] is False and d["customer_id"] is None
    assert "clv" not in d["context"] and "segment" not in d["context"]
    assert d["signal"] == "cancel_intent" and d["rules_fired"] == ["cancel-intent"]
    assert d["reason"]


def test_garbage_and_wrong_schema_are_dead_lettered_and_the_next_event_still_flows(pipeline, produce, read):
    dead = read("engage.deadletter", "DeadLetter")
    decisions = read("engage.decisions", "Decision")
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    garbage = b"\x00\xffthis is not avro" + uuid.uuid4().bytes
    wrong = {"outcome_id": uuid.uuid4().hex, "key": visitor, "ts": now_ms(), "type": "shown", "delivery_id": None,
             "decision_id": None, "action_id": None, "channel": None, "visitor_id": visitor, "customer_id": None,
             "value": None, "source": "test"}
    from tests.support import wire

    # Given garbage bytes and a record of another schema on the events topic
    produce.raw("engage.events", visitor.encode(), garbage)
    produce.raw("engage.events", visitor.encode(), wire.encode("Outcome", wrong))
    # When a valid event follows for the same visitor
    produce.event(event_id=f"{visitor}-ok", visitor_id=visitor, type_="search", ts=now_ms(), query="terminate contract")
    # Then both bad records are in the dead-letter topic, whole, with a reason
    found = dead.wait_for(lambda r: r["key"] == visitor.encode(), count=2)
    assert len(found) == 2
    by_value = {r["value"]: r for r, _ in found}
    assert "not Avro single-object encoding" in by_value[garbage]["error"]
    wrong_bytes = wire.encode("Outcome", wrong)
    assert "wrong schema: record is Outcome, expected Interaction" in by_value[wrong_bytes]["error"]
    assert {r["stage"] for r, _ in found} == {"detection"}
    assert all(r["topic"] == pipeline.topic("engage.events") and r["offset"] >= 0 for r, _ in found)
    # And the valid event is still processed
    assert decisions.wait_for(lambda d: d["visitor_id"] == visitor)


def test_a_profile_a_crm_producer_put_on_another_partition_still_joins_its_customers_signals(pipeline, produce, read):
    from tests.support import wire

    # Given a customer whose profile a CRM producer with another partitioner (e.g. librdkafka's default,
    # CRC32) put on another partition than murmur2 gives their id, where the engine keeps their signals
    cid = customer_outside_control("retention-callback")
    mine = wire.murmur2_partition(cid.encode(), pipeline.settings.partitions)
    elsewhere = (mine + 1) % pipeline.settings.partitions
    rekeyed = read("engage.profiles-by-customer", "CustomerProfile")
    decisions = read("engage.decisions", "Decision")
    produce.profile(cid, partition=elsewhere, clv=1999.0)
    # When they log in and search to cancel
    visitor, t = f"V-{uuid.uuid4().hex[:8]}", now_ms()
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=t, customer_id=cid,
                  path="/help/search", query="cancel my contract")
    # Then the engine re-keyed the profile onto the murmur2 partition of the customer id
    [(profile, meta)] = rekeyed.wait_for(lambda p: p["customer_id"] == cid)
    assert meta["partition"] == mine != elsewhere and meta["key"] == cid.encode()
    # And the signal is joined with it
    [(d, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid)
    assert d["known"] is True and d["context"]["clv"] == "1999.00"


def test_invalid_profile_is_dead_lettered(pipeline, produce, read):
    dead = read("engage.deadletter", "DeadLetter")
    from tests.support import wire

    cid = f"C-{uuid.uuid4().hex[:8]}"
    bad = wire.profile(cid, now_ms(), clv=-5.0)
    produce.raw("engage.profiles", cid.encode(), wire.encode("CustomerProfile", bad))
    found = dead.wait_for(lambda r: r["key"] == cid.encode())
    assert found and found[0][0]["stage"] == "data" and "clv must not be negative" in found[0][0]["error"]


def test_daily_cap_holds(pipeline, produce, read):
    # Given a customer and the policy's cap of 2 offers a day
    cid = customer_outside_control("retention-callback")
    produce.profile(cid, clv=2600.0)
    decisions = read("engage.decisions", "Decision")
    deliveries = read("engage.delivery", "Delivery")
    t = now_ms() - 30 * 60_000
    # When they search to cancel three times, 11 minutes apart (the policy's minimum gap is 10)
    for i in range(3):
        visitor = f"V-{uuid.uuid4().hex[:8]}"  # three devices: the cap is per customer
        produce.event(event_id=f"{visitor}-{i}", visitor_id=visitor, type_="search", ts=t + i * 11 * 60_000, customer_id=cid,
                      query="cancel my account")
    # Then two offers go out and the third is suppressed by the daily cap
    found = decisions.wait_for(lambda d: d["customer_id"] == cid, count=3)
    # (which of the three is suppressed depends on the order the three devices' partitions were read)
    outcomes = sorted((d["outcome"], d["gate"] or "") for d, _ in found)
    assert outcomes == [("act", ""), ("act", ""), ("suppressed", "daily_cap")]
    deliveries.settle(3)
    assert len({d["delivery_id"] for d, _ in deliveries.records if d["customer_id"] == cid}) == 2


def test_opted_out_customer_is_suppressed(pipeline, produce, read):
    cid = customer_outside_control("retention-callback")
    produce.profile(cid, clv=2600.0, opted_out=True)
    decisions = read("engage.decisions", "Decision")
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=now_ms(), customer_id=cid,
                  query="cancel")
    found = decisions.wait_for(lambda d: d["customer_id"] == cid)
    assert found and (found[0][0]["outcome"], found[0][0]["gate"]) == ("suppressed", "opted_out")


def test_every_tables_changelog_is_created_with_the_topics_before_the_worker_joins(kafka_bootstrap, tmp_path):
    # Given a new deployment's settings; When its topics are created (`engage topics create`, or a worker starting)
    from confluent_kafka.admin import AdminClient, ConfigResource

    from streams import topics
    from tests.integration.conftest import make_pipeline

    pipe = make_pipeline(kafka_bootstrap, tmp_path, partitions=3)
    # Then each table's changelog exists already, compacted, partitioned like the streams it is updated from
    # (a changelog Faust creates as the worker starts can miss the group's first metadata)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    md = admin.list_topics(timeout=10)
    for table in topics.TABLES:
        name = topics.changelog(pipe.settings.app_id, table)
        assert len(md.topics[name].partitions) == 3, name
        config = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, name)])
        [(_, fut)] = config.items()
        assert fut.result(10)["cleanup.policy"].value == "compact", name


def test_an_undecodable_record_just_under_the_size_limit_is_dead_lettered_as_a_reference(pipeline, produce, read):
    import hashlib

    from confluent_kafka import Producer

    # Given an undecodable record just under the broker's default message limit (1,048,588 bytes), so
    # the dead-letter record, original plus metadata, could not be sent whole
    dead = read("engage.deadletter", "DeadLetter")
    decisions = read("engage.decisions", "Decision")
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    huge = b"\x00not avro" + uuid.uuid4().bytes * (1_048_300 // 16)
    raw = Producer({**pipeline.client_conf, "message.max.bytes": 2_000_000, "partitioner": "murmur2_random"})
    errors: list = []
    raw.produce(pipeline.topic("engage.events"), key=visitor.encode(), value=huge,
                on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert raw.flush(30) == 0 and not errors, f"the broker refused the test record: {errors}"
    # When a valid event follows for the same visitor
    produce.event(event_id=f"{visitor}-ok", visitor_id=visitor, type_="search", ts=now_ms(), query="terminate contract")
    # Then the large record is on the dead-letter topic as a reference: where it is, its length, hash and first bytes
    [(record, _)] = dead.wait_for(lambda r: r["key"] == visitor.encode())
    assert record["truncated"] and record["value_length"] == len(huge)
    assert record["value_sha256"] == hashlib.sha256(huge).hexdigest() and huge.startswith(record["value"])
    assert record["topic"] == pipeline.topic("engage.events") and record["offset"] >= 0
    # And the agent went on: the valid event behind it is decided
    assert decisions.wait_for(lambda d: d["visitor_id"] == visitor)
