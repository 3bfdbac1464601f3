"""Merging keys in the data stage: a duplicate's journey and purchases join the surviving customer's, its later signals follow."""
from __future__ import annotations

import pytest

from streams import topics
from streams.data import value as values
from streams.data.value import DAY_MS
from tests.support import wire
from tests.support.runners import DataStage
from tests.support.stage import SEGMENTS, T0, signal

WORKED = values.ValueRules("t", "1", half_life_ms=180 * DAY_MS, lifetime_years=3, margin=1.0,
                           segments=SEGMENTS.segments)


def _purchase(event_id: str, customer: str, ts: int, amount: float) -> dict:
    return {**wire.interaction(event_id, "v-" + customer, "purchase", ts, customer_id=customer), "value": amount}


def test_purchases_merged_from_a_duplicate_count_as_if_one_customer_made_them():
    # Given the worked example's two purchases (100, then 50 ninety days later), made under two customer ids
    dup = values.on_purchase(None, _purchase("p1", "C9", 0, 100.0), WORKED.half_life_ms)
    own = values.on_purchase(None, _purchase("p2", "C1", 90 * DAY_MS, 50.0), WORKED.half_life_ms)
    # When C9 is merged into C1 (the move arrives twice: a replay)
    merged = values.on_merge(own, "C9", values.purchase_sum(dup, WORKED.half_life_ms))
    assert values.on_merge(merged, "C9", values.purchase_sum(dup, WORKED.half_life_ms)) is None
    # Then C1's value 30 days after the second purchase is the worked example's: 453.46 from two purchases
    v = values.customer_value(None, merged, 120 * DAY_MS, WORKED)
    assert v["clv"] == pytest.approx(453.46, abs=0.01) and v["purchases"] == 2 and v["clv_source"] == "estimate"


def _merge(from_key: str, into: str, merge_id: str = "m-1") -> dict:
    return {"merge_id": merge_id, "ts": T0 + 10, "from_key": from_key, "into_key": into, "source": "crm",
            "requested_by": "crm-dedupe", "reason": "same e-mail"}


def test_a_duplicates_journey_and_purchases_move_and_its_later_signals_follow(tmp_path):
    # Given C9 (a duplicate of C1) with a purchase in its journey and value
    st = DataStage(tmp_path)
    st.put(topics.CONVERSIONS, b"C9", wire.encode("Interaction", _purchase("p9", "C9", T0, 80.0)))
    assert st.stored(topics.CUSTOMER_TO_VALUE, "C9") is not None, "C9's purchases"
    # When CRM merges C9 into C1 (and the merge is read twice)
    for _ in range(2):
        st.put(topics.MERGES_BY_KEY, b"C9", wire.encode("KeyMerge", _merge("C9", "C1")))
    moves = st.out(topics.STATE_MOVES)
    journeys = st.out(topics.JOURNEY_MOVES)
    # Then C9's purchases and journey go to C1's key, the same both times
    assert [k for k, _, _ in moves] == [b"C1", b"C1"] and moves[0][1] == moves[1][1]
    assert moves[0][1]["value"]["n"] == 1 and moves[0][1]["value"]["s"] == pytest.approx(80.0)
    assert len(journeys) == 2
    assert journeys[0][0] == b"C1" and [s["ref"] for s in journeys[0][1]["steps"]] == ["p9"]
    [(_, audit, _), _] = st.out(topics.AUDIT)
    assert audit["action"] == "merge" and audit["customer_id"] == "C9" and "into C1" in audit["detail"]
    # When C1's partition gets the value move twice, then a signal of C9 arrives
    for k, move, _ in moves:
        st.put(topics.STATE_MOVES, k, wire.encode("StateMove", move))
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C9", wire.encode("Signal", signal("sig-9", customer_id="C9")))
    [(key, rekeyed, _)] = st.out(topics.SIGNALS_BY_CUSTOMER)
    # Then C1 counts C9's purchase once
    assert values.purchase_sum(st.stored(topics.CUSTOMER_TO_VALUE, "C1"), SEGMENTS.half_life_ms)["n"] == 1
    # And the signal goes on as C1's, saying whom it came from
    assert key == b"C1" and rekeyed["customer_id"] == "C1" and rekeyed["attributes"]["merged_from"] == "C9"
    assert st.out(topics.ENRICHED) == []


def test_a_merge_cycle_is_dead_lettered_not_passed_around_forever(tmp_path):
    # Given C1 merged into C2 on this partition
    st = DataStage(tmp_path)
    st.put(topics.MERGES_BY_KEY, b"C1", wire.encode("KeyMerge", _merge("C1", "C2")))
    assert st.stored(topics.CUSTOMER_TO_SUCCESSOR, "C1") is not None, "C1's successor"
    # When a signal arrives that was already re-keyed through four merged customers (C2 -> C3 -> C4 -> C1 ...)
    looping = signal("sig-x", customer_id="C1", attributes={"merged_from": "C2 C3 C4 C1"})
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", looping))
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then it is dead-lettered with the reason instead of going round again
    assert "merge cycle" in dead["error"] and st.out(topics.SIGNALS_BY_CUSTOMER) == []


def test_merges_from_any_producer_are_checked_and_re_keyed_and_a_tombstone_is_refused(tmp_path):
    st = DataStage(tmp_path)
    # Given a good merge, one whose key is not its from_key, and a tombstone
    st.put(topics.MERGES, b"C9", wire.encode("KeyMerge", _merge("C9", "C1")))
    st.put(topics.MERGES, b"C1", wire.encode("KeyMerge", _merge("C9", "C1", "m-2")))
    st.put(topics.MERGES, b"C9", None)
    [(key, merge, _)] = st.out(topics.MERGES_BY_KEY)
    dead = st.out(topics.DEADLETTER)
    # Then the good one is re-keyed with the engine's partitioner, the others dead-lettered with the reason
    assert key == b"C9" and merge["merge_id"] == "m-1"
    assert len(dead) == 2
    assert "the record key must be the from_key" in dead[0][1]["error"]
    assert "not undone by a tombstone" in dead[1][1]["error"]


def test_moves_go_on_along_a_chain_of_merges_and_a_circle_of_merges_is_dead_lettered(tmp_path):
    # Given C2 merged into C3 on this partition
    st = DataStage(tmp_path)
    st.put(topics.MERGES_BY_KEY, b"C2", wire.encode("KeyMerge", _merge("C2", "C3", "m-23")))
    assert st.stored(topics.CUSTOMER_TO_SUCCESSOR, "C2") is not None, "C2's successor"
    # When C1's purchases, merged into C2 earlier, reach C2
    moved = {"n": 2, "s": 150.0, "at": T0, "first": T0 - DAY_MS, "last": T0}
    move = {"merge_id": "m-12", "key": "C2", "from_key": "C1", "ts": T0, "hops": 0, "ledger": None, "value": moved}
    st.put(topics.STATE_MOVES, b"C2", wire.encode("StateMove", move))
    [(key, onward, _)] = st.out(topics.STATE_MOVES)
    # Then they go on to C3, within what C2 holds, one hop further
    assert key == b"C3" and onward["from_key"] == "C2" and onward["hops"] == 1 and onward["value"]["n"] == 2
    # When a journey move has gone round merged keys four times already (C2 -> C3 -> C2 ...)
    steps = [{"ts": T0, "channel": "web", "kind": "search", "text": "x", "ref": "e1"}]
    circling = {"key": "C2", "from_key": "C3", "steps": steps, "hops": 4}
    st.put(topics.JOURNEY_MOVES, b"C2", circling)
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then it is dead-lettered with the reason, not passed on again
    assert "merge cycle" in dead["error"] and st.out(topics.JOURNEY_MOVES) == []


def test_attributes_an_event_could_set_to_pose_as_a_merged_or_customer_signal_are_dropped(tmp_path):
    st = DataStage(tmp_path)
    posing = signal("sig-p", visitor_id="v5", customer_id=None,
                    attributes={"scope": "customer", "merged_from": "a b c d e", "device": "phone"})
    st.put(topics.SIGNALS, b"v5", wire.encode("Signal", posing))
    [(_, out, _)] = st.out(topics.ENRICHED)
    assert out["signal"]["attributes"] == {"device": "phone"}


def test_a_purchase_under_a_merged_id_goes_on_as_the_surviving_customers(tmp_path):
    # Given C9 merged into C1
    st = DataStage(tmp_path)
    st.put(topics.MERGES_BY_KEY, b"C9", wire.encode("KeyMerge", _merge("C9", "C1")))
    assert st.stored(topics.CUSTOMER_TO_SUCCESSOR, "C9") is not None, "C9's successor"
    # When a purchase arrives under C9 (a device still logged in with the old id), and the device's copy of it
    purchase = _purchase("p-late", "C9", T0 + 60_000, 40.0)
    st.put(topics.CONVERSIONS, b"C9", wire.encode("Interaction", purchase))
    st.put(topics.CONVERSIONS, b"v-C9", wire.encode("Interaction", purchase))
    [(key, moved, _)] = st.out(topics.CONVERSIONS)
    # Then the customer's copy goes on as C1's, for C1's caps, value and attribution; the device's copy stays
    assert key == b"C1" and moved["customer_id"] == "C1" and moved["attributes"]["merged_from"] == "C9"
    assert {k: v for k, v in moved.items() if k not in ("customer_id", "attributes")} == {
        k: v for k, v in purchase.items() if k not in ("customer_id", "attributes")}
    assert st.stored(topics.CUSTOMER_TO_VALUE, "C9") is None
