"""The decision stage on its runner: decisions, caps, replays, bad input and faults."""
from __future__ import annotations

import pytest

from streams import topics
from streams.decision import stage as decision_stage
from streams.decision.policy import decision_id, in_control_group
from tests.support.runners import DecisionStage
from tests.support.stage import ACTIONS, T0, enriched, profile, signal

ENRICHED = topics.ENRICHED.name  # the physical name too: no prefix in the test settings


def test_a_matching_signal_yields_a_decision_to_act(tmp_path):
    # Given C1 (platinum, CLV 3121.13, consent) who is not in the control group of the best action
    assert not in_control_group("C1", "retention-callback", ACTIONS.policy.control_share)
    st = DecisionStage(tmp_path)
    # When C1's cancel_intent arrives enriched with the profile
    sig = signal("sig-1")
    st.put(ENRICHED, b"C1", st.encode(topics.ENRICHED, enriched(sig, profile())))
    [(key, d, where)] = st.decided()
    # Then the retention call back by voice wins: (0.35 - 0.10) x 0.3 x 3121.13 - 6.0; it needs an agent,
    # so it goes to the pacer of the retention agents
    assert key == b"retention" and where == topics.PACING.name and d["key"] == "C1"
    assert d["outcome"] == "act" and d["gate"] is None
    assert d["action_id"] == "retention-callback" and d["channel"] == "voice_callback" and d["skill"] == "retention"
    assert d["score"] == pytest.approx(round(0.25 * 0.3 * 3121.13 - 6.0, 4))
    assert d["scores"]["retention-chat"] == pytest.approx(round(0.12 * 0.2 * 3121.13 - 2.0, 4))
    assert "save-offer-web" not in d["scores"]  # for anonymous visitors only
    assert d["decision_id"] == decision_id("sig-1") and d["signal_id"] == "sig-1" and d["ttl_ms"] == 900_000
    assert d["reason"].startswith("Searched for how to cancel or leave: Offer a call back from the retention team "
                                  "by voice_callback")
    assert d["context"]["customer_name"] == "Sara" and d["context"]["message_template"].startswith("Hi {name}")
    # And the contact ledger counts the offer
    assert st.ledger("C1")["offers_today"] == 1


def test_beyond_the_daily_cap_the_customer_gets_no_offer(tmp_path):
    # Given the policy's cap of 2 offers a day, and C1 outside the control group
    cap = ACTIONS.policy.max_offers_per_day
    assert cap == 2 and not in_control_group("C1", "retention-callback", ACTIONS.policy.control_share)
    st = DecisionStage(tmp_path)
    # When C1 shows cancel intent three times in one day
    for i in range(cap + 1):
        sig = signal(f"sig-{i}", ts=T0 + i * 60_000)
        st.put(ENRICHED, b"C1", st.encode(topics.ENRICHED, enriched(sig, profile())))
    out = st.decided()
    # Then the first two are offers and the third is held back by the cap, with the cap's reason
    assert [d["outcome"] for _, d, _ in out] == ["act", "act", "suppressed"]
    third = out[-1][1]
    assert third["gate"] == "daily_cap"
    assert third["reason"] == "Already 2 offers today (cap 2)."
    assert third["signal_id"] == "sig-2"


def test_a_redelivered_signal_gets_the_same_decision_and_is_not_counted_twice(tmp_path):
    # Given C1 already got an offer for sig-1
    st = DecisionStage(tmp_path)
    value = st.encode(topics.ENRICHED, enriched(signal("sig-1"), profile()))
    st.put(ENRICHED, b"C1", value=value)
    st.decided()
    # When the very same signal is delivered again (a replay after a crash)
    st.put(ENRICHED, b"C1", value=value)
    out = st.decided()
    # Then the same decision is sent again and the cap still counts one offer
    assert out[0][1] == out[1][1]
    assert st.ledger("C1")["offers_today"] == 1


def test_garbage_is_dead_lettered_and_the_next_record_still_gets_a_decision(tmp_path):
    # Given the decision stage
    st = DecisionStage(tmp_path)
    # When garbage bytes arrive, followed by a valid enriched signal of an anonymous visitor
    garbage = st.put(ENRICHED, b"v7", value=b"not avro at all")
    sig = signal("sig-anon", visitor_id="v7", customer_id=None)
    st.put(ENRICHED, b"v7", st.encode(topics.ENRICHED, enriched(sig, None)))
    [(key, d, _)] = st.out(topics.DECISIONS)
    [(dkey, dead, _)] = st.out(topics.DEADLETTER)
    # Then the garbage is kept, whole, on the dead-letter topic with the reason
    assert dkey == b"v7" and dead["key"] == b"v7" and dead["value"] == b"not avro at all"
    assert dead["stage"] == "decision" and dead["topic"] == "engage.enriched"
    assert dead["offset"] == garbage
    assert dead["error"].startswith("DecodeError: not Avro single-object encoding: expected marker C3 01")
    # And the valid record still gets its Decision: the web message for anonymous visitors
    assert key == b"v7" and d["signal_id"] == "sig-anon" and d["known"] is False
    assert d["action_id"] == "save-offer-web" and d["channel"] == "web_message"


def test_a_signal_no_action_answers_gets_a_no_action_decision(tmp_path):
    # Given the decision stage; When a signal no action answers arrives
    st = DecisionStage(tmp_path)
    sig = signal("sig-x", name="price_check")
    st.put(ENRICHED, b"C1", st.encode(topics.ENRICHED, enriched(sig, profile())))
    [(_, d, _)] = st.out(topics.DECISIONS)
    # Then every signal still gets a Decision, saying why nothing is done
    assert d["outcome"] == "no_action" and d["gate"] == "no_matching_action"
    assert d["reason"] == "No action answers the signal price_check."
    assert d["action_id"] is None and d["channel"] is None


def test_a_fault_on_one_record_dead_letters_it_and_the_stage_goes_on(tmp_path, monkeypatch, caplog):
    # Given the decision stage with a fault of ours that only one signal triggers
    real_decide = decision_stage.decide

    def faulty(enriched_signal, *args):
        if enriched_signal["signal"]["signal_id"] == "sig-boom":
            raise KeyError("secret-visitor-detail")
        return real_decide(enriched_signal, *args)

    monkeypatch.setattr(decision_stage, "decide", faulty)
    st = DecisionStage(tmp_path)
    # When that signal arrives, then another one
    boom = signal("sig-boom", visitor_id="v8", customer_id=None)
    sent = st.put(ENRICHED, b"v8", st.encode(topics.ENRICHED, enriched(boom, None)))
    ok = signal("sig-ok", visitor_id="v8", customer_id=None)
    st.put(ENRICHED, b"v8", st.encode(topics.ENRICHED, enriched(ok, None)))
    [(_, d, _)] = st.out(topics.DECISIONS)
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then the faulty record is kept whole on the dead-letter topic, named as a fault, not lost to a
    # restarted agent; the next signal is decided; and the log names the fault without its text
    assert dead["stage"] == "decision" and dead["offset"] == sent
    assert dead["value"] == st.encode(topics.ENRICHED, enriched(boom, None))
    assert dead["error"] == "fault in decision: KeyError: 'secret-visitor-detail'"
    assert d["signal_id"] == "sig-ok"
    faults = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fault at decision")]
    assert faults and "KeyError at" in faults[0]
    assert not [r for r in caplog.records if "secret-visitor-detail" in r.getMessage()]


def test_a_customer_in_the_global_holdout_gets_no_offer_but_records_the_action_it_would_have_had(tmp_path):
    # Given the shipped policy's global hold-out of 5%, which holds out C1 (a stable hash of the key)
    from streams.decision.policy import in_global_holdout
    from tests.support.stage import SHIPPED_ACTIONS

    assert SHIPPED_ACTIONS.policy.holdout_share == 0.05 and in_global_holdout("C1", 0.05)
    st = DecisionStage(tmp_path, actions=SHIPPED_ACTIONS)
    # When C1's cancel intent arrives
    st.put(ENRICHED, b"C1", st.encode(topics.ENRICHED, enriched(signal("sig-1"), profile())))
    [(_, d, _)] = st.out(topics.DECISIONS)
    # Then it is a control decision of the hold-out, naming the action and channel it would have had,
    # (a chat, not a call back: 22:13 in London is in the shipped quiet hours), and it counts against the
    # daily cap as that offer would have (so caps thin both arms alike)
    assert d["outcome"] == "control" and d["gate"] == "global_holdout"
    assert d["action_id"] == "retention-callback" and d["channel"] == "chat"
    assert st.ledger("C1")["offers_today"] == 1


def test_purchases_and_declines_reach_the_contact_ledger_and_keyless_ones_are_dead_lettered(tmp_path):
    from tests.support import wire

    # Given the decision stage with the shipped policy's suppressions
    st = DecisionStage(tmp_path)
    # When C1 buys, declines the retention call back, and a purchase without a key arrives
    buy = wire.interaction(event_id="e-buy", visitor_id="v1", type_="purchase", ts=T0 - 3_600_000, customer_id="C1",
                           value=80.0)
    st.put(topics.CONVERSIONS.name, b"C1", wire.encode("Interaction", buy))
    declined = {"outcome_id": "o1", "key": "C1", "ts": T0 - 60_000, "type": "declined", "delivery_id": None,
                "decision_id": "d0", "action_id": "retention-callback", "channel": "voice_callback",
                "visitor_id": "v1", "customer_id": "C1", "value": None, "source": "test"}
    st.put(topics.OUTCOMES.name, b"C1", wire.encode("Outcome", declined))
    st.put(topics.CONVERSIONS.name, None, wire.encode("Interaction", buy))
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # And C1 then looks for how to cancel
    st.put(ENRICHED, b"C1", st.encode(topics.ENRICHED, enriched(signal("sig-1"), profile())))
    [(_, d, _)] = st.decided()
    # Then the ledger holds both, the keyless record is dead-lettered with the reason,
    # and the declined call back gives way to the retention chat
    ledger = st.ledger("C1")
    assert ledger["purchase_ts"] == T0 - 3_600_000 and ledger["declined"] == {"retention-callback": T0 - 60_000}
    assert "needs a key" in dead["error"] and dead["stage"] == "decision"
    assert d["outcome"] == "act" and d["action_id"] == "retention-chat"
