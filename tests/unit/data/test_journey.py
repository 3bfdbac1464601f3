"""The journey: steps in time order, each once, at most MAX_STEPS and MAX_AGE_MS, and readable for an agent."""
from __future__ import annotations

from streams.data import journey
from tests.support.stage import T0, signal


def _step(i: int, ts: int, kind: str = "search") -> dict:
    return {"ts": ts, "channel": "web", "kind": kind, "text": f"step {i}", "ref": f"r{i}"}


def test_steps_go_in_time_order_once_each_and_a_replay_changes_nothing():
    j = journey.added(None, [_step(2, T0 + 2000), _step(1, T0 + 1000)])
    assert [s["ref"] for s in j] == ["r1", "r2"]
    j = journey.added(j, [_step(3, T0 + 1500)])  # a late one goes in its place
    assert [s["ref"] for s in j] == ["r1", "r3", "r2"]
    assert journey.added(j, [_step(1, T0 + 1000)]) is None


def test_a_journey_keeps_the_newest_steps_within_the_count_and_the_age():
    j = journey.added(None, [_step(i, T0 + i) for i in range(journey.MAX_STEPS + 5)])
    assert len(j) == journey.MAX_STEPS and j[0]["ref"] == "r5"
    j = journey.added(j, [_step(999, T0 + journey.MAX_AGE_MS + 100)])
    assert [s["ref"] for s in j] == ["r999"]  # everything else is older than the age cap


def test_a_signal_brings_its_evidence_then_itself_and_texts_are_bounded():
    sig = signal("sig-1", ts=T0)
    sig["evidence"][0]["query"] = "x" * 500
    steps = journey.steps_of_signal(sig)
    assert [s["kind"] for s in steps] == ["search", "signal"]
    assert len(steps[0]["text"]) == journey.TEXT_CHARS and steps[1]["text"].startswith("cancel_intent: ")
    assert steps[1]["ref"] == "sig-1" and steps[1]["channel"] == "web"


def test_only_offers_made_are_steps_and_an_agent_reads_the_last_ones_newest_last():
    offer = {"decision_id": "d1", "ts": T0, "outcome": "act", "action_id": "retention-callback", "channel": "voice_callback"}
    assert journey.step_of_decision({**offer, "outcome": "control"}) is None
    outcome = {"outcome_id": "o1", "ts": T0 + 60_000, "type": "declined", "action_id": "retention-callback",
               "channel": "voice_callback"}
    j = journey.added(None, [journey.step_of_decision(offer), journey.step_of_outcome(outcome)])
    assert journey.lines(j) == ("2023-11-14 22:13 voice_callback offer retention-callback on voice_callback\n"
                                "2023-11-14 22:14 voice_callback outcome declined retention-callback on voice_callback")


def test_a_step_dated_far_ahead_is_left_out_instead_of_pushing_the_real_ones_out():
    j = journey.added(None, [_step(1, T0)])
    assert journey.added(j, [_step(2, T0 + 10 * journey.MAX_AGE_MS)], until_ts=T0 + 600_000) is None
    assert [s["ref"] for s in journey.added(j, [_step(3, T0 + 1000)], until_ts=T0 + 600_000)] == ["r1", "r3"]
