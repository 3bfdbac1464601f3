"""The detection agent on Faust's test context: raw bytes in, signals and dead letters captured, state after acks."""
from __future__ import annotations

import time

from streams import topics
from streams.detection import agent as detection_agent
from streams.detection import detector as detector_module
from streams.rules.book import RuleBook
from streams.detection.rules import load_detection
from streams.settings import REPO_ROOT
from tests.support import wire
from tests.support.stage import Stage, async_test, eventually

T0 = int(time.time() * 1000) - 60_000  # a minute ago: within the accepted event times


def _stage(tmp_path):
    st = Stage(tmp_path)
    agent, visitors, timers, detector = detection_agent.register(st.engine, RuleBook(load_detection(REPO_ROOT / "rules" / "detection.yaml")))
    st.without_changelog(visitors)
    st.without_changelog(timers)
    return st, agent, visitors


def _event(i: int, type_: str, visitor: str = "v1", **kw) -> bytes:
    return wire.encode("Interaction", wire.interaction(event_id=f"e{i}", visitor_id=visitor, type_=type_, ts=T0 + i * 1000, **kw))


@async_test
async def test_a_cancel_search_becomes_a_signal_keyed_by_visitor(tmp_path):
    # Given the detection stage with the default rules
    st, agent, visitors = _stage(tmp_path)
    async with agent.test_context() as events:
        # When a visitor searches for how to cancel
        await events.put(key=b"v1", value=_event(1, "search", query="cancel my contract", path="/help/search"))
        [(key, signal, _)] = await st.wait_out(topics.SIGNALS, 1)
        await eventually(lambda: visitors.get("v1") is not None, "the visitor's state")
    # Then one signal, keyed by the visitor, with the event as evidence and the rule set's version
    assert key == b"v1" and signal["rule_id"] == "cancel-intent" and signal["evidence"][0]["event_id"] == "e1"
    assert signal["ruleset_version"] == load_detection(REPO_ROOT / "rules" / "detection.yaml").version


@async_test
async def test_garbage_and_a_wrong_key_are_dead_lettered_and_the_next_event_is_processed(tmp_path):
    st, agent, _ = _stage(tmp_path)
    async with agent.test_context() as events:
        # When garbage, then an event under another visitor's key, then a valid event arrive
        await events.put(key=b"v1", value=b"\x00garbage")
        await events.put(key=b"someone-else", value=_event(2, "search", query="cancel"))
        await events.put(key=b"v1", value=_event(3, "search", query="cancel"))
        [(_, signal, _)] = await st.wait_out(topics.SIGNALS, 1)
        dead = await st.wait_out(topics.DEADLETTER, 2)
    # Then both bad records are dead-lettered with their reason, and the valid one still raised its signal
    assert [d["stage"] for _, d, _ in dead] == ["detection", "detection"]
    assert "the record key must be the visitor_id" in dead[1][1]["error"]
    assert signal["evidence"][0]["event_id"] == "e3"


@async_test
async def test_a_fault_mid_event_dead_letters_it_and_forgets_the_cached_clocks(tmp_path, monkeypatch):
    # Given the detection stage, whose rule engine has a fault on one visitor's events
    real_detect = detector_module.detect

    def faulty(state, ev, rules):
        if ev["visitor_id"] == "v-boom":
            raise RuntimeError("bug")
        return real_detect(state, ev, rules)

    monkeypatch.setattr(detector_module, "detect", faulty)
    st = Stage(tmp_path)
    agent, visitors, timers, detector = detection_agent.register(
        st.engine, RuleBook(load_detection(REPO_ROOT / "rules" / "detection.yaml")))
    st.without_changelog(visitors)
    st.without_changelog(timers)
    async with agent.test_context() as events:
        # When that visitor's event arrives, after its partition's clock was moved on in memory
        await events.put(key=b"v-boom", value=_event(1, "search", visitor="v-boom", query="cancel"))
        [(_, dead, _)] = await st.wait_out(topics.DEADLETTER, 1)
        # Then it is dead-lettered as a fault, its visitor has no state, and the half-moved clock is forgotten
        assert dead["error"] == "fault in detection: RuntimeError: bug" and visitors.get("v-boom") is None
        assert detector.clocks == {}
        # And the next visitor's event is still detected
        await events.put(key=b"v1", value=_event(2, "search", query="cancel"))
        [(_, signal, _)] = await st.wait_out(topics.SIGNALS, 1)
    assert signal["visitor_id"] == "v1"
