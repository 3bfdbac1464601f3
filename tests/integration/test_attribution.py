"""Attribution on a real broker: what followed a decision, for treated and control customers, counted once across a crash."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.conftest import Producer_, Reader
from tests.integration.test_pipeline import customer_in_control, customer_outside_control, now_ms
from tests.support import wire

pytestmark = pytest.mark.integration


def browse_premium(produce: Producer_, cid: str, t: int) -> str:
    """A known customer looks at two products worth 500 or more: the high-value-browsing signal, at once."""
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="page_view", ts=t, customer_id=cid,
                  path="/shop/phones/x200", value=999.0)
    produce.event(event_id=f"{visitor}-2", visitor_id=visitor, type_="page_view", ts=t + 1000, customer_id=cid,
                  path="/shop/tv/bundle", value=1299.0)
    return visitor


def outcome(d: dict, kind: str, ts: int, value: float | None = None) -> dict:
    return {"outcome_id": f"{d['decision_id']}-{kind}", "key": d["key"], "ts": ts, "type": kind, "delivery_id": None,
            "decision_id": d["decision_id"], "action_id": d["action_id"], "channel": d["channel"],
            "visitor_id": d["visitor_id"], "customer_id": d["customer_id"], "value": value, "source": "test"}


def latest(reader: Reader, decision_id: str) -> dict:
    revs = [r for r, _ in reader.records if r["decision_id"] == decision_id]
    return max(revs, key=lambda r: r["revision"])


def test_a_treated_customer_who_buys_gets_an_attribution_with_the_revenue(pipeline, produce, read):
    # Given a valuable customer outside every hold-out, browsing premium products
    cid = customer_outside_control("vip-concierge")
    produce.profile(cid, clv=2600.0)
    decisions, attributions = read("engage.decisions", "Decision"), read("engage.attributions", "Attribution")
    t = now_ms()
    visitor = browse_premium(produce, cid, t)
    [(d, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid)
    assert d["outcome"] == "act" and d["action_id"] == "vip-concierge"
    # When the offer is accepted, an agent spends 5 minutes, and the customer buys
    for o in (outcome(d, "accepted", t + 3000), outcome(d, "handled", t + 303_000, value=300.0)):
        produce.raw("engage.outcomes", d["key"].encode(), wire.encode("Outcome", o))
    produce.event(event_id=f"{visitor}-buy", visitor_id=visitor, type_="purchase", ts=t + 320_000, customer_id=cid,
                  path="/checkout/done", value=1299.0)
    # Then the decision's attribution says treated, converted, with the revenue and the agent time
    attributions.wait_for(lambda a: a["decision_id"] == d["decision_id"] and a["purchases"] == 1
                          and a["agent_seconds"] == 300.0)
    a = latest(attributions, d["decision_id"])
    assert a["arm"] == "treated" and a["goal"] == "purchase" and a["converted"] and a["accepted"]
    assert a["revenue"] == 1299.0 and a["action_id"] == "vip-concierge" and a["key"] == cid
    assert a["window_end_ts"] - a["decision_ts"] == 30 * 60_000


def test_a_control_customer_who_buys_counts_in_control_with_the_action_it_would_have_had(pipeline, produce, read):
    # Given a valuable customer in the control group of the premium adviser
    cid = customer_in_control("vip-concierge")
    produce.profile(cid, clv=2600.0)
    decisions, attributions = read("engage.decisions", "Decision"), read("engage.attributions", "Attribution")
    t = now_ms()
    visitor = browse_premium(produce, cid, t)
    [(d, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid)
    assert d["outcome"] == "control" and d["gate"] == "control_group"
    # When they buy anyway, with nobody having contacted them
    produce.event(event_id=f"{visitor}-buy", visitor_id=visitor, type_="purchase", ts=t + 60_000, customer_id=cid,
                  path="/checkout/done", value=999.0)
    # Then the conversion counts in the control arm, under the action they would have had
    attributions.wait_for(lambda a: a["decision_id"] == d["decision_id"] and a["purchases"] == 1)
    a = latest(attributions, d["decision_id"])
    assert a["arm"] == "control" and a["action_id"] == "vip-concierge" and a["converted"] and a["revenue"] == 999.0
    assert not a["accepted"] and a["agent_seconds"] == 0.0


def test_a_restarted_worker_does_not_count_anything_twice(new_pipeline):
    # Given a worker, a treated customer whose purchase and agent time are attributed
    pipe = new_pipeline(partitions=2)
    first = pipe.start_worker(state_dir="state-a")
    produce = Producer_(pipe)
    cid = customer_outside_control("vip-concierge")
    produce.profile(cid, clv=2600.0)
    decisions = Reader(pipe, "engage.decisions", "Decision")
    attributions = Reader(pipe, "engage.attributions", "Attribution")
    try:
        t = now_ms()
        visitor = browse_premium(produce, cid, t)
        [(d, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid)
        handled = outcome(d, "handled", t + 200_000, value=200.0)
        produce.raw("engage.outcomes", d["key"].encode(), wire.encode("Outcome", handled))
        produce.event(event_id=f"{visitor}-buy", visitor_id=visitor, type_="purchase", ts=t + 250_000, customer_id=cid,
                      value=500.0)
        attributions.wait_for(lambda a: a["decision_id"] == d["decision_id"] and a["purchases"] == 1
                              and a["agent_seconds"] == 200.0)
        # When the worker is killed at once (what it had not committed is read again) and another one,
        # with an empty state folder, takes over from the changelogs; and the adapter, retrying, sends
        # the same outcome again, and the site the same purchase
        pipe.kill(first)
        pipe.start_worker(state_dir="state-b")
        produce.raw("engage.outcomes", d["key"].encode(), wire.encode("Outcome", handled))
        produce.event(event_id=f"{visitor}-buy", visitor_id=visitor, type_="purchase", ts=t + 250_000, customer_id=cid,
                      value=500.0)
        # and a second, new purchase comes, which must count
        produce.event(event_id=f"{visitor}-buy-2", visitor_id=visitor, type_="purchase", ts=t + 260_000, customer_id=cid,
                      value=100.0)
        attributions.wait_for(lambda a: a["decision_id"] == d["decision_id"] and a["purchases"] == 2, timeout_s=90)
        attributions.settle(3)
        # Then the purchase, the second purchase and the agent time are each counted once
        a = latest(attributions, d["decision_id"])
        assert a["purchases"] == 2 and a["revenue"] == 600.0 and a["agent_seconds"] == 200.0
        # and any revision sent twice (a replay) is the very same record
        by_revision: dict = {}
        for r, _ in attributions.records:
            if r["decision_id"] == d["decision_id"]:
                assert by_revision.setdefault(r["revision"], r) == r
    finally:
        decisions.close()
        attributions.close()
