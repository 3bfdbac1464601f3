"""Decides what is attributed to each decision: outcomes of its delivery, and purchases, cancellations and calls within its window.

Every decision is attributed, acted on or not: a control decision's conversions are what proves
(or disproves) the lift of the treated ones. One record per key (customer, else visitor) in
`key_to_attributions`:

  {"open": {decision_id: attribution record + "seen": [ids counted]},   decisions still attributable
   "closed": [decision_id, ...],                                         recently dropped: a replay stays dropped
   "early": [[ts, kind, id, fields], ...],                               things that came before their decision
   "latest": event time of the latest thing seen for the key}

A decision reaches this stage three stages after the events it answers, so a purchase made right
after the signal is usually here first: it waits in "early" until the decision comes. Each change
publishes the decision's record with the next revision; a replayed decision, outcome or event is
recognised by its id and changes nothing, so at-least-once delivery never counts anything twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field

GOAL_EVENTS = frozenset({"purchase", "cancel", "call"})  # what detection routes here (engage.conversions)
MAX_OPEN = 32        # decisions attributable at once per key; beyond, the oldest stops counting
MAX_EARLY = 32       # things waiting for their decision, per key
MAX_CLOSED = 256     # dropped decision ids remembered per key (older ones are refused by time: see LATEST)
MAX_SEEN = 64        # ids counted per decision

ARMS = {"act": "treated", "control": "control"}
OUTCOME_FLAGS = {"shown": "shown", "accepted": "accepted", "declined": "declined", "abandoned": "abandoned",
                 "expired": "expired"}
_DECISION, _OUTCOME, _CONVERSION = "d", "o", "c"


def new_state() -> dict:
    return {"open": {}, "closed": [], "early": [], "latest": 0}


# what an early thing keeps of its record: enough to attribute it, not the whole event
_EARLY_FIELDS = {_OUTCOME: ("outcome_id", "decision_id", "ts", "type", "value"),
                 _CONVERSION: ("event_id", "ts", "type", "value")}


def arm_of(decision: dict) -> str:
    if decision["outcome"] == "control":
        return "holdout" if decision.get("gate") == "global_holdout" else "control"
    return ARMS.get(decision["outcome"], "none")


def converted(record: dict) -> bool:
    goal = record["goal"]
    if goal == "retain":
        return not record["cancelled"]
    if goal == "resolve":
        return not record["called"]
    return record["purchases"] > 0


@dataclass
class Attributor:
    """Folds decisions, outcomes and conversion events of one key into attribution records."""

    window_ms: int
    goal_of: object = field(default=lambda action_id: "purchase")  # action id -> purchase, retain or resolve

    def on_decision(self, state: dict, decision: dict) -> list[dict]:
        did = decision["decision_id"]
        if did in state["open"] or did in state["closed"]:
            return []  # a replay: already attributed
        if decision["ts"] + 2 * self.window_ms < state.get("latest", 0):
            return []  # a replay of a decision pruned long ago (its id may have left "closed"): not reopened
        rec = {
            "decision_id": did, "key": decision["key"], "visitor_id": decision["visitor_id"],
            "customer_id": decision["customer_id"], "revision": 0, "decision_ts": decision["ts"],
            "window_end_ts": decision["ts"] + self.window_ms, "updated_ts": decision["ts"], "signal": decision["signal"],
            "arm": arm_of(decision), "outcome": decision["outcome"], "gate": decision["gate"],
            "action_id": decision["action_id"], "channel": decision["channel"], "skill": decision["skill"],
            "goal": self.goal_of(decision["action_id"]), "score": float(decision["score"]),
            "shown": False, "accepted": False, "declined": False, "abandoned": False, "expired": False,
            "agent_seconds": 0.0, "purchases": 0, "revenue": 0.0, "cancelled": False, "lost_value": 0.0,
            "called": False, "converted": False, "incomplete": False,
            "ruleset_version": decision.get("ruleset_version", ""), "seen": [],
            # what the uplift model learns from: only decisions with an action (taken or not) teach it
            "features": dict(decision.get("features") or {}) if decision["action_id"] else {},
        }
        rec["converted"] = converted(rec)
        state["open"][did] = rec
        for ts, kind, _id, thing in state["early"]:
            if kind == _OUTCOME and thing["decision_id"] == did:
                self._outcome(rec, thing)
            elif kind == _CONVERSION:
                self._conversion(rec, thing)
        evicted = self._prune(state, decision["ts"])
        if did not in state["open"] and any(e["decision_id"] == did for e in evicted):
            return evicted  # older than the key's MAX_OPEN newest: published once, incomplete
        return [_public(rec)] + evicted

    def on_outcome(self, state: dict, outcome: dict) -> list[dict]:
        rec = state["open"].get(outcome.get("decision_id") or "")
        if rec is None:
            if outcome.get("decision_id") not in state["closed"]:
                self._keep_early(state, outcome["ts"], _OUTCOME, outcome["outcome_id"], outcome)
            return []
        return [_public(rec)] if self._outcome(rec, outcome) else []

    def on_conversion(self, state: dict, event: dict) -> list[dict]:
        if event["type"] not in GOAL_EVENTS:
            return []
        changed = [_public(rec) for rec in state["open"].values() if self._conversion(rec, event)]
        self._keep_early(state, event["ts"], _CONVERSION, event["event_id"], event)
        return changed + self._prune(state, event["ts"])

    def _outcome(self, rec: dict, outcome: dict) -> bool:
        if not _first_time(rec, "o:" + outcome["outcome_id"]):
            return False
        kind = outcome["type"]
        if kind in OUTCOME_FLAGS:
            rec[OUTCOME_FLAGS[kind]] = True
        elif kind == "handled":
            rec["agent_seconds"] += max(0.0, float(outcome.get("value") or 0.0))
        else:
            return False  # an outcome type this stage does not count (e.g. converted: events say that)
        _bump(rec, outcome["ts"])
        return True

    def _conversion(self, rec: dict, event: dict) -> bool:
        if not rec["decision_ts"] <= event["ts"] < rec["window_end_ts"]:
            return False
        if not _first_time(rec, "e:" + event["event_id"]):
            return False
        value = max(0.0, float(event.get("value") or 0.0))
        if event["type"] == "purchase":
            rec["purchases"] += 1
            rec["revenue"] += value
        elif event["type"] == "cancel":
            rec["cancelled"] = True
            rec["lost_value"] += value
        else:
            rec["called"] = True
        _bump(rec, event["ts"])
        return True

    def _keep_early(self, state: dict, ts: int, kind: str, id_: str, thing: dict) -> None:
        if any(e[2] == id_ and e[1] == kind for e in state["early"]):
            return
        state["early"].append([ts, kind, id_, {k: thing.get(k) for k in _EARLY_FIELDS[kind]}])
        state["early"].sort(key=lambda e: e[0])
        del state["early"][:-MAX_EARLY]

    def _prune(self, state: dict, now_ts: int) -> list[dict]:
        """Drop what can no longer be attributed; returns the records of decisions dropped before their window ended.

        A decision stops being attributable a window after its own window ended (outcomes such as
        handling time may still come in then); an early thing waits at most one window for its decision.
        Beyond MAX_OPEN open decisions, the oldest is dropped early and published `incomplete`: for
        retain and resolve, "converted" would otherwise stand for a cancellation or call never looked for.
        """
        state["latest"] = max(state.get("latest", 0), now_ts)
        cutoff = state["latest"] - self.window_ms
        state["early"] = [e for e in state["early"] if e[0] >= cutoff]
        opened = sorted(state["open"].values(), key=lambda r: (r["decision_ts"], r["decision_id"]))
        evicted = []
        for i, rec in enumerate(opened):
            if rec["window_end_ts"] < cutoff or i < len(opened) - MAX_OPEN:
                del state["open"][rec["decision_id"]]
                state["closed"].append(rec["decision_id"])
                if rec["window_end_ts"] > now_ts:
                    rec["incomplete"] = True
                    rec["revision"] += 1
                    evicted.append(_public(rec))
        del state["closed"][:-MAX_CLOSED]
        return evicted


def _first_time(rec: dict, id_: str) -> bool:
    if id_ in rec["seen"]:
        return False
    rec["seen"].append(id_)
    del rec["seen"][:-MAX_SEEN]
    return True


def _bump(rec: dict, ts: int) -> None:
    rec["revision"] += 1
    rec["updated_ts"] = max(rec["updated_ts"], ts)
    rec["converted"] = converted(rec)


def _public(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "seen"}
