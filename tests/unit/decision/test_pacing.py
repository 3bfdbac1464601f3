"""Pacing offers to the agents free: never above capacity, best first, expiry with a fallback or a named gate, a ratio that learns acceptance."""
from __future__ import annotations

import random

from streams import topics
from streams.decision import pacing
from tests.support.runners import DecisionStage
from tests.support.stage import T0, decision

HOLD = 10_000


def candidate(did: str, score: float, ts: int, fallback: dict | None = None) -> dict:
    d = decision(did, action_id="retention-chat", channel="chat", skill="retention", score=score, ttl_ms=600_000,
                 ts=ts, key=f"K-{did}")
    return {"kind": "candidate", "skill": "retention", "ts": ts, "decision_id": d["decision_id"], "score": score,
            "decision": d, "fallback": fallback, "outcome": None}


def availability(free: int, ts: int, total: int = 4) -> dict:
    return {"skill": "retention", "ts": ts, "agents_total": total, "agents_free": free, "queue_length": 0}


def answer(did: str, outcome: str, ts: int) -> dict:
    return {"kind": "outcome", "skill": "retention", "ts": ts, "decision_id": did, "score": 0.0, "decision": None,
            "fallback": None, "outcome": outcome}


def test_with_no_availability_ever_published_a_skill_is_not_paced():
    state = pacing.new_state()
    out = pacing.on_candidate(state, candidate("a", 5.0, T0), HOLD)
    assert [d["decision_id"] for d in out] == [candidate("a", 5.0, T0)["decision_id"]]


def test_outstanding_invitations_never_exceed_free_agents_times_the_ratio_and_the_best_go_first():
    # Given 2 free agents and no answers yet (ratio 2: half are expected to accept)
    state = pacing.new_state()
    assert pacing.on_availability(state, availability(2, T0)) == []
    assert pacing.ratio(state) == 2.0
    # When 10 candidates arrive within a second, scores in random order
    rng = random.Random(3)
    scores = [float(s) for s in range(1, 11)]
    rng.shuffle(scores)
    released = []
    for i, s in enumerate(scores):
        released += pacing.on_candidate(state, candidate(f"c{s:g}", s, T0 + i * 100), HOLD)
        assert len(state["out"]) <= pacing.capacity(state) == 4
    # Then 4 are released; as agents free up, the best waiting go next
    assert len(released) == 4 and len(state["waiting"]) == 6
    waiting = sorted((w["score"] for w in state["waiting"]), reverse=True)
    later = pacing.on_availability(state, availability(3, T0 + 2000))  # capacity 6: two more
    assert [d["score"] for d in later] == waiting[:2]


def test_answers_free_places_and_the_ratio_follows_the_acceptance_rate():
    state = pacing.new_state()
    pacing.on_availability(state, availability(1, T0))
    first = pacing.on_candidate(state, candidate("a", 5.0, T0), HOLD) + pacing.on_candidate(state, candidate("b", 4.0, T0), HOLD)
    assert len(first) == 2 and pacing.on_candidate(state, candidate("c", 3.0, T0 + 1), HOLD) == []
    # When one declines, a place frees and the waiting one goes
    out = pacing.on_outcome(state, answer(first[1]["decision_id"], "declined", T0 + 500))
    assert [d["score"] for d in out] == [3.0]
    # And after many acceptances the ratio falls to 1 (each invitation takes an agent)
    for i in range(200):
        state["out"][f"x{i}"] = T0 + 10**9
        pacing.on_outcome(state, answer(f"x{i}", "accepted", T0 + 1000))
    assert pacing.ratio(state) < 1.05
    # And after many declines it rises to its ceiling
    for i in range(400):
        state["out"][f"y{i}"] = T0 + 10**9
        pacing.on_outcome(state, answer(f"y{i}", "declined", T0 + 1000))
    assert pacing.ratio(state) == pacing.MAX_RATIO


def test_a_candidate_whose_moment_passes_expires_with_its_fallback_or_a_named_gate():
    state = pacing.new_state()
    pacing.on_availability(state, availability(0, T0))
    web = decision("a", action_id="save-offer-web", channel="web_message", skill=None, score=1.5, key="K-a",
                   reason="Wants to leave: a message.")
    assert pacing.on_candidate(state, candidate("a", 5.0, T0, fallback=web), HOLD) == []
    assert pacing.on_candidate(state, candidate("b", 4.0, T0), HOLD) == []
    # When the hold passes with no agent free (the clock moves with what the pacer hears)
    out = pacing.on_availability(state, availability(0, T0 + HOLD))
    by_score = {d["decision_id"]: d for d in out}
    # Then the one with a fallback gets it, the other is stopped by the gate no_agent_free
    a, b = by_score[candidate("a", 5.0, T0)["decision_id"]], by_score[candidate("b", 4.0, T0)["decision_id"]]
    assert a["channel"] == "web_message" and a["outcome"] == "act" and "No retention agent was free" in a["reason"]
    assert b["outcome"] == "suppressed" and b["gate"] == "no_agent_free" and b["channel"] == "chat"
    assert state["waiting"] == [] and state["out"] == {}
    # And a replay of either candidate is not paced again
    assert pacing.on_candidate(state, candidate("a", 5.0, T0), HOLD) == []


def test_an_invitation_never_answered_stops_holding_a_place_when_its_ttl_passes():
    state = pacing.new_state()
    pacing.on_availability(state, availability(1, T0))
    pacing.on_candidate(state, candidate("a", 5.0, T0), HOLD)
    pacing.on_candidate(state, candidate("b", 5.0, T0), HOLD)
    assert len(state["out"]) == 2
    pacing.on_availability(state, availability(1, T0 + 600_000))
    assert state["out"] == {}


def test_the_pacer_releases_to_the_decisions_topic_as_agents_free_up(tmp_path):
    # Given the pacer, and one free retention agent with the shipped hold of 10 s
    st = DecisionStage(tmp_path)
    avail, pacing_topic = topics.AGENT_AVAILABILITY.name, topics.PACING.name
    st.put(avail, b"retention", st.encode(topics.AGENT_AVAILABILITY, availability(0, T0, total=1)))
    # When three candidates arrive while no agent is free, then one agent frees up (capacity 2 before any answer)
    for did, score in (("a", 1.0), ("b", 3.0), ("c", 2.0)):
        st.put(pacing_topic, b"retention", st.encode(topics.PACING, candidate(did, score, T0)))
    assert st.out(topics.DECISIONS) == []
    st.put(avail, b"retention", st.encode(topics.AGENT_AVAILABILITY, availability(1, T0 + 1000, total=1)))
    first = st.out(topics.DECISIONS)
    # And the hold passes with no one free
    st.put(avail, b"retention", st.encode(topics.AGENT_AVAILABILITY, availability(0, T0 + 11_000, total=1)))
    out = st.out(topics.DECISIONS)
    # And a record without a key arrives
    st.put(avail, None, st.encode(topics.AGENT_AVAILABILITY, availability(0, T0)))
    [(_, dead, _)] = st.out(topics.DEADLETTER)
    # Then the two best went first, keyed by their customers; the third expired with the gate
    assert [(k, d["score"]) for k, d, _ in first] == [(b"K-b", 3.0), (b"K-c", 2.0)]
    assert out[2][1]["gate"] == "no_agent_free" and out[2][0] == b"K-a"
    assert "needs a key" in dead["error"] and dead["stage"] == "pacing"
    assert st.stored(topics.SKILL_TO_PACING, "retention")["waiting"] == []


def test_a_candidate_older_than_the_pacers_clock_is_still_released_while_a_place_is_free():
    # Given a pacer whose clock other customers' later events moved 100 s on, with one agent free
    state = pacing.new_state()
    pacing.on_availability(state, availability(1, T0 + 100_000))
    # When a candidate whose hold ended before that arrives (its partition was read late)
    out = pacing.on_candidate(state, candidate("late", 5.0, T0), HOLD)
    # Then a free place takes it; only a candidate that waited for one expires
    assert [d["outcome"] for d in out] == ["act"] and out[0]["context"]["paced_ms"] == "100000"
    assert [d["outcome"] for d in pacing.on_candidate(state, candidate("b", 4.0, T0 + 1), HOLD)] == ["act"]  # capacity 2
    assert [d["gate"] for d in pacing.on_candidate(state, candidate("c", 3.0, T0 + 2), HOLD)] == ["no_agent_free"]
