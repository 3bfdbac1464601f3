"""Agents on Faust's test context: no broker, tables in memory, every outbound send captured.

Records go in as raw bytes, exactly as they arrive from Kafka (`agent.put(key=..., value=...)`);
every send to an outbound topic is captured instead of produced, and decoded again with the
contract's schema, so each test checks what a consumer of that topic would read.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
from types import SimpleNamespace
from unittest.mock import AsyncMock, MagicMock

from streams import topics
from streams.app import build_app
from streams.data.value import load_segments
from streams.decision.actions import load_actions
from streams.decision.policy import decision_id
from streams.settings import REPO_ROOT, Settings
from tests.support import wire

SHIPPED_ACTIONS = load_actions(REPO_ROOT / "rules" / "actions.yaml")
# The shipped actions without the global hold-out, which would hold out C1 (the customer most tests
# use) from every offer, the quiet hours (T0 is 22:13 in London) and the minimum gap between offers;
# tests of those gates use SHIPPED_ACTIONS or a policy of their own.
ACTIONS = dataclasses.replace(SHIPPED_ACTIONS, policy=dataclasses.replace(SHIPPED_ACTIONS.policy, holdout_share=0.0,
                                                                          quiet_hours=None, min_gap_ms=0))
SEGMENTS = load_segments(REPO_ROOT / "rules" / "segments.yaml")
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


async def put_on(wrapper, topic: str, key: bytes | None, value: bytes):
    """What `test_context().put` does, on one named topic of the agent's channel (put names none for several)."""
    message = wrapper.to_message(key, value, offset=wrapper.sent_offset)
    message.topic = topic
    channel = wrapper.stream().channel
    event = await channel.decode(message)
    await channel.put(event)
    wrapper.sent_offset += 1
    async with wrapper.new_value_processed:
        await wrapper.new_value_processed.wait()
    # Faust's wrapper wakes us when the stream takes the value; the agents take events in batches and
    # ack them once processed: wait for that, as a consumer's commit would
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not message.acked and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.001)
    return event


class Stage:
    """An engine with its outbound topics and table changelogs captured instead of produced."""

    def __init__(self, tmp_path, **settings):
        _STAGES.append(self)
        self.engine = build_app(Settings(store_url="memory://", data_dir=tmp_path / "state", **settings))
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

    def decided(self) -> list[tuple[bytes, dict, str]]:
        """Every decision the decision stage made, in order, as (key, decision, where it went): offers that need
        an agent go to their skill's pacer (engage.pacing, keyed by skill), the others to engage.decisions."""
        out = []
        for name, key, value, _ in self.sent:
            if name == topics.DECISIONS.name:
                out.append((key, self.engine.decode(topics.DECISIONS, value), name))
            elif name == topics.PACING.name:
                rec = self.engine.decode(topics.PACING, value)
                if rec["kind"] == "candidate":
                    out.append((key, rec["decision"], name))
        return out

    async def wait_decided(self, n: int) -> list[tuple[bytes, dict, str]]:
        await eventually(lambda: len(self.decided()) >= n, f"{n} decision(s)")
        return self.decided()

    async def wait_out(self, spec: topics.TopicSpec, n: int) -> list[tuple[bytes | None, dict, dict]]:
        await eventually(lambda: sum(1 for s in self.sent if s[0] == spec.name) >= n, f"{n} record(s) on {spec.name}")
        return self.out(spec)


def data_stage(tmp_path, customers=None):
    """The data stage (shipped segments; `customers`: customer rules, none when not given) with every
    table's changelog captured: (stage, DataStage)."""
    from streams.data import agent as data_agent

    st = Stage(tmp_path)
    d = data_agent.register(st.engine, SEGMENTS, customers)
    for table in (d.customer_to_profile, d.visitor_to_customer, d.customer_to_value, d.key_to_journey,
                  d.customer_to_forgotten, d.customer_to_successor):
        st.without_changelog(table)
    return st, d


# ---- records ---------------------------------------------------------------------------------------


def signal(signal_id: str, visitor_id: str = "v1", customer_id: str | None = "C1", name: str = "cancel_intent",
           ts: int = T0, **over) -> dict:
    s = {"signal_id": signal_id, "ts": ts, "visitor_id": visitor_id, "customer_id": customer_id, "session_id": "s1",
         "signal": name, "rule_id": "cancel-intent", "rule_description": "Searched for how to cancel or leave",
         "ruleset_version": "r1", "priority": 80,
         "evidence": [{"event_id": "e1", "ts": ts, "type": "search", "channel": "web", "path": None,
                       "query": "terminate contract early", "value": None}],
         "session_pages": 3, "session_events": 4, "cart_value": 0.0, "returning": False, "session_seconds": 0.0,
         "attributes": {}}
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
