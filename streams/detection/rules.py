"""Decides what a detection rule file means: validates it and compiles every rule once into fast tests.

A rule's `when` is one of: a single event (with `all`/`any`/`not` combinations), a `count` within
a sliding window, a `sequence` of steps `within` a duration, a `dwell` (time in a section of the
site), each optionally followed by `then_absent` (an awaited event that does not come in time)
and guarded by a `where` over the session when it fires. See rules/README.md for the language.
"""
from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from streams.detection.state import RuleKind
from streams.rules.expr import Compiled, ExprError, Names, compile_expr
from streams.rules.loader import (RuleError, check_keys, compile_each, duration_ms, line_of, line_of_key, load_yaml,
                                  read_rule_file, signal_and_priority, whole_number)

EVENT_FIELDS = ("event_id", "ts", "visitor_id", "customer_id", "channel", "type", "path", "query", "value", "attributes")
SESSION_FIELDS = frozenset({"pages", "events", "duration_s", "returning", "searches"})
CART_FIELDS = frozenset({"value", "items"})

DETECTION_NAMES = Names(
    args=("ev", "s"),
    roots={**{f: ("ev", f) for f in EVENT_FIELDS}, "event": ("ev", None), "session": ("s", None), "cart": ("s", "cart")},
    fields={"session": SESSION_FIELDS, "cart": CART_FIELDS, "event": frozenset(EVENT_FIELDS)},
)

MAX_STEPS = 10
MAX_COUNT = 100  # bounds a count rule's state: at most this many events per visitor
MAX_RULES = 500  # rules in one file: detection runs the ones an event concerns on every event
MAX_CONDITION_DEPTH = 6  # all/any/not nested in each other
MAX_CONDITION_ITEMS = 32  # conditions in one all/any
RULE_KEYS = {"id", "description", "when", "signal", "priority", "once_per_session"}
CONDITION_KEYS = {"event", "where", "all", "any", "not"}

Test = Callable[[dict, dict], bool]  # (event, session view) -> matches


@dataclass(frozen=True)
class Condition:
    """A test on one event (and the session): its type, an expression, or all/any/not of others."""

    text: str            # how it reads, for messages and fingerprints
    types: frozenset[str] | None  # event types it can match; None: any type
    test: Test
    path_prefix: str | None = None  # it can only match events whose path starts with this (lower case)


@dataclass(frozen=True)
class DetectionRule:
    id: str
    signal: str
    description: str
    priority: int
    kind: RuleKind
    steps: tuple[Condition, ...]   # event/count/dwell: one; sequence: the steps in order
    at_least: int = 1              # count: how many matching events
    within_ms: int = 0             # count / sequence: the window
    dwell_ms: int = 0              # dwell: how long in the section
    absent: Condition | None = None  # then_absent: the awaited event ...
    absent_ms: int = 0               # ... that must not come within this long
    guard: Compiled | None = None  # where, checked when the rule fires
    once_per_session: bool = False
    line: int = 0
    fingerprint: str = ""          # changes when what the rule matches changes; state survives otherwise

    @property
    def event_types(self) -> frozenset[str] | None:
        """Event types this rule must see; None: every event."""
        conds = list(self.steps) + ([self.absent] if self.absent else [])
        if any(c.types is None for c in conds):
            return None
        return frozenset().union(*(c.types for c in conds))

    @property
    def timed(self) -> bool:
        return self.absent is not None or self.kind == RuleKind.DWELL


@dataclass
class DetectionRuleSet:
    name: str
    version: str
    rules: list[DetectionRule]
    source: str = ""
    by_id: dict[str, DetectionRule] = field(default_factory=dict)
    # rule index by event type, so an event only touches the rules that can care about it
    by_type: dict[str, tuple[DetectionRule, ...]] = field(default_factory=dict)
    any_type: tuple[DetectionRule, ...] = ()

    def __post_init__(self):
        self.by_id = {r.id: r for r in self.rules}
        typed: dict[str, list[DetectionRule]] = {}
        any_type = []
        for rule in self.rules:
            types = rule.event_types
            if types is None:
                any_type.append(rule)
            else:
                for t in types:
                    typed.setdefault(t, []).append(rule)
        self.any_type = tuple(any_type)
        # file order within each list, so the order of signals is deterministic
        order = {r.id: i for i, r in enumerate(self.rules)}
        self.by_type = {t: tuple(sorted(rs + any_type, key=lambda r: order[r.id])) for t, rs in typed.items()}

        self._for_event: dict[tuple[str, str | None], tuple[DetectionRule, ...]] = {}

    def plans_for(self, event_type: str, path: str | None) -> tuple[tuple, ...]:
        """The rules an event of this type and path can concern, in file order, as
        (rule, RuleKind, first step's test, awaited event's test or None, all steps' tests).

        Indexed by type and by the first characters of the path, since most rules of a real rule
        set name a section of the site (`path startswith "/shop/tv"`): with 50 rules an event
        touches ~8 instead of ~25 (measured by make bench). Unpacked once per rule in detect's
        loop instead of chasing attributes: measured ~0.15 µs per rule.
        """
        key = (event_type, path[:PATH_KEY].lower() if isinstance(path, str) else None)
        hit = self._for_event.get(key)
        if hit is None:
            hit = tuple((r, r.kind, r.steps[0].test, r.absent.test if r.absent else None,
                         tuple(c.test for c in r.steps))
                        for r in self.by_type.get(event_type, self.any_type) if _may_concern(r, key[0], key[1]))
            if len(self._for_event) >= 10_000:  # bounded whatever paths producers send
                self._for_event.clear()
            self._for_event[key] = hit
        return hit


PATH_KEY = 4  # characters of the path the rule index looks at


def _may_concern(rule: DetectionRule, event_type: str, path_key: str | None) -> bool:
    conds = list(rule.steps) + ([rule.absent] if rule.absent else [])
    return any((c.types is None or event_type in c.types)
               and (c.path_prefix is None or (path_key is not None and path_key.startswith(c.path_prefix[:PATH_KEY])))
               for c in conds)


def _event_types(value, file, line, rule_id) -> frozenset[str] | None:
    if value in (None, "any", "*"):
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(t, str) and t for t in items):
        raise RuleError(file, line, "event must be an event type or a list of them, e.g. event: search", rule_id)
    return frozenset(items)


def _expr(text, file, line, rule_id, what="where", guard: ast.expr | None = None) -> Compiled:
    if not isinstance(text, str):
        raise RuleError(file, line, f"{what} must be an expression in quotes, got {text!r}", rule_id)
    try:
        return compile_expr(text, DETECTION_NAMES, guard=guard)
    except ExprError as exc:
        raise RuleError(file, line, f"{what}: {exc}", rule_id) from None


def compile_condition(node, file: str, line: int, rule_id: str, what: str, extra: set[str] = frozenset(),
                      depth: int = 0) -> Condition:
    """One event condition: {event, where} or {all: [...]}, {any: [...]}, {not: {...}}; `extra` keys are the caller's."""
    line = line_of(node, line)
    if depth > MAX_CONDITION_DEPTH:
        raise RuleError(file, line, f"all/any/not are nested more than {MAX_CONDITION_DEPTH} deep", rule_id)
    if isinstance(node, str):  # shorthand: a bare event type
        node = {"event": node}
    if not isinstance(node, dict):
        raise RuleError(file, line, f"{what} must be a mapping such as {{event: search, where: '...'}}", rule_id)
    check_keys(node, CONDITION_KEYS | set(extra), set(), file, rule_id, what)
    own = [k for k in ("event", "all", "any", "not") if k in node]
    if len(own) > 1:
        raise RuleError(file, line, f"{what} takes one of event, all, any or not, not {' and '.join(own)}", rule_id)
    if not own and "where" not in node:
        raise RuleError(file, line, f"{what} needs event, where, all, any or not", rule_id)
    parts: list[Condition] = []
    if "all" in node or "any" in node:
        key = "all" if "all" in node else "any"
        items = node[key]
        kline = line_of_key(node, key, line)
        if not isinstance(items, list) or not items:
            raise RuleError(file, kline, f"{key} must be a list of conditions", rule_id)
        if len(items) > MAX_CONDITION_ITEMS:
            raise RuleError(file, kline, f"{key} lists {len(items)} conditions; at most {MAX_CONDITION_ITEMS}", rule_id)
        subs = [compile_condition(item, file, kline, rule_id, f"{key} item", depth=depth + 1) for item in items]
        tests = tuple(c.test for c in subs)
        if key == "all":
            known = [c.types for c in subs if c.types is not None]
            types = frozenset.intersection(*known) if known else None
            prefixes = [c.path_prefix for c in subs if c.path_prefix]
            prefix = max(prefixes, key=len) if prefixes else None
            test = (lambda ev, s: all(t(ev, s) for t in tests)) if len(tests) > 2 else \
                (lambda ev, s, a=tests[0], b=tests[-1]: a(ev, s) and b(ev, s))
        else:
            types = None if any(c.types is None for c in subs) else frozenset().union(*(c.types for c in subs))
            prefix = None
            test = lambda ev, s: any(t(ev, s) for t in tests)  # noqa: E731
        parts.append(Condition(f"{key}({', '.join(c.text for c in subs)})", types, test, prefix))
    elif "not" in node:
        sub = compile_condition(node["not"], file, line_of_key(node, "not", line), rule_id, "not", depth=depth + 1)
        inner = sub.test
        parts.append(Condition(f"not({sub.text})", None, lambda ev, s: not inner(ev, s)))
    elif "event" in node or "where" in node:
        # the event type check and the expression compile into one function: one Python call per test
        types = _event_types(node.get("event"), file, line_of_key(node, "event", line), rule_id)
        guard = None if types is None else ast.Compare(
            left=ast.Subscript(value=ast.Name("ev", ast.Load()), slice=ast.Constant("type"), ctx=ast.Load()),
            ops=[ast.Eq() if len(types) == 1 else ast.In()],
            comparators=[ast.Constant(next(iter(types))) if len(types) == 1 else ast.Tuple(
                elts=[ast.Constant(t) for t in sorted(types)], ctx=ast.Load())])
        label = "any event" if types is None else f"event in {sorted(types)}"
        if "where" in node:
            compiled = _expr(node["where"], file, line_of_key(node, "where", line), rule_id, guard=guard)
            parts.append(Condition(f"{label} where {compiled.text}", types, compiled.test, compiled.path_prefix))
        elif types is None:
            parts.append(Condition(label, None, lambda ev, s: True))
        else:
            parts.append(Condition(label, types, (lambda ev, s, t=next(iter(types)): ev["type"] == t) if len(types) == 1
                                   else (lambda ev, s, ts=types: ev["type"] in ts)))
        return parts[0]
    if "where" in node:  # all/any/not with a where beside them
        compiled = _expr(node["where"], file, line_of_key(node, "where", line), rule_id)
        parts.append(Condition(compiled.text, None, compiled.test, compiled.path_prefix))
    if len(parts) == 1:
        return parts[0]
    first, second = parts
    return Condition(f"{first.text} where {second.text}", first.types,
                     lambda ev, s, a=first.test, b=second.test: a(ev, s) and b(ev, s),
                     first.path_prefix or second.path_prefix)


def _fingerprint(rule_id: str, when) -> str:
    return hashlib.sha256(json.dumps([rule_id, when], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _compile_when(when: dict, wline: int, file: str, rule_id: str) -> dict:
    """The kind-specific parts of a rule from its `when` mapping."""
    trailing = {"then_absent", "where"}
    if "count" in when:
        check_keys(when, {"count"} | trailing, {"count"}, file, rule_id, "when")
        count = when["count"]
        cline = line_of(count, wline)
        if not isinstance(count, dict):
            raise RuleError(file, cline, "count must be a mapping with event, at_least and within", rule_id)
        for key in ("at_least", "within"):
            if key not in count:
                raise RuleError(file, cline, f"count needs {key!r}", rule_id)
        cond = compile_condition(count, file, cline, rule_id, "count", extra={"at_least", "within"})
        return dict(kind=RuleKind.COUNT, steps=(cond,),
                    at_least=whole_number(count["at_least"], 2, MAX_COUNT, file, line_of_key(count, "at_least", cline),
                                           rule_id, "at_least"),
                    within_ms=duration_ms(count["within"], file, line_of_key(count, "within", cline), rule_id, "within"))
    if "sequence" in when:
        check_keys(when, {"sequence", "within"} | trailing, {"sequence", "within"}, file, rule_id, "when")
        steps = when["sequence"]
        sline = line_of_key(when, "sequence", wline)
        if not isinstance(steps, list) or not 2 <= len(steps) <= MAX_STEPS:
            raise RuleError(file, sline, f"sequence must be a list of 2 to {MAX_STEPS} steps", rule_id)
        return dict(kind=RuleKind.SEQUENCE,
                    steps=tuple(compile_condition(s, file, sline, rule_id, f"sequence step {i + 1}") for i, s in enumerate(steps)),
                    within_ms=duration_ms(when["within"], file, line_of_key(when, "within", wline), rule_id, "within"))
    if "dwell" in when:
        check_keys(when, {"dwell"} | trailing, {"dwell"}, file, rule_id, "when")
        dwell = when["dwell"]
        dline = line_of(dwell, wline)
        if not isinstance(dwell, dict) or "at_least" not in dwell:
            raise RuleError(file, dline, "dwell must be a mapping with the section (event, where) and at_least", rule_id)
        return dict(kind=RuleKind.DWELL, steps=(compile_condition(dwell, file, dline, rule_id, "dwell", extra={"at_least"}),),
                    dwell_ms=duration_ms(dwell["at_least"], file, line_of_key(dwell, "at_least", dline), rule_id, "at_least"))
    cond = compile_condition(when, file, wline, rule_id, "when", extra={"then_absent"})
    return dict(kind=RuleKind.EVENT, steps=(cond,))


def _compile_rule(node, file: str) -> DetectionRule:
    line = line_of(node, 0)
    if not isinstance(node, dict):
        raise RuleError(file, line, "each rule must be a mapping with id, when and signal")
    rule_id = node.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise RuleError(file, line, "a rule needs an id (a short name)")
    check_keys(node, RULE_KEYS, {"when", "signal"}, file, rule_id, "a rule")
    signal, priority = signal_and_priority(node, file, line, rule_id)
    once = node.get("once_per_session", False)
    if not isinstance(once, bool):
        raise RuleError(file, line_of_key(node, "once_per_session", line), "once_per_session must be true or false", rule_id)
    when = node["when"]
    wline = line_of_key(node, "when", line)
    if not isinstance(when, dict):
        raise RuleError(file, wline, "when must be a mapping such as {event: search, where: '...'}", rule_id)
    parts = _compile_when(when, line_of(when, wline), file, rule_id)
    if "then_absent" in when:
        ta = when["then_absent"]
        tline = line_of_key(when, "then_absent", wline)
        if not isinstance(ta, dict) or "for" not in ta:
            raise RuleError(file, tline, "then_absent must be a mapping with the awaited event and for, "
                                         "e.g. {event: purchase, for: 3m}", rule_id)
        parts["absent"] = compile_condition(ta, file, tline, rule_id, "then_absent", extra={"for"})
        parts["absent_ms"] = duration_ms(ta["for"], file, line_of_key(ta, "for", tline), rule_id, "for")
    if parts["kind"] != RuleKind.EVENT and "where" in when:
        parts["guard"] = _expr(when["where"], file, line_of_key(when, "where", wline), rule_id)
    return DetectionRule(id=rule_id, signal=signal, description=str(node.get("description", "")), priority=priority,
                         once_per_session=once, line=line, fingerprint=_fingerprint(rule_id, when), **parts)


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
    rules = compile_each(items, file, _compile_rule, MAX_RULES)
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return DetectionRuleSet(name=name or Path(file).stem, version=version, rules=rules, source=text)


def load_detection(path: Path) -> DetectionRuleSet:
    text, file = read_rule_file(path)
    return compile_detection(text, file)
