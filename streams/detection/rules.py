"""Decides what a detection rule file means: validates it and compiles every rule once.

A rule is a single event with a condition, or a count of matching events within a sliding
window. See rules/README.md for the language.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


from streams.rules.expr import Compiled, ExprError, Names, compile_expr
from streams.rules.loader import RuleError, check_keys, duration_ms, line_of, line_of_key, load_yaml, read_rule_file

EVENT_FIELDS = ("event_id", "ts", "visitor_id", "customer_id", "channel", "type", "path", "query", "value", "attributes")
SESSION_FIELDS = frozenset({"pages", "events", "duration_s", "returning", "searches"})
CART_FIELDS = frozenset({"value", "items"})

DETECTION_NAMES = Names(
    args=("ev", "s"),
    roots={**{f: ("ev", f) for f in EVENT_FIELDS}, "event": ("ev", None), "session": ("s", None), "cart": ("s", "cart")},
    fields={"session": SESSION_FIELDS, "cart": CART_FIELDS, "event": frozenset(EVENT_FIELDS)},
)

SIGNAL_NAME_OK = "abcdefghijklmnopqrstuvwxyz0123456789_"


@dataclass(frozen=True)
class DetectionRule:
    id: str
    signal: str
    description: str
    priority: int
    event_types: frozenset[str] | None  # None: any event type
    where: Compiled | None
    # count rules: fire when at_least matching events fall within within_ms of each other
    at_least: int = 1
    within_ms: int = 0
    once_per_session: bool = False
    line: int = 0

    @property
    def is_count(self) -> bool:
        return self.at_least > 1


@dataclass
class DetectionRuleSet:
    name: str
    version: str
    rules: list[DetectionRule]
    # rule index by event type, so an event only touches the rules that can care about it
    by_type: dict[str, list[DetectionRule]] = field(default_factory=dict)
    any_type: list[DetectionRule] = field(default_factory=list)

    def __post_init__(self):
        for rule in self.rules:
            if rule.event_types is None:
                self.any_type.append(rule)
            else:
                for t in rule.event_types:
                    self.by_type.setdefault(t, []).append(rule)
        # preserve file order within each index list, so signal order is deterministic
        order = {r.id: i for i, r in enumerate(self.rules)}
        for t, rules in self.by_type.items():
            rules.extend(r for r in self.any_type if r not in rules)
            rules.sort(key=lambda r: order[r.id])

    def rules_for(self, event_type: str) -> list[DetectionRule]:
        return self.by_type.get(event_type, self.any_type)


def _event_types(value, file, line, rule_id) -> frozenset[str] | None:
    if value in (None, "any", "*"):
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t for t in items):
        raise RuleError(file, line, "event must be an event type or a list of them, e.g. event: search", rule_id)
    return frozenset(items)


def _where(text, file, line, rule_id) -> Compiled | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise RuleError(file, line, f"where must be an expression in quotes, got {text!r}", rule_id)
    try:
        return compile_expr(text, DETECTION_NAMES)
    except ExprError as exc:
        raise RuleError(file, line, f"where: {exc}", rule_id) from None


def _compile_rule(node, file: str) -> DetectionRule:
    line = line_of(node, 0)
    if not isinstance(node, dict):
        raise RuleError(file, line, "each rule must be a mapping with id, when and signal")
    rule_id = node.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise RuleError(file, line, "a rule needs an id (a short name)")
    check_keys(node, {"id", "description", "when", "signal", "priority", "once_per_session"}, {"when", "signal"}, file, rule_id, "a rule")
    signal = node["signal"]
    if not isinstance(signal, str) or not signal or not all(c in SIGNAL_NAME_OK for c in signal):
        raise RuleError(file, line, f"signal must be a lower_case_name, got {signal!r}", rule_id)
    priority = node.get("priority", 50)
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 100:
        raise RuleError(file, line, f"priority must be a whole number from 0 to 100, got {priority!r}", rule_id)
    once = node.get("once_per_session", False)
    if not isinstance(once, bool):
        raise RuleError(file, line, "once_per_session must be true or false", rule_id)
    when = node["when"]
    wline = line_of(when, line)
    if not isinstance(when, dict):
        raise RuleError(file, wline, "when must be a mapping such as {event: search, where: '...'}", rule_id)
    common = dict(id=rule_id, signal=signal, description=str(node.get("description", "")), priority=priority,
                  once_per_session=once, line=line)
    if "count" in when:
        check_keys(when, {"count"}, {"count"}, file, rule_id, "when")
        count = when["count"]
        cline = line_of(count, wline)
        if not isinstance(count, dict):
            raise RuleError(file, cline, "count must be a mapping with event, at_least and within", rule_id)
        check_keys(count, {"event", "where", "at_least", "within"}, {"event", "at_least", "within"}, file, rule_id, "count")
        at_least = count["at_least"]
        if not isinstance(at_least, int) or isinstance(at_least, bool) or not 2 <= at_least <= 1000:
            raise RuleError(file, cline, f"at_least must be a whole number from 2 to 1000, got {at_least!r}", rule_id)
        return DetectionRule(**common, event_types=_event_types(count["event"], file, cline, rule_id),
                             where=_where(count.get("where"), file, line_of_key(count, "where", cline), rule_id), at_least=at_least,
                             within_ms=duration_ms(count["within"], file, cline, rule_id, "within"))
    check_keys(when, {"event", "where"}, {"event"}, file, rule_id, "when")
    return DetectionRule(**common, event_types=_event_types(when["event"], file, wline, rule_id),
                         where=_where(when.get("where"), file, line_of_key(when, "where", wline), rule_id))


def compile_detection(text: str, file: str, name: str | None = None) -> DetectionRuleSet:
    """Validate and compile one detection rule file; raises RuleError naming file, line and reason."""
    doc = load_yaml(text, file)
    if isinstance(doc, dict) and "rules" in doc:
        check_keys(doc, {"rules", "name", "kind"}, {"rules"}, file, None, "the file")
        items = doc["rules"]
    else:
        items = doc
    if not isinstance(items, list) or not items:
        raise RuleError(file, 1, "a detection file is a list of rules (or a mapping with 'rules:')")
    rules, seen = [], {}
    for node in items:
        rule = _compile_rule(node, file)
        if rule.id in seen:
            raise RuleError(file, rule.line, f"id is used twice (first at line {seen[rule.id]})", rule.id)
        seen[rule.id] = rule.line
        rules.append(rule)
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return DetectionRuleSet(name=name or Path(file).stem, version=version, rules=rules)


def load_detection(path: Path) -> DetectionRuleSet:
    text, file = read_rule_file(path)
    return compile_detection(text, file)


