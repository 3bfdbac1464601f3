"""The data stage's handlers on its runner: profiles re-keyed, stored and deleted, signals re-keyed and joined."""
from __future__ import annotations

import pytest

from streams import topics
from streams.clients import partition_of
from streams.data.stage import TABLES
from streams.data.value import DAY_MS
from tests.support import wire
from tests.support.runners import DataStage
from tests.support.stage import T0, decision, profile, signal


def _sent(st: DataStage) -> list[tuple[str, int | None, bytes | None, bytes | None]]:
    """(topic, partition, key, value) of every record the runner sent but to its tables' changelogs, in order."""
    changelogs = set(st.runner.changelog.values())
    return [s for s in st.runner.producer.sent if s[0] not in changelogs]


def _store_profile(st: DataStage, prof: dict) -> None:
    st.put(topics.PROFILES_BY_CUSTOMER, prof["customer_id"], wire.encode("CustomerProfile", prof))
    assert st.stored(topics.CUSTOMER_TO_PROFILE, prof["customer_id"]) is not None, "the profile in the table"


def test_a_stored_profile_joins_the_customers_signal(tmp_path):
    # Given the data stage, and the CRM profile of C1 (platinum, CLV 3121.13) on engage.profiles-by-customer
    st = DataStage(tmp_path)
    _store_profile(st, profile())
    # When a signal of C1 arrives on engage.signals-by-customer
    sig = signal("sig-1")
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", sig))
    # Then one EnrichedSignal keyed by C1 carries the profile's segment and CLV
    [(key, out, _)] = st.out(topics.ENRICHED)
    assert key == b"C1"
    assert out["key"] == "C1" and out["known"] is True
    assert out["profile"]["segment"] == "platinum" and out["profile"]["clv"] == pytest.approx(3121.13)
    assert out["profile"]["display_name"] == "Sara"
    assert out["signal"] == sig
    assert st.out(topics.DEADLETTER) == []


def test_a_tombstone_removes_the_profile(tmp_path):
    # Given C1's profile in the table
    st = DataStage(tmp_path)
    _store_profile(st, profile())
    # When a tombstone (key C1, no value) arrives: the customer was deleted
    st.put(topics.PROFILES_BY_CUSTOMER, b"C1", None)
    assert st.stored(topics.CUSTOMER_TO_PROFILE, "C1") is None
    # Then the deletion is written to the table's changelog too, so a restore does not bring it back
    assert ("C1", None) in st.changelog(topics.CUSTOMER_TO_PROFILE)
    # And C1's next signal is enriched with no CRM data
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", signal("sig-2")))
    [(key, out, _)] = st.out(topics.ENRICHED)
    assert key == b"C1" and out["known"] is False and out["profile"] is None
    assert st.out(topics.DEADLETTER) == []  # a tombstone is not a bad record


def test_profiles_and_deletions_are_sent_on_keyed_by_customer_with_the_engines_partitioner(tmp_path):
    # Given the data stage's repartitioner
    st = DataStage(tmp_path)
    # When C1's profile and C2's deletion arrive on engage.profiles, wherever the CRM's producer put them
    st.put(topics.PROFILES, b"C1", wire.encode("CustomerProfile", profile("C1")), partition=3)
    st.put(topics.PROFILES, b"C2", None, partition=0)
    # Then both go to engage.profiles-by-customer keyed by customer_id, the deletion as a tombstone, and the
    # partition is left to the engine's producer (murmur2 of the key, like every re-keyed topic)
    [(name1, part1, key1, value1), (name2, part2, key2, value2)] = _sent(st)
    assert (name1, key1, name2, key2, value2) == (topics.PROFILES_BY_CUSTOMER.name, b"C1",
                                                  topics.PROFILES_BY_CUSTOMER.name, b"C2", None)
    assert part1 is None and part2 is None
    assert st.codec.decode(name1, topics.PROFILES_BY_CUSTOMER.schema, value1) == profile("C1")


def test_a_profile_keyed_by_another_customer_is_dead_lettered(tmp_path):
    # Given the data stage's repartitioner
    st = DataStage(tmp_path)
    # When C1's profile arrives keyed by C2 (it would land on the wrong partition for the join)
    value = wire.encode("CustomerProfile", profile("C1"))
    offset = st.put(topics.PROFILES, b"C2", value)
    # Then it goes, whole, to the dead-letter topic with the reason and where it came from
    [(key, dead, _)] = st.out(topics.DEADLETTER)
    # And the stream goes on: the next, well-keyed profile is sent on
    st.put(topics.PROFILES, b"C3", wire.encode("CustomerProfile", profile("C3")))
    [(c3, _, _)] = st.out(topics.PROFILES_BY_CUSTOMER)
    assert key == b"C2" and c3 == b"C3"
    assert dead["stage"] == "data"
    assert dead["error"] == "ValueError: the record key must be the customer_id"
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("engage.profiles", 0, offset)
    assert dead["key"] == b"C2" and dead["value"] == value
    assert [k for k, _, _ in st.out(topics.PROFILES_BY_CUSTOMER)] == [b"C3"]


def test_a_profile_with_negative_clv_is_dead_lettered(tmp_path):
    # Given the data stage; When a profile with a negative lifetime value arrives
    st = DataStage(tmp_path)
    st.put(topics.PROFILES, b"C1", wire.encode("CustomerProfile", profile("C1", clv=-5.0)))
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then it is dead-lettered with the reason and not sent on
    assert dead["error"] == "ValueError: clv must not be negative, got -5.0"
    assert st.out(topics.PROFILES_BY_CUSTOMER) == []


def test_the_router_rekeys_customers_and_enriches_anonymous_visitors(tmp_path):
    # Given the data stage's router
    st = DataStage(tmp_path)
    # When a signal of known customer C1 (visitor v1) and one of anonymous visitor v9 arrive keyed by visitor
    known = signal("sig-k", visitor_id="v1", customer_id="C1")
    anonymous = signal("sig-a", visitor_id="v9", customer_id=None)
    st.put(topics.SIGNALS, b"v1", wire.encode("Signal", known))
    st.put(topics.SIGNALS, b"v9", wire.encode("Signal", anonymous))
    # Then C1's signal is re-keyed by customer_id onto engage.signals-by-customer, unchanged
    assert st.out(topics.SIGNALS_BY_CUSTOMER) == [(b"C1", known, {})]
    # And v9's goes straight to engage.enriched, keyed by visitor, with no CRM data
    [(key, out, _)] = st.out(topics.ENRICHED)
    assert key == b"v9"
    assert out == {"key": "v9", "known": False, "signal": anonymous, "profile": None, "value": None, "journey": []}
    assert [name for name, *_ in _sent(st)] == ["engage.signals-by-customer", "engage.enriched"]


def test_the_router_dead_letters_a_record_of_the_wrong_schema(tmp_path):
    # Given the router; When an Interaction lands on engage.signals by mistake
    st = DataStage(tmp_path)
    st.put(topics.SIGNALS, b"v1", wire.encode("Interaction", wire.interaction("e1", "v1", "search", T0)))
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then it is dead-lettered naming both schemas
    assert dead["stage"] == "data" and dead["topic"] == "engage.signals"
    assert dead["error"] == "DecodeError: wrong schema: record is Interaction, expected Signal"


def _link(visitor_id: str, customer_id: str, source: str = "crm") -> dict:
    return {"link_id": f"{visitor_id}->{customer_id}", "ts": T0, "visitor_id": visitor_id, "customer_id": customer_id,
            "source": source}


def test_a_call_from_a_number_crm_links_to_a_customer_counts_for_that_customer(tmp_path):
    # Given CRM's link of the phone number tel:+31201234567 to customer C7
    st = DataStage(tmp_path)
    st.put(topics.IDENTITY_BY_VISITOR, b"tel:+31201234567", wire.encode("IdentityLink", _link("tel:+31201234567", "C7")))
    assert st.stored(topics.VISITOR_TO_CUSTOMER, "tel:+31201234567") is not None, "the link stored"
    # When a signal of a call from that number arrives, the call itself naming no customer
    call = signal("sig-call", visitor_id="tel:+31201234567", customer_id=None)
    st.put(topics.SIGNALS, b"tel:+31201234567", wire.encode("Signal", call))
    [(key, out, _)] = st.out(topics.SIGNALS_BY_CUSTOMER)
    # Then it goes on as C7's signal, to be joined with C7's profile
    assert key == b"C7" and out == {**call, "customer_id": "C7"}
    assert st.out(topics.ENRICHED) == []


def test_an_unlinked_number_is_anonymous_again_and_a_login_on_the_device_wins_over_crm(tmp_path):
    # Given links of two devices to C7
    st = DataStage(tmp_path)
    for device in (b"tel:+31200000000", b"app-123"):
        st.put(topics.IDENTITY_BY_VISITOR, device, wire.encode("IdentityLink", _link(device.decode(), "C7")))
    # When the number is unlinked (a tombstone: it was given up)
    st.put(topics.IDENTITY_BY_VISITOR, b"tel:+31200000000", None)
    assert st.stored(topics.VISITOR_TO_CUSTOMER, "tel:+31200000000") is None, "the link removed"
    # And a signal comes from the number, and one from the app where C8 has just logged in
    st.put(topics.SIGNALS, b"tel:+31200000000",
           wire.encode("Signal", signal("sig-1", visitor_id="tel:+31200000000", customer_id=None)))
    st.put(topics.SIGNALS, b"app-123", wire.encode("Signal", signal("sig-2", visitor_id="app-123", customer_id="C8")))
    # Then the number's signal is anonymous, and the app's is C8's, as the login said
    [(anon_key, anon, _)] = st.out(topics.ENRICHED)
    assert anon_key == b"tel:+31200000000" and anon["signal"]["customer_id"] is None and anon["known"] is False
    assert [(k, s["customer_id"]) for k, s, _ in st.out(topics.SIGNALS_BY_CUSTOMER)] == [(b"C8", "C8")]


def test_identity_links_are_rekeyed_by_visitor_and_a_wrongly_keyed_one_is_dead_lettered(tmp_path):
    # Given the repartitioner of engage.identity
    st = DataStage(tmp_path)
    # When a link keyed by another identifier, a good one and a tombstone arrive
    st.put(topics.IDENTITY, b"someone-else", wire.encode("IdentityLink", _link("app-1", "C1")))
    st.put(topics.IDENTITY, b"app-2", wire.encode("IdentityLink", _link("app-2", "C2")), partition=1)
    st.put(topics.IDENTITY, b"app-3", None)
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then the good one and the tombstone go on keyed by visitor, and the bad one is dead-lettered with why
    sent = [(key, value) for key, value, _ in st.out(topics.IDENTITY_BY_VISITOR)]
    assert [k for k, _ in sent] == [b"app-2", b"app-3"] and sent[1][1] is None
    assert dead["error"] == "ValueError: the record key must be the visitor_id" and dead["topic"] == "engage.identity"


def test_a_customers_purchases_give_a_clv_estimate_and_a_segment_on_their_next_signal(tmp_path):
    # Given the data stage, and two purchases of C5 on engage.conversions: each comes keyed once by
    # customer and once by visitor (for attribution); only the customer's copy counts
    st = DataStage(tmp_path)
    for i, amount in enumerate((100.0, 50.0)):
        purchase = {**wire.interaction(f"p{i}", "v5", "purchase", T0 + i * 90 * DAY_MS, customer_id="C5"),
                    "value": amount}
        for key in (b"C5", b"v5"):
            st.put(topics.CONVERSIONS, key, wire.encode("Interaction", purchase))
    assert st.stored(topics.CUSTOMER_TO_VALUE, "C5")["n"] == 2, "two purchases counted"
    # When C5, who has no CRM profile, raises a signal 30 days after the second purchase
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C5", wire.encode("Signal", signal("sig-v", customer_id="C5",
                                                                           ts=T0 + 120 * DAY_MS)))
    [(_, out, _)] = st.out(topics.ENRICHED)
    # Then it carries the estimated CLV (the worked example of streams/data/value.py) and the segment
    assert out["known"] is False and out["profile"] is None
    assert out["value"] == {"clv": 453.46, "clv_source": "estimate", "segment": "active", "purchases": 2,
                            "last_purchase_ts": T0 + 90 * DAY_MS}


def test_a_profile_that_arrives_after_a_customers_first_signal_joins_the_next(tmp_path):
    # Given C1's signal enriched before CRM has published their profile
    st = DataStage(tmp_path)
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", signal("sig-early")))
    assert len(st.out(topics.ENRICHED)) == 1
    # When the profile arrives, then C1's next signal
    _store_profile(st, profile())
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", signal("sig-late")))
    [(_, early, _), (_, late, _)] = st.out(topics.ENRICHED)
    # Then the first went without CRM data and the next has it
    assert early["known"] is False and late["known"] is True and late["profile"]["segment"] == "platinum"
    assert late["value"]["clv_source"] == "crm" and late["value"]["clv"] == pytest.approx(3121.13)


def test_what_a_visitor_did_before_logging_in_moves_to_the_customers_journey_with_offers_and_outcomes(tmp_path):
    # Given the data stage
    st = DataStage(tmp_path)
    # When anonymous visitor v3 raises a signal, then logs in as C3 and raises another
    anonymous = signal("sig-anon", visitor_id="v3", customer_id=None, ts=T0)
    st.put(topics.SIGNALS, b"v3", wire.encode("Signal", anonymous))
    assert st.stored(topics.KEY_TO_JOURNEY, "v3") is not None, "the visitor's journey"
    known = signal("sig-known", visitor_id="v3", customer_id="C3", ts=T0 + 60_000)
    st.put(topics.SIGNALS, b"v3", wire.encode("Signal", known))
    [(move_key, move, _)] = st.out(topics.JOURNEY_MOVES)
    # Then the visitor's steps are sent to C3's key and no longer kept under the visitor
    assert move_key == b"C3" and move["from_key"] == "v3" and [s["ref"] for s in move["steps"]] == ["e1", "sig-anon"]
    assert st.stored(topics.KEY_TO_JOURNEY, "v3") is None
    # And the offers made to the visitor join C3's contact counts: a merge of v3 into C3, named after the signal
    [(merge_key, merge, _)] = st.out(topics.MERGES_BY_KEY)
    assert merge_key == b"v3" and (merge["from_key"], merge["into_key"], merge["source"]) == ("v3", "C3", "login")
    assert merge["merge_id"] == "login:sig-known"
    # When the move, an offer to C3 and its outcome reach the customer's partition
    st.put(topics.JOURNEY_MOVES, b"C3", move)
    offer = decision("sig-known", decision_id="d-1", key="C3", ts=T0 + 61_000, visitor_id="v3", customer_id="C3")
    st.put(topics.DECISIONS, b"C3", offer)
    outcome = {"outcome_id": "o-1", "key": "C3", "ts": T0 + 62_000, "type": "declined", "delivery_id": None,
               "decision_id": "d-1", "action_id": "retention-callback", "channel": "voice_callback",
               "visitor_id": "v3", "customer_id": "C3", "value": None, "source": "test"}
    st.put(topics.OUTCOMES, b"C3", wire.encode("Outcome", outcome))
    # And C3's signal is enriched
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C3", wire.encode("Signal", known))
    enriched = st.out(topics.ENRICHED)
    assert len(enriched) == 2  # the first is the anonymous signal
    (_, out, _) = enriched[-1]
    # Then its journey holds what the visitor did before the login, the offer and how it went, in order
    assert [(s["kind"], s["ref"]) for s in out["journey"]] == [
        ("search", "e1"), ("signal", "sig-anon"), ("offer", "d-1"), ("outcome", "o-1")]
    # And the signal itself is in the journey now, for the next one, in its place in time
    assert [s["ref"] for s in st.stored(topics.KEY_TO_JOURNEY, "C3")] == ["e1", "sig-anon", "sig-known", "d-1", "o-1"]


def test_a_forgotten_customer_is_deleted_from_every_data_table_and_nothing_of_them_is_kept_again(tmp_path):
    # Given C9's profile, purchases and journey in the data stage's tables
    st = DataStage(tmp_path)
    _store_profile(st, profile("C9"))
    purchase = {**wire.interaction("p1", "v9", "purchase", T0, customer_id="C9"), "value": 10.0}
    st.put(topics.CONVERSIONS, b"C9", wire.encode("Interaction", purchase))
    assert st.stored(topics.KEY_TO_JOURNEY, "C9") is not None, "C9's journey"
    # When C9 is forgotten
    request = {"customer_id": "C9", "ts": T0 + 1, "requested_by": "dpo", "reason": "ticket 42"}
    st.put(topics.FORGET, b"C9", wire.encode("ForgetRequest", request))
    [(_, audit, _)] = st.out(topics.AUDIT)
    # Then the profile, the value and the journey are deleted, each with a tombstone in its changelog
    assert all(st.stored(t, "C9") is None
               for t in (topics.CUSTOMER_TO_PROFILE, topics.CUSTOMER_TO_VALUE, topics.KEY_TO_JOURNEY))
    deleted = [(table, key) for table in TABLES for key, value in st.changelog(table) if value is None]
    assert sorted(deleted) == sorted([(topics.CUSTOMER_TO_PROFILE, "C9"), (topics.CUSTOMER_TO_VALUE, "C9"),
                                      (topics.KEY_TO_JOURNEY, "C9")])
    assert audit["customer_id"] == "C9" and audit["stage"] == "data" and "customer_to_profile" in audit["detail"]
    # And nothing of them is kept again: a new profile, a purchase, a signal
    st.put(topics.PROFILES_BY_CUSTOMER, b"C9", wire.encode("CustomerProfile", profile("C9")))
    st.put(topics.CONVERSIONS, b"C9", wire.encode("Interaction", {**purchase, "event_id": "p2"}))
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C9", wire.encode("Signal", signal("sig-9", customer_id="C9")))
    assert st.stored(topics.CUSTOMER_TO_PROFILE, "C9") is None and st.stored(topics.KEY_TO_JOURNEY, "C9") is None
    assert st.out(topics.ENRICHED) == []  # no enriched signal: no decision, no offer


def test_a_deleted_forget_request_is_ignored_and_a_record_with_no_key_is_dead_lettered(tmp_path):
    # Given C9 forgotten
    st = DataStage(tmp_path)
    request = {"customer_id": "C9", "ts": T0 + 1, "requested_by": "dpo", "reason": "ticket 42"}
    st.put(topics.FORGET, b"C9", wire.encode("ForgetRequest", request))
    # When the request itself is deleted (a tombstone on the compacted engage.forget)
    st.put(topics.FORGET, b"C9", None)
    # Then it is no bad record, and C9 stays forgotten
    assert st.out(topics.DEADLETTER) == [] and len(st.out(topics.AUDIT)) == 1
    assert st.stored(topics.CUSTOMER_TO_FORGOTTEN, "C9") == T0 + 1
    # When a purchase arrives with no key (it names no key to keep it under)
    purchase = {**wire.interaction("p1", "v9", "purchase", T0, customer_id="C9"), "value": 10.0}
    offset = st.put(topics.CONVERSIONS, None, wire.encode("Interaction", purchase))
    # Then it is dead-lettered as bad input, with the reason
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    assert (dead["topic"], dead["offset"]) == ("engage.conversions", offset)
    assert dead["error"].startswith("ValueError: a record on engage.conversions needs a key")


def test_journeys_gone_quiet_for_the_visitor_ttl_are_swept_from_their_partition(tmp_path):
    def on_partition(prefix: str, partition: int) -> str:
        return next(f"{prefix}-{i}" for i in range(100)
                    if partition_of(f"{prefix}-{i}", st.runner.settings.partitions) == partition)

    # Given three journeys on partition 0: one quiet for 31 days, one with a step yesterday; and one of
    # another partition (held by this worker too), as quiet
    st = DataStage(tmp_path)
    day = 86_400_000
    quiet, recent, elsewhere = on_partition("v-quiet", 0), on_partition("v-recent", 0), on_partition("v-other", 1)
    for key, ts, partition in ((quiet, T0, 0), (recent, T0 + 30 * day, 0), (elsewhere, T0, 1)):
        move = {"key": key, "from_key": "x", "steps": [{"ts": ts, "channel": "web", "kind": "search", "text": "",
                                                        "ref": f"e-{key}"}], "hops": 0}
        st.put(topics.JOURNEY_MOVES, key, move, partition=partition)
    assert st.stored(topics.KEY_TO_JOURNEY, quiet) is not None, "the journeys"
    # When partition 0's sweep comes, 31 days after the quiet one's last step
    tick = {"partition": 0, "wall_ts": T0 + 31 * day, "watermark_ts": T0 + 31 * day, "idle_ms": 0}
    st.put(topics.DATA_SWEEPS, None, tick, partition=0)
    # Then only the quiet journey of that partition is deleted, with a tombstone in the changelog
    assert st.stored(topics.KEY_TO_JOURNEY, quiet) is None
    assert st.stored(topics.KEY_TO_JOURNEY, recent) is not None
    assert st.stored(topics.KEY_TO_JOURNEY, elsewhere, partition=1) is not None
    assert (quiet, None) in st.changelog(topics.KEY_TO_JOURNEY)
