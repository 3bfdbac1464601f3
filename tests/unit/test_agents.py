"""The data, decision and delivery agents on Faust's test context: no broker, tables in memory.

Records go in as raw bytes, exactly as they arrive from Kafka (`agent.put(key=..., value=...)`);
every send to an outbound topic is captured instead of produced, and decoded again with the
contract's schema, so each test checks what a consumer of that topic would read.

The detection agent has its own: tests/unit/detection/test_agent.py.
"""
from __future__ import annotations

import asyncio
import functools
from contextlib import AsyncExitStack
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

import pytest

from streams import topics
from streams.app import build_app
from streams.decision import agent as decision_agent
from streams.decision.actions import load_actions
from streams.decision.policy import decision_id, in_control_group
from streams.data import agent as data_agent
from streams.delivery import agent as delivery_agent
from streams.delivery.render import delivery_id
from streams.settings import REPO_ROOT, Settings
from tests.support import wire

ACTIONS = load_actions(REPO_ROOT / "rules" / "actions.yaml")
T0 = 1_700_000_000_000  # 2023-11-14 22:13 UTC, the same day in Europe/London
TEST_TIMEOUT_S = 10.0
WAIT_S = 2.0
_STAGES: list["Stage"] = []  # closed after each test


def async_test(fn):
    """Run an async test on a fresh event loop (pytest-asyncio is not a dependency)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), TEST_TIMEOUT_S))
        finally:
            while _STAGES:
                _STAGES.pop().close()

    return run


async def eventually(condition, what: str, timeout: float = WAIT_S) -> None:
    """Wait until `condition()` holds: the agent body runs after `put` returns, on the same loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


class Stage:
    """An engine with its outbound topics and table changelogs captured instead of produced."""

    def __init__(self, tmp_path):
        _STAGES.append(self)
        self.engine = build_app(Settings(store_url="memory://", data_dir=tmp_path / "state"))
        self.sent: list[tuple[str, bytes | None, bytes | None, dict]] = []  # topic, key, value, headers
        self.changelog = MagicMock(return_value=SimpleNamespace(message=SimpleNamespace(partition=0)))
        for name, topic in self.engine.topic.items():
            topic.send = AsyncMock(side_effect=self._capture(name))

    def close(self) -> None:
        """Iterating a stream creates the app's Kafka consumer, never started, whose thread owns
        an event loop of its own; close it so no loop or socket is left for the GC to warn about."""
        thread = getattr(getattr(self.engine.app, "_consumer", None), "_thread", None)
        loop = getattr(thread, "thread_loop", None)
        if loop is not None and not loop.is_running():
            loop.close()

    def _capture(self, name: str):
        async def send(key=None, value=None, headers=None, **_):
            self.sent.append((name, key, value, dict(headers or [])))
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(None)  # the broker's ack, already there
            return fut

        return send

    def without_changelog(self, table):
        """Table writes go to a changelog topic through the producer; record them instead."""
        table.send_changelog = self.changelog
        return table

    def out(self, spec: topics.TopicSpec) -> list[tuple[bytes | None, dict, dict]]:
        """(key, decoded record, headers) of everything sent to `spec`, in order."""
        return [(key, self.engine.decode(spec, value), headers)
                for name, key, value, headers in self.sent if name == spec.name]

    async def wait_out(self, spec: topics.TopicSpec, n: int) -> list[tuple[bytes | None, dict, dict]]:
        await eventually(lambda: sum(1 for s in self.sent if s[0] == spec.name) >= n, f"{n} record(s) on {spec.name}")
        return self.out(spec)


# ---- records ---------------------------------------------------------------------------------------


def signal(signal_id: str, visitor_id: str = "v1", customer_id: str | None = "C1", name: str = "cancel_intent",
           ts: int = T0, **over) -> dict:
    s = {"signal_id": signal_id, "ts": ts, "visitor_id": visitor_id, "customer_id": customer_id, "session_id": "s1",
         "signal": name, "rule_id": "cancel-intent", "rule_description": "Searched for how to cancel or leave",
         "ruleset_version": "r1", "priority": 80,
         "evidence": [{"event_id": "e1", "ts": ts, "type": "search", "channel": "web", "path": None,
                       "query": "terminate contract early", "value": None}],
         "session_pages": 3, "session_events": 4, "cart_value": 0.0}
    s.update(over)
    return s


def profile(customer_id: str = "C1", **over) -> dict:
    return wire.profile(customer_id, T0 - 86_400_000, **{"display_name": "Sara", "segment": "platinum",
                                                          "clv": 3121.13, **over})


def enriched(sig: dict, prof: dict | None) -> dict:
    return {"key": sig["customer_id"] or sig["visitor_id"], "known": prof is not None, "signal": sig, "profile": prof}


def decision(signal_id: str, outcome: str = "act", **over) -> dict:
    d = {"decision_id": decision_id(signal_id), "key": "C1", "ts": T0 + 5, "signal_id": signal_id,
         "signal": "cancel_intent", "signal_ts": T0, "visitor_id": "v1", "customer_id": "C1", "known": True,
         "outcome": outcome, "gate": None, "reason": "Searched for how to cancel or leave: call back.",
         "action_id": "retention-callback", "channel": "voice_callback", "skill": "retention", "score": 181.5,
         "ttl_ms": 900_000, "rules_fired": ["cancel-intent"], "features": {"clv": 3121.13},
         "scores": {"retention-callback": 181.5},
         "context": {"customer_name": "Sara", "segment": "platinum",
                     "message_template": "Hi {name}, before you go: one of our specialists can call you back."},
         "ruleset_version": "r1/x"}
    d.update(over)
    return d


# ---- data ------------------------------------------------------------------------------------------


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


# ---- decision --------------------------------------------------------------------------------------


def _decision_stage(tmp_path):
    st = Stage(tmp_path)
    decide, table = decision_agent.register(st.engine, ACTIONS)
    st.without_changelog(table)
    return st, decide, table


@async_test
async def test_a_matching_signal_yields_a_decision_to_act(tmp_path):
    # Given C1 (platinum, CLV 3121.13, consent) who is not in the control group of the best action
    assert not in_control_group("C1", "retention-callback", ACTIONS.policy.control_share)
    st, decide, table = _decision_stage(tmp_path)
    async with decide.test_context() as enriched_in:
        # When C1's cancel_intent arrives enriched with the profile
        sig = signal("sig-1")
        await enriched_in.put(key=b"C1", value=st.engine.encode(topics.ENRICHED, enriched(sig, profile())))
        [(key, d, _)] = await st.wait_out(topics.DECISIONS, 1)
    # Then the retention call back by voice wins: (0.35 - 0.10) x 0.3 x 3121.13 - 6.0
    assert key == b"C1"
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
    assert table.get("C1")["offers_today"] == 1


@async_test
async def test_beyond_the_daily_cap_the_customer_gets_no_offer(tmp_path):
    # Given the policy's cap of 2 offers a day, and C1 outside the control group
    cap = ACTIONS.policy.max_offers_per_day
    assert cap == 2 and not in_control_group("C1", "retention-callback", ACTIONS.policy.control_share)
    st, decide, _ = _decision_stage(tmp_path)
    async with decide.test_context() as enriched_in:
        # When C1 shows cancel intent three times in one day
        for i in range(cap + 1):
            sig = signal(f"sig-{i}", ts=T0 + i * 60_000)
            await enriched_in.put(key=b"C1", value=st.engine.encode(topics.ENRICHED, enriched(sig, profile())))
        out = await st.wait_out(topics.DECISIONS, cap + 1)
    # Then the first two are offers and the third is held back by the cap, with the cap's reason
    assert [d["outcome"] for _, d, _ in out] == ["act", "act", "suppressed"]
    third = out[-1][1]
    assert third["gate"] == "daily_cap"
    assert third["reason"] == "Already 2 offers today (cap 2)."
    assert third["signal_id"] == "sig-2"


@async_test
async def test_a_redelivered_signal_gets_the_same_decision_and_is_not_counted_twice(tmp_path):
    # Given C1 already got an offer for sig-1
    st, decide, table = _decision_stage(tmp_path)
    async with decide.test_context() as enriched_in:
        value = st.engine.encode(topics.ENRICHED, enriched(signal("sig-1"), profile()))
        await enriched_in.put(key=b"C1", value=value)
        await st.wait_out(topics.DECISIONS, 1)
        # When the very same signal is delivered again (a replay after a crash)
        await enriched_in.put(key=b"C1", value=value)
        out = await st.wait_out(topics.DECISIONS, 2)
    # Then the same decision is sent again and the cap still counts one offer
    assert out[0][1] == out[1][1]
    assert table.get("C1")["offers_today"] == 1


@async_test
async def test_garbage_is_dead_lettered_and_the_next_record_still_gets_a_decision(tmp_path):
    # Given the decision stage
    st, decide, _ = _decision_stage(tmp_path)
    async with decide.test_context() as enriched_in:
        # When garbage bytes arrive, followed by a valid enriched signal of an anonymous visitor
        garbage = await enriched_in.put(key=b"v7", value=b"not avro at all")
        sig = signal("sig-anon", visitor_id="v7", customer_id=None)
        await enriched_in.put(key=b"v7", value=st.engine.encode(topics.ENRICHED, enriched(sig, None)))
        [(key, d, _)] = await st.wait_out(topics.DECISIONS, 1)
        [(dkey, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then the garbage is kept, whole, on the dead-letter topic with the reason
    assert dkey == b"v7" and dead["key"] == b"v7" and dead["value"] == b"not avro at all"
    assert dead["stage"] == "decision" and dead["topic"] == "engage.enriched"
    assert dead["offset"] == garbage.message.offset
    assert dead["error"].startswith("DecodeError: not Avro single-object encoding: expected marker C3 01")
    # And the valid record still gets its Decision: the web message for anonymous visitors
    assert key == b"v7" and d["signal_id"] == "sig-anon" and d["known"] is False
    assert d["action_id"] == "save-offer-web" and d["channel"] == "web_message"


@async_test
async def test_a_signal_no_action_answers_gets_a_no_action_decision(tmp_path):
    # Given the decision stage; When a signal no action answers arrives
    st, decide, _ = _decision_stage(tmp_path)
    async with decide.test_context() as enriched_in:
        sig = signal("sig-x", name="price_check")
        await enriched_in.put(key=b"C1", value=st.engine.encode(topics.ENRICHED, enriched(sig, profile())))
        [(_, d, _)] = await st.wait_out(topics.DECISIONS, 1)
    # Then every signal still gets a Decision, saying why nothing is done
    assert d["outcome"] == "no_action" and d["gate"] == "no_matching_action"
    assert d["reason"] == "No action answers the signal price_check."
    assert d["action_id"] is None and d["channel"] is None


# ---- delivery --------------------------------------------------------------------------------------


@async_test
async def test_a_decision_to_act_becomes_a_delivery_with_a_channel_header(tmp_path):
    # Given the delivery stage
    st = Stage(tmp_path)
    deliver = delivery_agent.register(st.engine)
    async with deliver.test_context() as decisions:
        # When a decision to call C1 back by voice arrives
        d = decision("sig-1")
        await decisions.put(key=b"C1", value=wire.encode("Decision", d))
        [(key, out, headers)] = await st.wait_out(topics.DELIVERY, 1)
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


@pytest.mark.parametrize("outcome, gate", [("no_action", "no_positive_uplift"), ("suppressed", "daily_cap"),
                                           ("control", "control_group")])
@async_test
async def test_a_decision_not_to_act_produces_no_delivery(tmp_path, outcome, gate):
    # Given the delivery stage
    st = Stage(tmp_path)
    deliver = delivery_agent.register(st.engine)
    async with deliver.test_context() as decisions:
        # When a decision not to act arrives (it still names the action it would have taken), then one to act
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-no", outcome, gate=gate)))
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-yes")))
        out = await st.wait_out(topics.DELIVERY, 1)
        await asyncio.sleep(0.01)
    # Then only the decision to act was delivered, and nothing was dead-lettered
    assert [d["decision_id"] for _, d, _ in out] == [decision_id("sig-yes")]
    assert [name for name, *_ in st.sent] == ["engage.delivery"]


@async_test
async def test_a_decision_to_act_without_a_channel_is_dead_lettered_and_the_next_is_delivered(tmp_path):
    # Given the delivery stage
    st = Stage(tmp_path)
    deliver = delivery_agent.register(st.engine)
    async with deliver.test_context() as decisions:
        # When a decision to act names no channel (schema-valid, but undeliverable), then a good one
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-bad", channel=None)))
        await decisions.put(key=b"C1", value=wire.encode("Decision", decision("sig-good")))
        out = await st.wait_out(topics.DELIVERY, 1)
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then the first is dead-lettered with the reason and the agent went on with the second
    assert "needs channel" in dead["error"] and dead["stage"] == "delivery"
    assert [d["decision_id"] for _, d, _ in out] == [decision_id("sig-good")]


@async_test
async def test_a_fault_on_one_record_dead_letters_it_and_the_stage_goes_on(tmp_path, monkeypatch, caplog):
    # Given the decision stage with a fault of ours that only one signal triggers
    real_decide = decision_agent.decide

    def faulty(enriched_signal, ledger, actions):
        if enriched_signal["signal"]["signal_id"] == "sig-boom":
            raise KeyError("secret-visitor-detail")
        return real_decide(enriched_signal, ledger, actions)

    monkeypatch.setattr(decision_agent, "decide", faulty)
    st, decide, _ = _decision_stage(tmp_path)
    async with decide.test_context() as enriched_in:
        # When that signal arrives, then another one
        boom = signal("sig-boom", visitor_id="v8", customer_id=None)
        sent = await enriched_in.put(key=b"v8", value=st.engine.encode(topics.ENRICHED, enriched(boom, None)))
        ok = signal("sig-ok", visitor_id="v8", customer_id=None)
        await enriched_in.put(key=b"v8", value=st.engine.encode(topics.ENRICHED, enriched(ok, None)))
        [(_, d, _)] = await st.wait_out(topics.DECISIONS, 1)
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
    # Then the faulty record is kept whole on the dead-letter topic, named as a fault, not lost to a
    # restarted agent; the next signal is decided; and the log names the fault without its text
    assert dead["stage"] == "decision" and dead["offset"] == sent.message.offset
    assert dead["value"] == st.engine.encode(topics.ENRICHED, enriched(boom, None))
    assert dead["error"] == "fault in decision: KeyError: 'secret-visitor-detail'"
    assert d["signal_id"] == "sig-ok"
    faults = [r.getMessage() for r in caplog.records if r.getMessage().startswith("fault at decision")]
    assert faults and "KeyError at" in faults[0]
    assert not [r for r in caplog.records if "secret-visitor-detail" in r.getMessage()]
