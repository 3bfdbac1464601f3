"""Decides which signals one interaction raises for its visitor, given the visitor's state.

Pure: `detect(state, event, rules)` returns the new state and the signals, so the same events
with the same rules give the same signals on replay, and the logic is tested without Kafka.
Event time (`ts`) drives sessions and windows.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

from streams.detection.rules import DetectionRule, DetectionRuleSet
from streams.rules.expr import evaluate

SESSION_GAP_MS = 20 * 60_000  # 20 minutes idle ends a session
SEEN_IDS = 64  # recent event ids kept per visitor to drop producer duplicates
EVIDENCE_EVENTS = 10


class InvalidEvent(ValueError):
    """An interaction that decodes but breaks the contract's rules (e.g. empty ids)."""


@dataclass
class Detection:
    state: dict
    signals: list[dict]
    duplicate: bool = False


def validate_event(ev: dict) -> None:
    if not ev.get("event_id"):
        raise InvalidEvent("event_id is empty")
    if not ev.get("visitor_id"):
        raise InvalidEvent("visitor_id is empty")
    if not ev.get("type"):
        raise InvalidEvent("type is empty")
    if ev.get("ts", 0) <= 0:
        raise InvalidEvent(f"ts must be epoch milliseconds, got {ev.get('ts')}")


def new_state() -> dict:
    return {"customer_id": None, "session": None, "sessions": 0, "cart": {"value": 0.0, "items": 0},
            "seen": [], "counts": {}, "fired": {}}


def evidence_of(ev: dict) -> dict:
    return {"event_id": ev["event_id"], "ts": ev["ts"], "type": ev["type"], "channel": ev["channel"],
            "path": ev.get("path"), "query": ev.get("query"), "value": ev.get("value")}


def signal_id(rule_id: str, visitor_id: str, event_id: str) -> str:
    return hashlib.sha256(f"{rule_id}\x1f{visitor_id}\x1f{event_id}".encode()).hexdigest()[:24]


def _advance_session(state: dict, ev: dict) -> dict:
    ts = ev["ts"]
    session = state["session"]
    if session is None or ts - session["last"] > SESSION_GAP_MS:
        state["sessions"] += 1
        session = {"id": f"{ev['visitor_id']}:{ts}", "start": ts, "last": ts, "pages": 0, "events": 0, "searches": 0}
        state["session"] = session
    session["last"] = max(session["last"], ts)
    session["events"] += 1
    if ev["type"] == "page_view":
        session["pages"] += 1
    elif ev["type"] == "search":
        session["searches"] += 1
    return session


def _update_cart(state: dict, ev: dict) -> None:
    cart = state["cart"]
    if ev["type"] == "add_to_cart":
        cart["items"] += 1
        cart["value"] = round(cart["value"] + (ev.get("value") or 0.0), 2)
    elif ev["type"] in ("purchase", "cart_cleared"):
        cart["items"], cart["value"] = 0, 0.0


def _session_view(state: dict, session: dict) -> dict:
    """What `session.*` and `cart.*` read in expressions."""
    return {"pages": session["pages"], "events": session["events"], "searches": session["searches"],
            "duration_s": (session["last"] - session["start"]) / 1000.0,
            "returning": state["sessions"] > 1, "cart": state["cart"]}


def _signal(rule: DetectionRule, rules: DetectionRuleSet, ev: dict, state: dict, session: dict, evidence: list[dict]) -> dict:
    return {
        "signal_id": signal_id(rule.id, ev["visitor_id"], ev["event_id"]),
        "ts": ev["ts"],
        "visitor_id": ev["visitor_id"],
        "customer_id": state["customer_id"],
        "session_id": session["id"],
        "signal": rule.signal,
        "rule_id": rule.id,
        "rule_description": rule.description,
        "ruleset_version": rules.version,
        "priority": rule.priority,
        "evidence": evidence[-EVIDENCE_EVENTS:],
        "session_pages": session["pages"],
        "session_events": session["events"],
        "cart_value": float(state["cart"]["value"]),
    }


def detect(state: dict | None, ev: dict, rules: DetectionRuleSet) -> Detection:
    validate_event(ev)
    state = new_state() if state is None else state
    seen = state["seen"]
    if ev["event_id"] in seen:
        return Detection(state, [], duplicate=True)
    seen.append(ev["event_id"])
    del seen[:-SEEN_IDS]
    if ev.get("customer_id"):
        # identity stitching, first slice: once a visitor logs in, later events are theirs
        state["customer_id"] = ev["customer_id"]
    session = _advance_session(state, ev)
    _update_cart(state, ev)
    view = _session_view(state, session)
    signals = []
    for rule in rules.rules_for(ev["type"]):
        if rule.once_per_session and state["fired"].get(rule.id) == session["id"]:
            continue
        if not evaluate(rule.where, ev, view):
            continue
        if rule.is_count:
            entries = state["counts"].setdefault(rule.id, [])
            bisect.insort(entries, [ev["ts"], evidence_of(ev)], key=lambda e: e[0])
            horizon = ev["ts"] - rule.within_ms
            entries[:] = [e for e in entries if e[0] > horizon][-rule.at_least:]
            if len(entries) < rule.at_least:
                continue
            evidence = [e[1] for e in entries]
            entries.clear()  # fire once per burst; the next burst counts afresh
        else:
            evidence = [evidence_of(ev)]
        if rule.once_per_session:
            state["fired"][rule.id] = session["id"]
        signals.append(_signal(rule, rules, ev, state, session, evidence))
    return Detection(state, signals)


def prune_state(state: dict, rules: DetectionRuleSet) -> dict:
    """Drop state of rules that no longer exist, so a visitor's state stays bounded."""
    ids = {r.id for r in rules.rules}
    state["counts"] = {k: v for k, v in state["counts"].items() if k in ids}
    state["fired"] = {k: v for k, v in state["fired"].items() if k in ids}
    return state
