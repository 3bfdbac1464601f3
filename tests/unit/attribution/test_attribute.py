"""Attribution of what happened after a decision: the window, the arms, the goals, and replays that count once."""
from __future__ import annotations

from streams.attribution.attribute import MAX_OPEN, Attributor, arm_of, new_state

WINDOW = 30 * 60_000
T0 = 1_700_000_000_000
GOALS = {"checkout-assist": "purchase", "retention-chat": "retain", "help-finder": "resolve"}


def decision(did="d1", ts=T0, outcome="act", gate=None, action="checkout-assist", key="C1"):
    return {"decision_id": did, "key": key, "visitor_id": "V1", "customer_id": key, "ts": ts, "signal": "cart_at_risk",
            "outcome": outcome, "gate": gate, "action_id": action, "channel": "chat", "skill": "sales", "score": 3.5,
            "ruleset_version": "r/a"}


def event(eid, kind="purchase", ts=T0 + 60_000, value=120.0):
    return {"event_id": eid, "ts": ts, "visitor_id": "V1", "customer_id": "C1", "channel": "web", "type": kind,
            "path": None, "query": None, "value": value, "attributes": {}}


def outcome(kind, did="d1", ts=T0 + 5_000, value=None):
    return {"outcome_id": f"{did}-{kind}", "key": "C1", "ts": ts, "type": kind, "delivery_id": "x", "decision_id": did,
            "action_id": "checkout-assist", "channel": "chat", "visitor_id": "V1", "customer_id": "C1", "value": value,
            "source": "test"}


def attributor():
    return Attributor(window_ms=WINDOW, goal_of=lambda a: GOALS.get(a, "purchase"))


def test_a_treated_customer_who_buys_within_the_window_converts_with_the_revenue():
    # Given a decision to act for a customer, accepted and handled by an agent for 240 s
    a, state = attributor(), new_state()
    [first] = a.on_decision(state, decision())
    a.on_outcome(state, outcome("accepted"))
    a.on_outcome(state, outcome("handled", ts=T0 + 250_000, value=240.0))
    # When the customer buys within the window
    [rec] = a.on_conversion(state, event("e1"))
    # Then the decision's record converts, with the revenue, the agent time and a higher revision each time
    assert first["revision"] == 0 and not first["converted"]
    assert rec["converted"] and rec["purchases"] == 1 and rec["revenue"] == 120.0
    assert rec["accepted"] and rec["agent_seconds"] == 240.0 and rec["revision"] == 3 and rec["arm"] == "treated"


def test_things_outside_the_window_do_not_count():
    # Given a decision
    a, state = attributor(), new_state()
    a.on_decision(state, decision())
    # When the customer buys before it and after its window
    assert a.on_conversion(state, event("before", ts=T0 - 1)) == []
    assert a.on_conversion(state, event("after", ts=T0 + WINDOW)) == []
    # Then nothing is attributed
    assert state["open"]["d1"]["purchases"] == 0


def test_a_replayed_event_outcome_or_decision_counts_once():
    # Given a decision with a purchase and an acceptance attributed
    a, state = attributor(), new_state()
    a.on_decision(state, decision())
    a.on_conversion(state, event("e1"))
    a.on_outcome(state, outcome("handled", value=100.0))
    # When all three are delivered again (at-least-once after a crash)
    again = a.on_decision(state, decision()) + a.on_conversion(state, event("e1")) + a.on_outcome(state, outcome("handled", value=100.0))
    # Then nothing changes and nothing is published
    assert again == []
    rec = state["open"]["d1"]
    assert rec["purchases"] == 1 and rec["revenue"] == 120.0 and rec["agent_seconds"] == 100.0 and rec["revision"] == 2


def test_a_purchase_that_arrives_before_its_decision_is_attributed_when_the_decision_comes():
    # Given a purchase seen first (the decision comes three stages later) and an outcome too
    a, state = attributor(), new_state()
    assert a.on_conversion(state, event("e1", ts=T0 + 2_000)) == []
    assert a.on_outcome(state, outcome("shown")) == []
    # When the decision arrives
    [rec] = a.on_decision(state, decision())
    # Then both are attributed to it, in one record
    assert rec["purchases"] == 1 and rec["shown"] and rec["revision"] == 2


def test_a_control_customer_who_converts_counts_in_control_with_the_action_it_would_have_had():
    # Given a decision held out in the action's control group, and one in the global hold-out
    a, state = attributor(), new_state()
    a.on_decision(state, decision("d1", outcome="control", gate="control_group"))
    a.on_decision(state, decision("d2", outcome="control", gate="global_holdout", ts=T0 + 1))
    # When the customer buys
    recs = a.on_conversion(state, event("e1"))
    # Then both convert, in their arms, each naming the action it would have taken
    assert {(r["decision_id"], r["arm"], r["action_id"], r["converted"]) for r in recs} == {
        ("d1", "control", "checkout-assist", True), ("d2", "holdout", "checkout-assist", True)}


def test_goals_retain_and_resolve_convert_unless_a_cancel_or_a_call_comes():
    # Given a retention decision and a help decision
    a, state = attributor(), new_state()
    [retain] = a.on_decision(state, decision("d1", action="retention-chat"))
    [resolve] = a.on_decision(state, decision("d2", action="help-finder", ts=T0 + 1))
    # Then with nothing seen yet they count as converted (the customer stayed, nobody called) ...
    assert retain["converted"] and resolve["converted"]
    # ... and a cancellation and a call within the window undo that, with what the customer was worth
    [r1, r2] = a.on_conversion(state, event("c1", kind="cancel", value=900.0))
    assert not r1["converted"] and r1["cancelled"] and r1["lost_value"] == 900.0
    [r3, r4] = a.on_conversion(state, event("k1", kind="call", value=None))
    assert not state["open"]["d2"]["converted"] and state["open"]["d2"]["called"]


def test_arms():
    assert arm_of(decision(outcome="act")) == "treated"
    assert arm_of(decision(outcome="control", gate="control_group")) == "control"
    assert arm_of(decision(outcome="control", gate="global_holdout")) == "holdout"
    assert arm_of(decision(outcome="no_action", gate="no_positive_uplift")) == "none"
    assert arm_of(decision(outcome="suppressed", gate="daily_cap")) == "none"


def test_state_per_key_stays_bounded():
    # Given a key with far more decisions than are kept open, and many events
    a, state = attributor(), new_state()
    for i in range(MAX_OPEN * 3):
        a.on_decision(state, decision(f"d{i}", ts=T0 + i * 1000))
        a.on_conversion(state, event(f"e{i}", ts=T0 + i * 1000 + 1))
    # Then the open decisions, the early things and the dropped ids are bounded
    assert len(state["open"]) <= MAX_OPEN and len(state["early"]) <= 32 and len(state["closed"]) <= 64
    # And a dropped decision replayed is not opened again
    assert a.on_decision(state, decision("d0", ts=T0)) == []


def test_old_decisions_stop_being_attributable_a_window_after_theirs_ended():
    a, state = attributor(), new_state()
    a.on_decision(state, decision("d1"))
    a.on_conversion(state, event("late", ts=T0 + 2 * WINDOW + 1))
    assert "d1" not in state["open"] and "d1" in state["closed"]


def test_a_decision_replayed_long_after_it_was_dropped_is_not_reopened():
    # Given a decision, and the key's later activity that dropped it and pushed its id out of "closed"
    a, state = attributor(), new_state()
    a.on_decision(state, decision("d1"))
    a.on_conversion(state, event("c", kind="cancel", ts=T0 + 60_000))
    a.on_conversion(state, event("later", ts=T0 + 3 * WINDOW))
    state["closed"].clear()
    # When the old decision is delivered again (a replay from far back)
    # Then it is not opened again: a fresh revision 0 would undo the cancellation on the compacted topic
    assert a.on_decision(state, decision("d1")) == []
    assert "d1" not in state["open"]


def test_a_decision_dropped_before_its_window_ended_is_published_incomplete():
    # Given one more open retention decision than a key may hold, all within their windows
    a, state = attributor(), new_state()
    out = []
    for i in range(MAX_OPEN + 1):
        out += a.on_decision(state, decision(f"d{i}", action="retention-chat", ts=T0 + i))
    # Then the oldest is published once more, marked incomplete: nobody looked for its cancellation to the end
    dropped = [r for r in out if r["decision_id"] == "d0"]
    assert [r["incomplete"] for r in dropped] == [False, True] and dropped[-1]["revision"] == 1
    assert "d0" not in state["open"] and len(state["open"]) == MAX_OPEN


def test_early_things_keep_only_what_attribution_needs():
    a, state = attributor(), new_state()
    a.on_conversion(state, {**event("e1"), "attributes": {"big": "x" * 1000}})
    [(_, _, _, kept)] = state["early"]
    assert kept == {"event_id": "e1", "ts": T0 + 60_000, "type": "purchase", "value": 120.0}
