"""Merging keys in the decision stage: a merged key's contact counts join the surviving key's caps, once however often they come."""
from __future__ import annotations

from streams import topics
from streams.decision.policy import counts_of, decide, on_merge
from tests.support import wire
from tests.support.runners import DecisionStage
from tests.support.stage import ACTIONS, T0, enriched, profile, signal

DAY = "2023-11-14"  # T0's day in Europe/London
WEEK = "2023-W46"


def _counts(today: int, week: int | None = None, day: str = DAY, **over) -> dict:
    return {"day": day, "offers_today": today, "week": WEEK, "offers_week": today if week is None else week,
            "last_offer_ts": T0 - 3_600_000, "purchase_ts": 0, "declined": {}, **over}


def test_offers_made_to_a_merged_key_count_against_the_daily_cap():
    # Given C1 with no offer yet, and the device v1 they used before logging in, offered twice today (cap 2)
    ledger = on_merge(None, "v1", _counts(2))
    # When C1 shows cancel intent
    d = decide(enriched(signal("sig-1", ts=T0), profile()), ledger, ACTIONS, explore=False).decision
    # Then the cap counts the device's offers
    assert d["outcome"] == "suppressed" and d["gate"] == "daily_cap" and d["reason"] == "Already 2 offers today (cap 2)."


def test_a_merge_received_twice_or_updated_is_counted_once():
    # Given v1's one offer today merged into C1's ledger
    ledger = on_merge(None, "v1", _counts(1))
    # When the same counts arrive again (a replay), then v1's newer counts (a later login)
    assert on_merge(ledger, "v1", _counts(1)) is None
    ledger = on_merge(ledger, "v1", _counts(2, week=3))
    # Then they replace what v1 sent before, never add to it
    counts = counts_of(ledger)
    assert ledger["merged"] == {"v1": {"day": DAY, "offers_today": 2, "week": WEEK, "offers_week": 3}}
    assert (counts["offers_today"], counts["offers_week"]) == (2, 3)


def test_counts_of_another_day_do_not_count_today_and_the_latest_offer_purchase_and_decline_win():
    # Given C1's own ledger (an offer at T0 - 2h) and a duplicate's counts of yesterday with a later purchase and a decline
    own = {"day": DAY, "offers_today": 1, "week": WEEK, "offers_week": 1, "last_offer_ts": T0 - 7_200_000,
           "purchase_ts": 0, "declined": {"retention-chat": T0 - 10}, "recent": {}}
    moved = _counts(2, day="2023-11-13", purchase_ts=T0 - 5, declined={"retention-chat": T0 - 20, "save-offer-web": T0 - 9})
    ledger = on_merge(own, "C9", moved)
    counts = counts_of(ledger)
    # Then today is C1's one offer, this week both keys' three
    assert (counts["offers_today"], counts["offers_week"]) == (1, 3)
    assert ledger["last_offer_ts"] == T0 - 3_600_000 and ledger["purchase_ts"] == T0 - 5
    assert ledger["declined"] == {"retention-chat": T0 - 10, "save-offer-web": T0 - 9}


def _merge(from_key: str, into: str, source: str = "crm", merge_id: str = "m-1") -> dict:
    return {"merge_id": merge_id, "ts": T0 + 10, "from_key": from_key, "into_key": into, "source": source,
            "requested_by": "crm-dedupe", "reason": ""}


def test_a_duplicate_customers_offers_follow_them_into_the_customer_they_were_merged_into(tmp_path):
    # Given C9 offered twice today (the cap), a duplicate of C1 that CRM found
    st = DecisionStage(tmp_path)
    for i in range(2):
        sig = signal(f"sig-9-{i}", customer_id="C9", ts=T0 + i)
        st.put(topics.ENRICHED.name, b"C9", st.encode(topics.ENRICHED, enriched(sig, profile("C9"))))
    st.decided()
    # When C9 is merged into C1
    st.put(topics.MERGES_BY_KEY.name, b"C9", wire.encode("KeyMerge", _merge("C9", "C1")))
    [(key, move, _)] = st.out(topics.STATE_MOVES)
    # Then C9's counts go to C1's partition, and C9's ledger says where it went
    assert key == b"C1" and move["from_key"] == "C9" and move["value"] is None
    assert (move["ledger"]["day"], move["ledger"]["offers_today"]) == (DAY, 2)
    assert st.ledger("C9")["merged_into"] == {"into": "C1", "merge_id": "m-1"}
    # When the move arrives, twice (a replay), and C1 shows cancel intent
    for _ in range(2):
        st.put(topics.STATE_MOVES.name, b"C1", wire.encode("StateMove", move))
    sig = signal("sig-1", ts=T0 + 60_000)
    st.put(topics.ENRICHED.name, b"C1", st.encode(topics.ENRICHED, enriched(sig, profile())))
    decided = st.decided()
    # Then C1 is at the cap with C9's offers, counted once
    assert decided[-1][1]["gate"] == "daily_cap" and decided[-1][1]["reason"] == "Already 2 offers today (cap 2)."
    # And a decline C9 sends later is handed on to C1 too
    outcome = {"outcome_id": "o-9", "key": "C9", "ts": T0 + 90_000, "type": "declined", "delivery_id": None,
               "decision_id": "d-9", "action_id": "retention-chat", "channel": "chat", "visitor_id": "v9",
               "customer_id": "C9", "value": None, "source": "test"}
    st.put(topics.OUTCOMES.name, b"C9", wire.encode("Outcome", outcome))
    moves = st.out(topics.STATE_MOVES)
    assert moves[-1][0] == b"C1" and moves[-1][1]["ledger"]["declined"] == {"retention-chat": T0 + 90_000}
    # And read again (a replay after a crash that lost the move), it is handed on again, the same
    st.put(topics.OUTCOMES.name, b"C9", wire.encode("Outcome", outcome))
    moves = st.out(topics.STATE_MOVES)
    assert moves[-1][1] == moves[-2][1]


def test_a_visitors_login_merge_copies_its_counts_and_a_bad_merge_is_dead_lettered(tmp_path):
    # Given visitor v1 offered once
    st = DecisionStage(tmp_path)
    sig = signal("sig-v", visitor_id="v1", customer_id=None)
    st.put(topics.ENRICHED.name, b"v1", st.encode(topics.ENRICHED, enriched(sig, None)))
    st.decided()
    # When the engine merges v1 into C1 at their login, and someone sends a merge of C2 into itself
    st.put(topics.MERGES_BY_KEY.name, b"v1", wire.encode("KeyMerge", _merge("v1", "C1", "login")))
    st.put(topics.MERGES_BY_KEY.name, b"C2", wire.encode("KeyMerge", _merge("C2", "C2")))
    [(key, move, _)] = st.out(topics.STATE_MOVES)
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then v1's one offer goes to C1, and v1 keeps its ledger (it may browse anonymously again)
    assert key == b"C1" and move["ledger"]["offers_today"] == 1
    assert "merged_into" not in st.ledger("v1") and st.ledger("v1")["offers_today"] == 1
    # And the self-merge is refused with the reason
    assert dead["stage"] == "decision" and "cannot be merged into itself" in dead["error"]
