"""The data stage's agents on Faust's test context: profiles re-keyed, stored and deleted, signals re-keyed and joined."""
from __future__ import annotations

import pytest

from streams import topics
from streams.data import agent as data_agent
from streams.data.value import DAY_MS
from tests.support import wire
from tests.support.stage import SEGMENTS, T0, Stage, async_test, data_stage, decision, eventually, profile, put_on, signal




def _data_stage(tmp_path):
    """The data stage with its profile table's changelog captured: (stage, store, route, enrich, table)."""
    st = Stage(tmp_path)
    d = data_agent.register(st.engine, SEGMENTS)
    st.without_changelog(d.customer_to_profile)
    return st, d.store_profiles, d.route_signals, d.enrich_signals, d.customer_to_profile


def _repartition(tmp_path):
    st = Stage(tmp_path)
    d = data_agent.register(st.engine, SEGMENTS)
    return st, d.repartition_profiles, d.customer_to_profile


async def _store_profile(profiles, table, prof: dict) -> None:
    await profiles.put(key=prof["customer_id"].encode(), value=wire.encode("CustomerProfile", prof))
    await eventually(lambda: table.get(prof["customer_id"]) is not None, "the profile in the table")


@async_test
async def test_a_stored_profile_joins_the_customers_signal(tmp_path):
    # Given the data stage, and the CRM profile of C1 (platinum, CLV 3121.13) on engage.profiles
    st, store, _, enrich, table = _data_stage(tmp_path)
    async with store.test_context() as profiles, enrich.test_context() as signals:
        await _store_profile(profiles, table, profile())
        # When a signal of C1 arrives on engage.signals-by-customer
        sig = signal("sig-1")
        await signals.put(key=b"C1", value=wire.encode("Signal", sig))
        # Then one EnrichedSignal keyed by C1 carries the profile's segment and CLV
        [(key, out, _)] = await st.wait_out(topics.ENRICHED, 1)
    assert key == b"C1"
    assert out["key"] == "C1" and out["known"] is True
    assert out["profile"]["segment"] == "platinum" and out["profile"]["clv"] == pytest.approx(3121.13)
    assert out["profile"]["display_name"] == "Sara"
    assert out["signal"] == sig
    assert st.out(topics.DEADLETTER) == []


@async_test
async def test_a_tombstone_removes_the_profile(tmp_path):
    # Given C1's profile in the table
    st, store, _, enrich, table = _data_stage(tmp_path)
    async with store.test_context() as profiles, enrich.test_context() as signals:
        await _store_profile(profiles, table, profile())
        # When a tombstone (key C1, no value) arrives: the customer was deleted
        await profiles.put(key=b"C1", value=None)
        await eventually(lambda: table.get("C1") is None, "the profile to be removed")
        # Then the deletion is written to the table's changelog too, so a restore does not bring it back
        assert any(c.args[1] == "C1" and c.kwargs.get("value", "absent") is None for c in st.changelog.call_args_list)
        # And C1's next signal is enriched with no CRM data
        await signals.put(key=b"C1", value=wire.encode("Signal", signal("sig-2")))
        [(key, out, _)] = await st.wait_out(topics.ENRICHED, 1)
    assert key == b"C1" and out["known"] is False and out["profile"] is None
    assert st.out(topics.DEADLETTER) == []  # a tombstone is not a bad record


@async_test
async def test_profiles_and_deletions_are_sent_on_keyed_by_customer_with_the_engines_partitioner(tmp_path):
    # Given the data stage's repartitioner
    st, rekey, _ = _repartition(tmp_path)
    async with rekey.test_context() as profiles:
        # When C1's profile and C2's deletion arrive on engage.profiles, wherever the CRM's producer put them
        await profiles.put(key=b"C1", value=wire.encode("CustomerProfile", profile("C1")), partition=3)
        await profiles.put(key=b"C2", value=None, partition=0)
        await eventually(lambda: len([s for s in st.sent if s[0] == topics.PROFILES_BY_CUSTOMER.name]) == 2, "both sent on")
    # Then both go to engage.profiles-by-customer keyed by customer_id, the deletion as a tombstone, and the
    # partition is left to the engine's producer (murmur2 of the key, like every re-keyed topic)
    [(name1, key1, value1, _), (name2, key2, value2, _)] = st.sent
    assert (name1, key1, name2, key2, value2) == (topics.PROFILES_BY_CUSTOMER.name, b"C1",
                                                  topics.PROFILES_BY_CUSTOMER.name, b"C2", None)
    assert st.engine.decode(topics.PROFILES_BY_CUSTOMER, value1) == profile("C1")


@async_test
async def test_a_profile_keyed_by_another_customer_is_dead_lettered(tmp_path):
    # Given the data stage's repartitioner
    st, rekey, _ = _repartition(tmp_path)
    async with rekey.test_context() as profiles:
        # When C1's profile arrives keyed by C2 (it would land on the wrong partition for the join)
        value = wire.encode("CustomerProfile", profile("C1"))
        event = await profiles.put(key=b"C2", value=value)
        # Then it goes, whole, to the dead-letter topic with the reason and where it came from
        [(key, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
        # And the stream goes on: the next, well-keyed profile is sent on
        await profiles.put(key=b"C3", value=wire.encode("CustomerProfile", profile("C3")))
        [(c3, _, _)] = await st.wait_out(topics.PROFILES_BY_CUSTOMER, 1)
    assert key == b"C2" and c3 == b"C3"
    assert dead["stage"] == "data"
    assert dead["error"] == "ValueError: the record key must be the customer_id"
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("engage.profiles", event.message.partition,
                                                                   event.message.offset)
    assert dead["key"] == b"C2" and dead["value"] == value
    assert [k for k, _, _ in st.out(topics.PROFILES_BY_CUSTOMER)] == [b"C3"]


@async_test
async def test_a_profile_with_negative_clv_is_dead_lettered(tmp_path):
    # Given the data stage; When a profile with a negative lifetime value arrives
    st, rekey, _ = _repartition(tmp_path)
    async with rekey.test_context() as profiles:
        await profiles.put(key=b"C1", value=wire.encode("CustomerProfile", profile("C1", clv=-5.0)))
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then it is dead-lettered with the reason and not sent on
    assert dead["error"] == "ValueError: clv must not be negative, got -5.0"
    assert st.out(topics.PROFILES_BY_CUSTOMER) == []


@async_test
async def test_route_signals_rekeys_customers_and_enriches_anonymous_visitors(tmp_path):
    # Given the data stage's router
    st, _, route, _, _ = _data_stage(tmp_path)
    async with route.test_context() as signals:
        # When a signal of known customer C1 (visitor v1) and one of anonymous visitor v9 arrive keyed by visitor
        known = signal("sig-k", visitor_id="v1", customer_id="C1")
        anonymous = signal("sig-a", visitor_id="v9", customer_id=None)
        await signals.put(key=b"v1", value=wire.encode("Signal", known))
        await signals.put(key=b"v9", value=wire.encode("Signal", anonymous))
        await st.wait_out(topics.ENRICHED, 1)
    # Then C1's signal is re-keyed by customer_id onto engage.signals-by-customer, unchanged
    assert st.out(topics.SIGNALS_BY_CUSTOMER) == [(b"C1", known, {})]
    # And v9's goes straight to engage.enriched, keyed by visitor, with no CRM data
    [(key, out, _)] = st.out(topics.ENRICHED)
    assert key == b"v9"
    assert out == {"key": "v9", "known": False, "signal": anonymous, "profile": None, "value": None, "journey": []}
    assert [name for name, *_ in st.sent] == ["engage.signals-by-customer", "engage.enriched"]


@async_test
async def test_route_signals_dead_letters_a_record_of_the_wrong_schema(tmp_path):
    # Given the router; When an Interaction lands on engage.signals by mistake
    st = Stage(tmp_path)
    route = data_agent.register(st.engine, SEGMENTS).route_signals
    async with route.test_context() as signals:
        await signals.put(key=b"v1", value=wire.encode("Interaction", wire.interaction("e1", "v1", "search", T0)))
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then it is dead-lettered naming both schemas
    assert dead["stage"] == "data" and dead["topic"] == "engage.signals"
    assert dead["error"] == "DecodeError: wrong schema: record is Interaction, expected Signal"


def _link(visitor_id: str, customer_id: str, source: str = "crm") -> dict:
    return {"link_id": f"{visitor_id}->{customer_id}", "ts": T0, "visitor_id": visitor_id, "customer_id": customer_id,
            "source": source}


@async_test
async def test_a_call_from_a_number_crm_links_to_a_customer_counts_for_that_customer(tmp_path):
    # Given CRM's link of the phone number tel:+31201234567 to customer C7
    st, d = data_stage(tmp_path)
    async with d.store_identity.test_context() as links, d.route_signals.test_context() as signals:
        await links.put(key=b"tel:+31201234567", value=wire.encode("IdentityLink", _link("tel:+31201234567", "C7")))
        await eventually(lambda: d.visitor_to_customer.get("tel:+31201234567") is not None, "the link stored")
        # When a signal of a call from that number arrives, the call itself naming no customer
        call = signal("sig-call", visitor_id="tel:+31201234567", customer_id=None)
        await signals.put(key=b"tel:+31201234567", value=wire.encode("Signal", call))
        [(key, out, _)] = await st.wait_out(topics.SIGNALS_BY_CUSTOMER, 1)
    # Then it goes on as C7's signal, to be joined with C7's profile
    assert key == b"C7" and out == {**call, "customer_id": "C7"}
    assert st.out(topics.ENRICHED) == []


@async_test
async def test_an_unlinked_number_is_anonymous_again_and_a_login_on_the_device_wins_over_crm(tmp_path):
    # Given links of two devices to C7
    st, d = data_stage(tmp_path)
    async with d.store_identity.test_context() as links, d.route_signals.test_context() as signals:
        for device in (b"tel:+31200000000", b"app-123"):
            await links.put(key=device, value=wire.encode("IdentityLink", _link(device.decode(), "C7")))
        # When the number is unlinked (a tombstone: it was given up)
        await links.put(key=b"tel:+31200000000", value=None)
        await eventually(lambda: d.visitor_to_customer.get("tel:+31200000000") is None, "the link removed")
        # And a signal comes from the number, and one from the app where C8 has just logged in
        await signals.put(key=b"tel:+31200000000",
                          value=wire.encode("Signal", signal("sig-1", visitor_id="tel:+31200000000", customer_id=None)))
        await signals.put(key=b"app-123", value=wire.encode("Signal", signal("sig-2", visitor_id="app-123",
                                                                            customer_id="C8")))
        await st.wait_out(topics.SIGNALS_BY_CUSTOMER, 1)
    # Then the number's signal is anonymous, and the app's is C8's, as the login said
    [(anon_key, anon, _)] = st.out(topics.ENRICHED)
    assert anon_key == b"tel:+31200000000" and anon["signal"]["customer_id"] is None and anon["known"] is False
    assert [(k, s["customer_id"]) for k, s, _ in st.out(topics.SIGNALS_BY_CUSTOMER)] == [(b"C8", "C8")]


@async_test
async def test_identity_links_are_rekeyed_by_visitor_and_a_wrongly_keyed_one_is_dead_lettered(tmp_path):
    # Given the repartitioner of engage.identity
    st, d = data_stage(tmp_path)
    async with d.repartition_identity.test_context() as links:
        # When a link keyed by another identifier, a good one and a tombstone arrive
        await links.put(key=b"someone-else", value=wire.encode("IdentityLink", _link("app-1", "C1")))
        await links.put(key=b"app-2", value=wire.encode("IdentityLink", _link("app-2", "C2")), partition=1)
        await links.put(key=b"app-3", value=None)
        await eventually(lambda: sum(s[0] == topics.IDENTITY_BY_VISITOR.name for s in st.sent) == 2, "two sent on")
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then the good one and the tombstone go on keyed by visitor, and the bad one is dead-lettered with why
    sent = [(key, value) for name, key, value, _ in st.sent if name == topics.IDENTITY_BY_VISITOR.name]
    assert [k for k, _ in sent] == [b"app-2", b"app-3"] and sent[1][1] is None
    assert dead["error"] == "ValueError: the record key must be the visitor_id" and dead["topic"] == "engage.identity"


@async_test
async def test_a_customers_purchases_give_a_clv_estimate_and_a_segment_on_their_next_signal(tmp_path):
    # Given the data stage, and two purchases of C5 on engage.conversions: each comes keyed once by
    # customer and once by visitor (for attribution); only the customer's copy counts
    st, d = data_stage(tmp_path)
    async with d.follow_customers.test_context() as follow, d.enrich_signals.test_context() as signals:
        for i, amount in enumerate((100.0, 50.0)):
            purchase = {**wire.interaction(f"p{i}", "v5", "purchase", T0 + i * 90 * DAY_MS, customer_id="C5"),
                        "value": amount}
            for key in (b"C5", b"v5"):
                await put_on(follow, topics.CONVERSIONS.name, key, wire.encode("Interaction", purchase))
        await eventually(lambda: (d.customer_to_value.get("C5") or {}).get("n") == 2, "two purchases counted")
        # When C5, who has no CRM profile, raises a signal 30 days after the second purchase
        await signals.put(key=b"C5", value=wire.encode("Signal", signal("sig-v", customer_id="C5",
                                                                        ts=T0 + 120 * DAY_MS)))
        [(_, out, _)] = await st.wait_out(topics.ENRICHED, 1)
    # Then it carries the estimated CLV (the worked example of streams/data/value.py) and the segment
    assert out["known"] is False and out["profile"] is None
    assert out["value"] == {"clv": 453.46, "clv_source": "estimate", "segment": "active", "purchases": 2,
                            "last_purchase_ts": T0 + 90 * DAY_MS}


@async_test
async def test_a_profile_that_arrives_after_a_customers_first_signal_joins_the_next(tmp_path):
    # Given C1's signal enriched before CRM has published their profile
    st, store, _, enrich, table = _data_stage(tmp_path)
    async with store.test_context() as profiles, enrich.test_context() as signals:
        await signals.put(key=b"C1", value=wire.encode("Signal", signal("sig-early")))
        await st.wait_out(topics.ENRICHED, 1)
        # When the profile arrives, then C1's next signal
        await _store_profile(profiles, table, profile())
        await signals.put(key=b"C1", value=wire.encode("Signal", signal("sig-late")))
        [(_, early, _), (_, late, _)] = await st.wait_out(topics.ENRICHED, 2)
    # Then the first went without CRM data and the next has it
    assert early["known"] is False and late["known"] is True and late["profile"]["segment"] == "platinum"
    assert late["value"]["clv_source"] == "crm" and late["value"]["clv"] == pytest.approx(3121.13)


@async_test
async def test_what_a_visitor_did_before_logging_in_moves_to_the_customers_journey_with_offers_and_outcomes(tmp_path):
    # Given the data stage
    st, d = data_stage(tmp_path)
    async with d.route_signals.test_context() as signals, d.follow_customers.test_context() as follow, \
            d.enrich_signals.test_context() as by_customer:
        # When anonymous visitor v3 raises a signal, then logs in as C3 and raises another
        anonymous = signal("sig-anon", visitor_id="v3", customer_id=None, ts=T0)
        await signals.put(key=b"v3", value=wire.encode("Signal", anonymous))
        await eventually(lambda: d.key_to_journey.get("v3") is not None, "the visitor's journey")
        known = signal("sig-known", visitor_id="v3", customer_id="C3", ts=T0 + 60_000)
        await signals.put(key=b"v3", value=wire.encode("Signal", known))
        [(move_key, move, _)] = await st.wait_out(topics.JOURNEY_MOVES, 1)
        # Then the visitor's steps are sent to C3's key and no longer kept under the visitor
        assert move_key == b"C3" and move["from_key"] == "v3" and [s["ref"] for s in move["steps"]] == ["e1", "sig-anon"]
        assert d.key_to_journey.get("v3") is None
        # And the offers made to the visitor join C3's contact counts: a merge of v3 into C3, named after the signal
        [(merge_key, merge, _)] = st.out(topics.MERGES_BY_KEY)
        assert merge_key == b"v3" and (merge["from_key"], merge["into_key"], merge["source"]) == ("v3", "C3", "login")
        assert merge["merge_id"] == "login:sig-known"
        # When the move, an offer to C3 and its outcome reach the customer's partition
        await put_on(follow, topics.JOURNEY_MOVES.name, b"C3", st.engine.encode(topics.JOURNEY_MOVES, move))
        offer = decision("sig-known", decision_id="d-1", key="C3", ts=T0 + 61_000, visitor_id="v3", customer_id="C3")
        await put_on(follow, topics.DECISIONS.name, b"C3", st.engine.encode(topics.DECISIONS, offer))
        outcome = {"outcome_id": "o-1", "key": "C3", "ts": T0 + 62_000, "type": "declined", "delivery_id": None,
                   "decision_id": "d-1", "action_id": "retention-callback", "channel": "voice_callback",
                   "visitor_id": "v3", "customer_id": "C3", "value": None, "source": "test"}
        await put_on(follow, topics.OUTCOMES.name, b"C3", wire.encode("Outcome", outcome))
        # And C3's signal is enriched
        await by_customer.put(key=b"C3", value=wire.encode("Signal", known))
        (_, out, _) = (await st.wait_out(topics.ENRICHED, 2))[-1]  # the first is the anonymous signal
    # Then its journey holds what the visitor did before the login, the offer and how it went, in order
    assert [(s["kind"], s["ref"]) for s in out["journey"]] == [
        ("search", "e1"), ("signal", "sig-anon"), ("offer", "d-1"), ("outcome", "o-1")]
    # And the signal itself is in the journey now, for the next one, in its place in time
    assert [s["ref"] for s in d.key_to_journey.get("C3")] == ["e1", "sig-anon", "sig-known", "d-1", "o-1"]


@async_test
async def test_a_forgotten_customer_is_deleted_from_every_data_table_and_nothing_of_them_is_kept_again(tmp_path):
    # Given C9's profile, purchases and journey in the data stage's tables
    st, d = data_stage(tmp_path)
    async with d.follow_customers.test_context() as follow, d.store_profiles.test_context() as profiles, \
            d.enrich_signals.test_context() as signals:
        await _store_profile(profiles, d.customer_to_profile, profile("C9"))
        purchase = {**wire.interaction("p1", "v9", "purchase", T0, customer_id="C9"), "value": 10.0}
        await put_on(follow, topics.CONVERSIONS.name, b"C9", wire.encode("Interaction", purchase))
        await eventually(lambda: d.key_to_journey.get("C9") is not None, "C9's journey")
        # When C9 is forgotten
        request = {"customer_id": "C9", "ts": T0 + 1, "requested_by": "dpo", "reason": "ticket 42"}
        await put_on(follow, topics.FORGET.name, b"C9", wire.encode("ForgetRequest", request))
        [(_, audit, _)] = await st.wait_out(topics.AUDIT, 1)
        # Then the profile, the value and the journey are deleted, each with a tombstone in its changelog
        assert all(t.get("C9") is None for t in (d.customer_to_profile, d.customer_to_value, d.key_to_journey))
        deleted = {c.args[1] for c in st.changelog.call_args_list if c.kwargs.get("value", "absent") is None}
        assert deleted == {"C9"} and sum(c.kwargs.get("value", "absent") is None
                                         for c in st.changelog.call_args_list) == 3
        assert audit["customer_id"] == "C9" and audit["stage"] == "data" and "customer_to_profile" in audit["detail"]
        # And nothing of them is kept again: a new profile, a purchase, a signal
        await profiles.put(key=b"C9", value=wire.encode("CustomerProfile", profile("C9")))
        await put_on(follow, topics.CONVERSIONS.name, b"C9", wire.encode("Interaction", {**purchase, "event_id": "p2"}))
        await signals.put(key=b"C9", value=wire.encode("Signal", signal("sig-9", customer_id="C9")))
    assert d.customer_to_profile.get("C9") is None and d.key_to_journey.get("C9") is None
    assert st.out(topics.ENRICHED) == []  # no enriched signal: no decision, no offer


@async_test
async def test_journeys_gone_quiet_for_the_visitor_ttl_are_swept_from_their_partition(tmp_path):
    from streams.clients import partition_of

    def on_partition_0(prefix: str) -> str:
        return next(f"{prefix}-{i}" for i in range(100) if partition_of(f"{prefix}-{i}", st.engine.settings.partitions) == 0)

    # Given three journeys on partition 0: one quiet for 31 days, one with a step yesterday; and one of
    # another partition (held by this worker too), as quiet
    st, d = data_stage(tmp_path)
    day = 86_400_000
    quiet, recent = on_partition_0("v-quiet"), on_partition_0("v-recent")
    elsewhere = next(f"v-other-{i}" for i in range(100) if partition_of(f"v-other-{i}", st.engine.settings.partitions) == 1)
    async with d.follow_customers.test_context() as follow:
        for key, ts in ((quiet, T0), (recent, T0 + 30 * day), (elsewhere, T0)):
            move = {"key": key, "from_key": "x", "steps": [{"ts": ts, "channel": "web", "kind": "search", "text": "",
                                                            "ref": f"e-{key}"}], "hops": 0}
            await put_on(follow, topics.JOURNEY_MOVES.name, key.encode(), st.engine.encode(topics.JOURNEY_MOVES, move))
        await eventually(lambda: d.key_to_journey.get(quiet) is not None, "the journeys")
        # When partition 0's sweep comes, 31 days after the quiet one's last step
        tick = {"partition": 0, "wall_ts": T0 + 31 * day, "watermark_ts": T0 + 31 * day, "idle_ms": 0}
        await put_on(follow, topics.DATA_SWEEPS.name, None, st.engine.encode(topics.DATA_SWEEPS, tick))
        await eventually(lambda: d.key_to_journey.get(quiet) is None, "the quiet journey deleted")
    # Then only the quiet journey of that partition is deleted, with a tombstone in the changelog
    assert d.key_to_journey.get(recent) is not None and d.key_to_journey.get(elsewhere) is not None
    assert any(c.args[1] == quiet and c.kwargs.get("value", "absent") is None for c in st.changelog.call_args_list)
