"""The data stage's agents on Faust's test context: profiles stored and deleted, signals re-keyed and joined."""
from __future__ import annotations

import pytest

from streams import topics
from streams.data import agent as data_agent
from tests.support import wire
from tests.support.stage import T0, Stage, async_test, eventually, profile, signal


def _data_stage(tmp_path):
    """The data stage with its profile table's changelog captured: (stage, store, route, enrich, table)."""
    st = Stage(tmp_path)
    store, route, enrich, table = data_agent.register(st.engine)
    st.without_changelog(table)
    return st, store, route, enrich, table


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
async def test_a_profile_keyed_by_another_customer_is_dead_lettered(tmp_path):
    # Given the data stage
    st, store, _, _, table = _data_stage(tmp_path)
    async with store.test_context() as profiles:
        # When C1's profile arrives keyed by C2 (it would land on the wrong partition for the join)
        value = wire.encode("CustomerProfile", profile("C1"))
        event = await profiles.put(key=b"C2", value=value)
        # Then it goes, whole, to the dead-letter topic with the reason and where it came from
        [(key, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
        # And the stream goes on: the next, well-keyed profile is stored
        await _store_profile(profiles, table, profile("C3"))
    assert key == b"C2"
    assert dead["stage"] == "data"
    assert dead["error"] == "ValueError: the record key must be the customer_id"
    assert (dead["topic"], dead["partition"], dead["offset"]) == ("engage.profiles", event.message.partition,
                                                                   event.message.offset)
    assert dead["key"] == b"C2" and dead["value"] == value
    assert table.get("C1") is None and table.get("C2") is None


@async_test
async def test_a_profile_with_negative_clv_is_dead_lettered(tmp_path):
    # Given the data stage; When a profile with a negative lifetime value arrives
    st, store, _, _, table = _data_stage(tmp_path)
    async with store.test_context() as profiles:
        await profiles.put(key=b"C1", value=wire.encode("CustomerProfile", profile("C1", clv=-5.0)))
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then it is dead-lettered with the reason and not stored
    assert dead["error"] == "ValueError: clv must not be negative, got -5.0"
    assert table.get("C1") is None


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
    assert out == {"key": "v9", "known": False, "signal": anonymous, "profile": None}
    assert [name for name, *_ in st.sent] == ["engage.signals-by-customer", "engage.enriched"]


@async_test
async def test_route_signals_dead_letters_a_record_of_the_wrong_schema(tmp_path):
    # Given the router; When an Interaction lands on engage.signals by mistake
    st = Stage(tmp_path)
    _, route, _, _ = data_agent.register(st.engine)
    async with route.test_context() as signals:
        await signals.put(key=b"v1", value=wire.encode("Interaction", wire.interaction("e1", "v1", "search", T0)))
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then it is dead-lettered naming both schemas
    assert dead["stage"] == "data" and dead["topic"] == "engage.signals"
    assert dead["error"] == "DecodeError: wrong schema: record is Interaction, expected Signal"
