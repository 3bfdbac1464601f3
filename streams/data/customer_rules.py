"""Decides which moments count across a customer's devices: rules over the customer's journey, raising customer signals.

A detection rule sees one device's events (rules/README.md, "Scope"). A customer rule sees the
customer's journey (streams/data/journey.py): every device and channel linked to them, the signals
raised there and the events that raised them, purchases, calls, offers and outcomes. It counts the
journey's steps of some kinds within a window, e.g. three failed logins within ten minutes, two on
the phone and one on the laptop:

    rules:
      - id: failed-logins-across-devices
        description: Failed to log in three times within ten minutes, on any of their devices
        count: {step: login_failed, at_least: 3, within: 10m}
        signal: login_trouble
        priority: 75

The data stage evaluates them on the customer's partition each time their journey gets a step that
may count (a signal of theirs, an event detection routes to the journey such as a failed login, a
journey moved from a device). A rule that fires raises a Signal like detection's (its
evidence: the steps counted, its id: a hash of the rule and those steps, so a replay raises the same
one), which goes on to the decision stage keyed by the customer; its step in the journey marks
where the rule counts afresh from. Customer signals are not counted by customer rules again. Rules
are evaluated only when a record adds a step to the journey: one read again adds none.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from streams.data.enrich import SCOPE_ATTRIBUTE
from streams.data.journey import MAX_AGE_MS, MAX_STEPS
from streams.rules.loader import (SIGNAL_NAME_OK, RuleError, check_keys, compile_each, duration_ms, line_of,
                                  line_of_key, load_yaml, read_rule_file, signal_and_priority)

MAX_RULES = 50
SCOPE = SCOPE_ATTRIBUTE  # the signal attribute that says a customer rule raised it
CUSTOMER = "customer"
REF_PREFIX = "customer:"  # a customer signal's id: customer:<rule id>:<hash of the steps>


@dataclass(frozen=True)
class CustomerRule:
    id: str
    description: str
    signal: str
    priority: int
    kinds: tuple[str, ...]
    at_least: int
    within_ms: int
    line: int


@dataclass(frozen=True)
class CustomerRuleSet:
    name: str
    version: str
    rules: tuple[CustomerRule, ...]


def fired(rules: CustomerRuleSet, journey: list[dict], trigger: dict) -> list[dict]:
    """The customer signals `journey` completes, raised on `trigger` (the customer's signal that just arrived)."""
    if trigger["attributes"].get(SCOPE) == CUSTOMER or not trigger["customer_id"]:
        return []
    out = []
    for rule in rules.rules:
        marker = f"{REF_PREFIX}{rule.id}:"
        # the rule counts afresh after its last signal: steps dated before it, arriving late from another
        # device's partition, count for nothing (they would make a second window of steps counted already)
        since = max((s["ts"] for s in journey if s["ref"].startswith(marker)), default=None)
        counted = [s for s in journey if s["kind"] in rule.kinds and not s["ref"].startswith(REF_PREFIX)
                   and (since is None or s["ts"] > since)]
        if len(counted) < rule.at_least:
            continue
        window = counted[-rule.at_least:]  # the newest: the window this step completed
        if window[-1]["ts"] - window[0]["ts"] > rule.within_ms or trigger["ts"] - window[0]["ts"] > rule.within_ms:
            continue  # too far apart, or old history a new rule would find: not a moment of now
        out.append(_signal(rules, rule, window, trigger))
    return out


def trigger_of(customer: str, visitor: str, ts: int) -> dict:
    """What a customer signal raised by a step that came without a signal (an event on engage.conversions,
    a journey moved from a device) says of its moment: the device and the time, no session."""
    return {"ts": ts, "visitor_id": visitor, "customer_id": customer, "session_id": "", "session_pages": 0,
            "session_events": 0, "cart_value": 0.0, "returning": False, "session_seconds": 0.0, "attributes": {}}


def _signal(rules: CustomerRuleSet, rule: CustomerRule, steps: list[dict], trigger: dict) -> dict:
    digest = hashlib.sha256("\x1f".join([rule.id] + [s["ref"] for s in steps]).encode()).hexdigest()[:16]
    return {
        "signal_id": f"{REF_PREFIX}{rule.id}:{digest}", "ts": steps[-1]["ts"], "visitor_id": trigger["visitor_id"],
        "customer_id": trigger["customer_id"], "session_id": trigger["session_id"], "signal": rule.signal,
        "rule_id": rule.id, "rule_description": rule.description, "ruleset_version": f"{rules.name}@{rules.version}",
        "priority": rule.priority,
        "evidence": [{"event_id": s["ref"], "ts": s["ts"], "type": s["kind"], "channel": s["channel"], "path": None,
                      "query": s["text"] or None, "value": None} for s in steps],
        "session_pages": trigger["session_pages"], "session_events": trigger["session_events"],
        "cart_value": trigger["cart_value"], "returning": trigger["returning"],
        "session_seconds": trigger["session_seconds"], "attributes": {SCOPE: CUSTOMER},
    }


# -- rules/customer.yaml ---------------------------------------------------------------------------
def compile_customer_rules(text: str, file: str, name: str | None = None) -> CustomerRuleSet:
    """Validate and compile a customer rule file; raises RuleError naming file, line and reason."""
    doc = load_yaml(text, file)
    if not isinstance(doc, dict) or "rules" not in doc:
        raise RuleError(file, 1, "a customer rule file is a mapping with 'rules:' (a list, possibly empty)")
    check_keys(doc, {"rules", "name", "kind"}, {"rules"}, file, None, "the file")
    items = doc["rules"] or []
    if not isinstance(items, list):
        raise RuleError(file, line_of(doc, 1), "rules must be a list")
    rules = compile_each(items, file, _compile_rule, MAX_RULES)
    return CustomerRuleSet(name=name or Path(file).stem, version=hashlib.sha256(text.encode()).hexdigest()[:12],
                           rules=tuple(rules))


def _compile_rule(node, file: str) -> CustomerRule:
    line = line_of(node, 0)
    if not isinstance(node, dict):
        raise RuleError(file, line, "each rule is a mapping with id, count and signal")
    rule_id = node.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip() or len(rule_id) > 64 or ":" in rule_id:
        raise RuleError(file, line, "a rule needs an id: a short name (at most 64 characters, no ':')")
    check_keys(node, {"id", "description", "count", "signal", "priority"}, {"count", "signal"}, file, rule_id, "a rule")
    signal, priority = signal_and_priority(node, file, line, rule_id)
    count = node["count"]
    cline = line_of_key(node, "count", line)
    if not isinstance(count, dict):
        raise RuleError(file, cline, "count must be a mapping like {step: login_failed, at_least: 3, within: 10m}",
                        rule_id)
    check_keys(count, {"step", "at_least", "within"}, {"step", "at_least", "within"}, file, rule_id, "count")
    kinds = count["step"] if isinstance(count["step"], list) else [count["step"]]
    if not kinds or not all(isinstance(k, str) and k and set(k) <= SIGNAL_NAME_OK for k in kinds):
        raise RuleError(file, cline, "step must be a journey step's kind (an event type such as login_failed, or "
                                     f"signal, offer, outcome), or a list of them; got {count['step']!r}", rule_id)
    at_least = count["at_least"]
    if not isinstance(at_least, int) or isinstance(at_least, bool) or not 2 <= at_least <= MAX_STEPS:
        raise RuleError(file, cline, f"at_least must be a whole number from 2 to {MAX_STEPS} (the journey keeps "
                                     f"{MAX_STEPS} steps), got {at_least!r}", rule_id)
    within = duration_ms(count["within"], file, cline, rule_id, "within")
    if within > MAX_AGE_MS:
        raise RuleError(file, cline, f"within must be at most {MAX_AGE_MS // 86_400_000} days (the journey's age cap)",
                        rule_id)
    return CustomerRule(id=rule_id, description=str(node.get("description", ""))[:500], signal=signal,
                        priority=priority, kinds=tuple(kinds), at_least=at_least, within_ms=within, line=line)


def load_customer_rules(path: Path) -> CustomerRuleSet:
    """The rules of `path`; none when there is no such file (a rules folder from before customer rules)."""
    if not path.exists():
        return CustomerRuleSet(name=path.stem, version="none", rules=())
    text, file = read_rule_file(path)
    return compile_customer_rules(text, file)
