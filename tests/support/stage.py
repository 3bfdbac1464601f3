"""The records and rule sets the unit tests share: a customer C1 with a profile, signals, decisions, enriched signals."""
from __future__ import annotations

import dataclasses

from streams.data.value import load_segments
from streams.decision.actions import load_actions
from streams.decision.policy import decision_id
from streams.settings import REPO_ROOT
from tests.support import wire

SHIPPED_ACTIONS = load_actions(REPO_ROOT / "rules" / "actions.yaml")
# The shipped actions without the global hold-out, which would hold out C1 (the customer most tests
# use) from every offer, the quiet hours (T0 is 22:13 in London) and the minimum gap between offers;
# tests of those gates use SHIPPED_ACTIONS or a policy of their own.
ACTIONS = dataclasses.replace(SHIPPED_ACTIONS, policy=dataclasses.replace(SHIPPED_ACTIONS.policy, holdout_share=0.0,
                                                                          quiet_hours=None, min_gap_ms=0))
SEGMENTS = load_segments(REPO_ROOT / "rules" / "segments.yaml")
T0 = 1_700_000_000_000  # 2023-11-14 22:13 UTC, the same day in Europe/London


# ---- records ---------------------------------------------------------------------------------------


def signal(signal_id: str, visitor_id: str = "v1", customer_id: str | None = "C1", name: str = "cancel_intent",
           ts: int = T0, **over) -> dict:
    s = {"signal_id": signal_id, "ts": ts, "visitor_id": visitor_id, "customer_id": customer_id, "session_id": "s1",
         "signal": name, "rule_id": "cancel-intent", "rule_description": "Searched for how to cancel or leave",
         "ruleset_version": "r1", "priority": 80,
         "evidence": [{"event_id": "e1", "ts": ts, "type": "search", "channel": "web", "path": None,
                       "query": "terminate contract early", "value": None}],
         "session_pages": 3, "session_events": 4, "cart_value": 0.0, "returning": False, "session_seconds": 0.0,
         "attributes": {}, "last_event_ts": ts}
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
