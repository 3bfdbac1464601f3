"""The delivery stage's agent on Faust's test context: a decision to act becomes a delivery on its channel, or nothing."""
from __future__ import annotations

import asyncio

import pytest

from streams import topics
from streams.decision.policy import decision_id
from streams.delivery import agent as delivery_agent
from streams.delivery.render import delivery_id
from tests.support import wire
from tests.support.stage import Stage, async_test, decision


@async_test
async def test_a_decision_to_act_becomes_a_delivery_with_a_channel_header(tmp_path):
    # Given the delivery stage
    st = Stage(tmp_path)
    deliver = delivery_agent.register(st.engine)
    async with deliver.test_context() as decisions:
        # When a decision to call C1 back by voice arrives
        d = decision("sig-1")
        await decisions.put(key=b"C1", value=wire.encode("Decision", d))
        [(key, out, headers)] = await st.wait_out(topics.DELIVERY, 1)
    # Then one Delivery, keyed like the decision, says where, what and why, and the header names the channel
    assert key == b"C1"
    assert headers == {"channel": b"voice_callback"}
    assert out["channel"] == "voice_callback" and out["action_id"] == "retention-callback"
    assert out["delivery_id"] == delivery_id(d["decision_id"]) and out["decision_id"] == d["decision_id"]
    assert out["message"] == "Hi Sara, before you go: one of our specialists can call you back."
    assert out["reason"] == d["reason"]
    assert out["expires_at"] == d["ts"] + d["ttl_ms"]
    assert "message_template" not in out["context"] and out["context"]["action"] == "retention-callback"
    assert out == wire.decode("Delivery", wire.encode("Delivery", out))  # readable by an independent decoder


@pytest.mark.parametrize("outcome, gate", [("no_action", "no_positive_uplift"), ("suppressed", "daily_cap"),
                                           ("control", "control_group")])
@async_test
async def test_a_decision_not_to_act_produces_no_delivery(tmp_path, outcome, gate):
    # Given the delivery stage
    st = Stage(tmp_path)
    deliver = delivery_agent.register(st.engine)
    async with deliver.test_context() as decisions:
        # When a decision not to act arrives (it still names the action it would have taken), then one to act
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-no", outcome, gate=gate)))
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-yes")))
        out = await st.wait_out(topics.DELIVERY, 1)
        await asyncio.sleep(0.01)
    # Then only the decision to act was delivered, and nothing was dead-lettered
    assert [d["decision_id"] for _, d, _ in out] == [decision_id("sig-yes")]
    assert [name for name, *_ in st.sent] == ["engage.delivery"]


@async_test
async def test_a_decision_to_act_without_a_channel_is_dead_lettered_and_the_next_is_delivered(tmp_path):
    # Given the delivery stage
    st = Stage(tmp_path)
    deliver = delivery_agent.register(st.engine)
    async with deliver.test_context() as decisions:
        # When a decision to act names no channel (schema-valid, but undeliverable), then a good one
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-bad", channel=None)))
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-good")))
        out = await st.wait_out(topics.DELIVERY, 1)
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then the first is dead-lettered with the reason and the agent went on with the second
    assert "needs channel" in dead["error"] and dead["stage"] == "delivery"
    assert [d["decision_id"] for _, d, _ in out] == [decision_id("sig-good")]
