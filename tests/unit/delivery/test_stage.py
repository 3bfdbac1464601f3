"""The delivery stage on the after-decision runner: a decision to act becomes a delivery on its channel, or nothing."""
from __future__ import annotations

import pytest

from streams import topics
from streams.decision.policy import decision_id
from streams.delivery.render import delivery_id
from tests.support import wire
from tests.support.runners import after_decision, feed, sent
from tests.support.stage import decision


def test_a_decision_to_act_becomes_a_delivery_with_a_channel_header(tmp_path):
    # Given the delivery stage
    runner = after_decision(tmp_path)
    # When a decision to call C1 back by voice arrives
    d = decision("sig-1")
    feed(runner, [("engage.decisions", b"C1", wire.encode("Decision", d))])
    [(key, out, headers)] = sent(runner, topics.DELIVERY)
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
    # And the decision's offset is committed only after the delivery was acked
    kinds = [what if what == "commit" else topic for what, topic in runner.log]
    assert kinds.index("engage.delivery") < kinds.index("commit")
    assert runner.consumer.commits == [{("engage.decisions", 0): 1}]


@pytest.mark.parametrize("outcome, gate", [("no_action", "no_positive_uplift"), ("suppressed", "daily_cap"),
                                           ("control", "control_group")])
def test_a_decision_not_to_act_produces_no_delivery(tmp_path, outcome, gate):
    # Given the delivery stage
    runner = after_decision(tmp_path)
    # When a decision not to act arrives (it still names the action it would have taken), then one to act
    feed(runner, [("engage.decisions", b"C1", wire.encode("Decision", decision("sig-no", outcome, gate=gate))),
                  ("engage.decisions", b"C1", wire.encode("Decision", decision("sig-yes")))])
    # Then only the decision to act was delivered, and nothing was dead-lettered
    assert [d["decision_id"] for _, d, _ in sent(runner, topics.DELIVERY)] == [decision_id("sig-yes")]
    assert sent(runner, topics.DEADLETTER) == []


def test_a_decision_to_act_without_a_channel_is_dead_lettered_and_the_next_is_delivered(tmp_path):
    # Given the delivery stage
    runner = after_decision(tmp_path)
    # When a decision to act names no channel (schema-valid, but undeliverable), then a good one
    feed(runner, [("engage.decisions", b"C1", wire.encode("Decision", decision("sig-bad", channel=None))),
                  ("engage.decisions", b"C1", wire.encode("Decision", decision("sig-good")))])
    # Then the first is dead-lettered by delivery with the reason, and the second delivered
    [(_, dead, _)] = sent(runner, topics.DEADLETTER)
    assert "needs channel" in dead["error"] and dead["stage"] == "delivery"
    assert [d["decision_id"] for _, d, _ in sent(runner, topics.DELIVERY)] == [decision_id("sig-good")]
