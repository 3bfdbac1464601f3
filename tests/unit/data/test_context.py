"""The context service's rules: a token compared in constant time, ids bounded, a rate per client, answers bounded."""
from __future__ import annotations

import pytest

from streams.data.context import MAX_BODY_BYTES, body_of, customer_context, offers_of
from streams.httpguard import RateLimit, Refused, check_id, check_token
from streams.data.value import load_segments
from streams.settings import REPO_ROOT

RULES = load_segments(REPO_ROOT / "rules" / "segments.yaml")


@pytest.mark.parametrize("header, token", [
    (None, "s3cret"), ("Bearer wrong", "s3cret"), ("s3cret", "s3cret"), ("Bearer ", "s3cret"),
    ("Bearer s3cret", ""),  # no token configured: nobody gets in
])
def test_without_the_configured_bearer_token_the_answer_is_401(header, token):
    with pytest.raises(Refused) as refused:
        check_token(header, token)
    assert refused.value.status == 401


def test_the_right_token_passes():
    check_token("Bearer s3cret", "s3cret")


@pytest.mark.parametrize("bad", ["", "x" * 257, "v1\x00", "tel:+31\n20"])
def test_ids_beyond_the_bound_or_with_control_characters_are_400(bad):
    with pytest.raises(Refused) as refused:
        check_id(bad)
    assert refused.value.status == 400


def test_a_client_gets_its_burst_then_the_rate_and_others_are_not_held_back():
    now = [0.0]
    limit = RateLimit(rate=10, burst=3, clock=lambda: now[0])
    for _ in range(3):
        limit.take("10.0.0.1")
    with pytest.raises(Refused) as refused:
        limit.take("10.0.0.1")
    assert refused.value.status == 429
    limit.take("10.0.0.2")  # another client is not affected
    now[0] = 0.1  # a tenth of a second later: one more request
    limit.take("10.0.0.1")


def test_a_customers_context_says_who_what_they_are_worth_their_journey_and_offers_so_far():
    # one offer today to C1, and one this week to the device they used before logging in (merged into C1)
    ledger = {"day": "2026-12-01", "offers_today": 1, "week": "2026-W49", "offers_week": 1, "last_offer_ts": 5,
              "declined": {"chat-offer": 3}, "purchase_ts": 0,
              "merged": {"v1": {"day": "2026-11-30", "offers_today": 1, "week": "2026-W49", "offers_week": 1}}}
    step = {"ts": 1, "channel": "web", "kind": "search", "text": "'cancel'", "ref": "e1"}
    ledger["recent"] = {"s1": {"decision_id": "d1", "action_id": "chat-offer", "features": {"x": 1.0}}}
    ctx = customer_context("C1", {"customer_id": "C1", "clv": 2500.0, "segment": "gold"}, None, [step],
                           offers_of(ledger), RULES, 10)
    assert ctx["value"]["segment"] == "high-value" and ctx["journey"] == [step]
    assert ctx["contacts"] == {"day": "2026-12-01", "offers_today": 1, "offers_this_week": 2, "last_offer_ts": 5,
                               "declined": ["chat-offer"], "last_purchase_ts": None}
    assert "contacts_unavailable" not in ctx and "d1" not in body_of(ctx).decode()  # counts, not the decisions kept
    assert len(body_of(ctx)) < MAX_BODY_BYTES
    with pytest.raises(Refused):
        body_of({"x": "y" * MAX_BODY_BYTES})


def test_a_context_whose_offers_cannot_be_read_now_still_answers_and_says_so():
    # Given the decision stage's partitions being assigned (the ledger cannot be read just now)
    # When the context is built without it
    ctx = customer_context("C1", {"customer_id": "C1"}, None, [], None, RULES, 10,
                           "no worker holds partition 2 of the decision stage now")
    # Then the profile, value and journey answer, and the offers are said to be missing, not zero
    assert ctx["known"] and ctx["contacts"] is None
    assert ctx["contacts_unavailable"] == "no worker holds partition 2 of the decision stage now"
