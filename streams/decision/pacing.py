"""Decides when an offer that needs an agent is released: while the skill's outstanding invitations stay within what its free agents can take.

Seed 001's predictive dialer. Offers that need an agent (chat, call back) do not go straight to
delivery: the decision stage sends them, with the best offer that needs no agent as a fallback,
to the pacer of their skill (engage.pacing, keyed by skill, so one pacer per skill whatever the
number of workers). The pacer keeps, per skill:

- the agents free now, from engage.agent-availability (keyed by skill too);
- the invitations released and not yet answered (outstanding); an invitation stops being
  outstanding with its accepted, declined, expired or abandoned outcome, or when its ttl passes;
- the acceptance rate, decayed, from those answers; the pacing ratio is 1 / acceptance rate,
  from 1 to MAX_RATIO: when half the invited accept, two invitations per free agent keep agents busy;
- the candidates waiting, released best score first while outstanding < free agents x ratio.

A candidate whose hold (ENGAGE_PACING_HOLD, event time) passes before an agent is free expires: its
fallback is sent instead when it has one worth sending, else a decision with the gate
`no_agent_free`. A skill no availability was ever published for is not paced (released at once).
The pacer's clock is the latest event time it has heard of (candidates, outcomes, availability),
so a contact centre publishes availability on every change and at least every few seconds.
"""
from __future__ import annotations

import math

MAX_RATIO = 3.0
DECAY = 0.98          # weight of past answers in the acceptance rate, per new answer
MAX_WAITING = 500     # candidates held per skill; beyond, the lowest-scoring expire at once
# decision ids remembered per skill, so a replayed candidate is not paced twice: a replay covers the
# records since the last commit (a second), and the whole state is written per record, so few
DONE_KEPT = 512
# what ends an invitation; `failed`: the channel never took it (streams/adapters/kit.py), so the agent is free again
ANSWERS = frozenset({"accepted", "declined", "expired", "abandoned", "failed"})


def new_state() -> dict:
    return {"clock": 0, "free": None, "total": 0, "waiting": [], "out": {}, "acc": 0.0, "ans": 0.0, "done": []}


def candidate_record(decision: dict, fallback: dict | None) -> dict:
    """The Pacing record that asks the decision's skill to release it (or send `fallback` if no agent is free in time)."""
    return {"kind": "candidate", "skill": decision["skill"], "ts": decision["ts"], "decision_id": decision["decision_id"],
            "score": decision["score"], "decision": decision, "fallback": fallback, "outcome": None}


def outcome_record(skill: str, outcome: dict) -> dict:
    """The Pacing record that tells the skill's pacer what became of an invitation it released."""
    return {"kind": "outcome", "skill": skill, "ts": outcome["ts"], "decision_id": outcome["decision_id"], "score": 0.0,
            "decision": None, "fallback": None, "outcome": outcome["type"]}


def ratio(state: dict) -> float:
    rate = (state["acc"] + 1.0) / (state["ans"] + 2.0)  # a uniform prior: 1/2 before any answer
    return min(MAX_RATIO, max(1.0, 1.0 / rate))


def capacity(state: dict) -> float:
    """How many invitations may be outstanding now (infinite when no availability is known)."""
    if state["free"] is None:
        return math.inf
    return math.floor(state["free"] * ratio(state))


def on_candidate(state: dict, rec: dict, hold_ms: int) -> list[dict]:
    """A new candidate: held, then whatever can be released or has expired. Returns decisions to send."""
    did = rec["decision_id"]
    if did in state["done"] or any(w["id"] == did for w in state["waiting"]):
        return []  # a replay of one already paced
    state["waiting"].append({"id": did, "score": rec["score"], "deadline": rec["ts"] + hold_ms,
                             "ts": rec["ts"], "decision": rec["decision"], "fallback": rec["fallback"]})
    return _settle(state, rec["ts"])


def on_outcome(state: dict, rec: dict) -> list[dict]:
    """An answer to a released invitation: it stops being outstanding; the acceptance rate learns."""
    did = rec["decision_id"]
    if rec["outcome"] in ANSWERS and did in state["out"]:
        del state["out"][did]
        state["acc"] = state["acc"] * DECAY + (1.0 if rec["outcome"] == "accepted" else 0.0)
        state["ans"] = state["ans"] * DECAY + 1.0
    return _settle(state, rec["ts"])


def on_availability(state: dict, rec: dict) -> list[dict]:
    state["free"], state["total"] = max(0, rec["agents_free"]), max(0, rec["agents_total"])
    return _settle(state, rec["ts"])


def _settle(state: dict, ts: int) -> list[dict]:
    state["clock"] = max(state["clock"], ts)
    now, sent = state["clock"], []
    for did, until in list(state["out"].items()):
        if until <= now:  # never answered within its ttl: no longer holds a place
            del state["out"][did]
            state["ans"] = state["ans"] * DECAY + 1.0
    waiting = sorted(state["waiting"], key=lambda w: (-w["score"], w["ts"], w["id"]))
    keep = []
    for w in waiting:
        # a place free: released, even if the clock (moved by others' later events) has passed its hold
        if len(state["out"]) < capacity(state):
            d = dict(w["decision"], context={**w["decision"]["context"], "paced_ms": str(max(0, now - w["ts"]))})
            if state["free"] is not None:  # a skill not paced holds no places
                state["out"][w["id"]] = now + max(1, d["ttl_ms"])
            sent.append(d)
            _done(state, w["id"])
        elif w["deadline"] <= now or len(keep) >= MAX_WAITING:
            sent.append(_expired(w))
            _done(state, w["id"])
        else:
            keep.append(w)
    state["waiting"] = keep
    return sent


def _expired(w: dict) -> dict:
    d = w["decision"]
    fallback = w["fallback"]
    if fallback is not None and fallback["score"] > 0:
        return dict(fallback, reason=f"{fallback['reason']} No {d['skill']} agent was free in time for "
                                     f"{d['action_id']} by {d['channel']}.")
    return dict(d, outcome="suppressed", gate="no_agent_free",
                reason=f"No {d['skill']} agent was free in time for {d['action_id']} by {d['channel']} "
                       f"(it would have scored {d['score']:.2f}).")


def _done(state: dict, did: str) -> None:
    state["done"].append(did)
    if len(state["done"]) > DONE_KEPT:
        del state["done"][: len(state["done"]) - DONE_KEPT]
