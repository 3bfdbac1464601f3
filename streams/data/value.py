"""Decides what a customer is worth and which segment they are in: CRM's lifetime value, else an estimate from purchases.

The estimate is an exponentially weighted spend rate, a recency/frequency/monetary (RFM) measure
with decay. Each purchase adds its value to a running sum that halves every `half_life` of event
time, so recent and frequent spending weighs most and a customer who stops buying fades:

    S(t)        = sum over purchases i of  value_i * 2 ** (-(t - t_i) / half_life)
    yearly(t)   = S(t) * ln 2 / half_life * 365 days   (for steady spending of r a day, S tends to
                                                        r * half_life / ln 2, so this gives back r * 365)
    CLV(t)      = yearly(t) * lifetime_years * margin

Worked example (tested): half_life 180 days, lifetime 3 years, margin 1; purchases of 100 and 50,
90 days apart; 30 days after the second, S = 100 * 2**(-120/180) + 50 * 2**(-30/180) = 63.00 + 44.54
= 107.541, yearly = 107.541 * 0.69315 / 180 * 365 = 151.154, CLV = 3 * 151.154 = 453.46.

Segments are the first rule of rules/segments.yaml whose `when` holds, over: clv, clv_source,
purchases, days_since_purchase, days_as_customer (since the first purchase), crm_segment, known.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from streams.bounded import MERGED_KEPT, put_newest
from streams.rules.expr import Compiled, ExprError, Names, compile_expr, evaluate
from streams.rules.loader import RuleError, check_keys, duration_ms, line_of, load_yaml, read_rule_file

DAY_MS = 86_400_000
RECENT_PURCHASE_IDS = 20  # purchases remembered by event id, so a replayed one is not counted twice
MAX_SEGMENTS = 50
SEGMENT_NAMES = Names(args=("f",), roots={name: ("f", name) for name in (
    "clv", "clv_source", "purchases", "days_since_purchase", "days_as_customer", "crm_segment", "known")}, fields={})


@dataclass(frozen=True)
class Segment:
    name: str
    when: Compiled | None
    line: int


@dataclass(frozen=True)
class ValueRules:
    name: str
    version: str
    half_life_ms: int
    lifetime_years: float
    margin: float
    segments: tuple[Segment, ...]


# -- the purchases of one customer -----------------------------------------------------------------
def on_purchase(state: dict | None, event: dict, half_life_ms: int) -> dict | None:
    """The customer's value state after a purchase event; None when it changes nothing (seen already, no value)."""
    amount = event.get("value")
    if not amount or amount <= 0 or not math.isfinite(amount):
        return None
    state = dict(state) if state else {"n": 0, "s": 0.0, "at": event["ts"], "first": event["ts"], "last": event["ts"],
                                       "ids": []}
    if event["event_id"] in state["ids"]:
        return None
    ts = event["ts"]
    if ts >= state["at"]:  # the sum moves on to this purchase's time, then takes it whole
        state["s"] = state["s"] * _decay(ts - state["at"], half_life_ms) + amount
        state["at"] = ts
    else:  # a late one: it has decayed since, to the time the sum is kept at
        state["s"] += amount * _decay(state["at"] - ts, half_life_ms)
    state["n"] += 1
    state["first"], state["last"] = min(state["first"], ts), max(state["last"], ts)
    state["ids"] = (state["ids"] + [event["event_id"]])[-RECENT_PURCHASE_IDS:]
    return state


def purchase_sum(state: dict | None, half_life_ms: int) -> dict | None:
    """A key's purchases with those of the keys merged into it, as one sum (a StateMove's PurchaseSum)."""
    if not state:
        return None
    parts = [state] + list(state.get("merged", {}).values())
    at = max(p["at"] for p in parts)
    return {"n": sum(p["n"] for p in parts), "s": sum(p["s"] * _decay(at - p["at"], half_life_ms) for p in parts),
            "at": at, "first": min(p["first"] for p in parts), "last": max(p["last"] for p in parts)}


def on_merge(state: dict | None, from_key: str, moved: dict) -> dict | None:
    """The value state with another key's purchases in it (a StateMove); None when nothing changed.

    Kept under `from_key`, replacing what that key sent before: a move received twice, or again after
    more purchases, is never counted twice. A state that only holds merged keys has no purchases of its own."""
    moved = {k: moved[k] for k in ("n", "s", "at", "first", "last")}
    state = dict(state) if state else {"n": 0, "s": 0.0, "at": moved["at"], "first": moved["first"],
                                       "last": moved["last"], "ids": []}
    merged = dict(state.get("merged", {}))
    if merged.get(from_key) == moved:
        return None
    put_newest(merged, from_key, moved, MERGED_KEPT)
    state["merged"] = merged
    return state


def _decay(elapsed_ms: int, half_life_ms: int) -> float:
    return 2.0 ** (-max(elapsed_ms, 0) / half_life_ms)


def estimated_clv(state: dict | None, at_ts: int, rules: ValueRules) -> float:
    if not state:
        return 0.0
    spend = state["s"] * _decay(at_ts - state["at"], rules.half_life_ms)
    yearly = spend * math.log(2) / (rules.half_life_ms / DAY_MS) * 365
    return yearly * rules.lifetime_years * rules.margin


def customer_value(profile: dict | None, state: dict | None, at_ts: int, rules: ValueRules) -> dict:
    """The CustomerValue record for a signal at `at_ts`: CRM's CLV when it gives one, else the estimate."""
    state = purchase_sum(state, rules.half_life_ms)
    if state is not None and not state["n"]:
        state = None
    if profile is not None and profile.get("clv", 0.0) > 0:
        clv, source = float(profile["clv"]), "crm"
    elif state:
        clv, source = round(estimated_clv(state, at_ts, rules), 2), "estimate"
    else:
        clv, source = 0.0, "none"
    facts = {
        "clv": clv, "clv_source": source, "purchases": state["n"] if state else 0,
        "days_since_purchase": (at_ts - state["last"]) / DAY_MS if state else None,
        "days_as_customer": (at_ts - state["first"]) / DAY_MS if state else None,
        "crm_segment": profile.get("segment") if profile else None, "known": profile is not None,
    }
    return {"clv": clv, "clv_source": source, "segment": segment_of(rules, facts), "purchases": facts["purchases"],
            "last_purchase_ts": state["last"] if state else None}


def segment_of(rules: ValueRules, facts: dict) -> str:
    for segment in rules.segments:
        if evaluate(segment.when, facts):
            return segment.name
    return rules.segments[-1].name  # the last has no condition (checked when the file is read)


# -- rules/segments.yaml ---------------------------------------------------------------------------
def compile_segments(text: str, file: str, name: str | None = None) -> ValueRules:
    doc = load_yaml(text, file)
    if not isinstance(doc, dict):
        raise RuleError(file, 1, "a segments file is a mapping with 'value:' and 'segments:'")
    check_keys(doc, {"value", "segments", "name", "kind"}, {"segments"}, file, None, "the file")
    value = doc.get("value") or {}
    vline = line_of(value, 1)
    if not isinstance(value, dict):
        raise RuleError(file, vline, "value must be a mapping of half_life, lifetime_years and margin")
    check_keys(value, {"half_life", "lifetime_years", "margin"}, set(), file, None, "value")
    half_life = duration_ms(value.get("half_life", "180d"), file, vline, None, "half_life")
    lifetime, margin = value.get("lifetime_years", 3), value.get("margin", 1.0)
    for what, x, most in (("lifetime_years", lifetime, 100), ("margin", margin, 1)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x <= most:
            raise RuleError(file, vline, f"{what} must be a number above 0 and at most {most}, got {x!r}")
    nodes = doc["segments"]
    if not isinstance(nodes, list) or not nodes:
        raise RuleError(file, line_of(doc, 1), "segments must list at least one segment")
    if len(nodes) > MAX_SEGMENTS:
        raise RuleError(file, line_of(doc, 1), f"{len(nodes)} segments; at most {MAX_SEGMENTS}")
    segments, seen = [], {}
    for i, node in enumerate(nodes):
        line = line_of(node, line_of(doc, 1))
        if not isinstance(node, dict):
            raise RuleError(file, line, "each segment is a mapping like {name: at-risk, when: 'days_since_purchase > 90'}")
        check_keys(node, {"name", "when", "description"}, {"name"}, file, None, "a segment")
        seg_name = node["name"]
        if not isinstance(seg_name, str) or not seg_name.strip() or len(seg_name) > 64:
            raise RuleError(file, line, "a segment's name must be a text of 1 to 64 characters")
        if seg_name in seen:
            raise RuleError(file, line, f"segment {seg_name!r} is named twice (first at line {seen[seg_name]})")
        seen[seg_name] = line
        last = i == len(nodes) - 1
        if last and "when" in node:
            raise RuleError(file, line, "the last segment has no 'when': it is everyone the others leave")
        if not last and "when" not in node:
            raise RuleError(file, line, f"segment {seg_name!r} needs a 'when' (only the last one goes without)")
        when = None
        if not last:
            if not isinstance(node["when"], str):
                raise RuleError(file, line, f"when must be an expression in quotes, got {node['when']!r}")
            try:
                when = compile_expr(node["when"], SEGMENT_NAMES)
            except ExprError as exc:
                raise RuleError(file, line, f"segment {seg_name!r}: {exc}") from None
        segments.append(Segment(seg_name, when, line))
    return ValueRules(name=name or Path(file).stem, version=hashlib.sha256(text.encode()).hexdigest()[:12],
                      half_life_ms=half_life, lifetime_years=float(lifetime), margin=float(margin),
                      segments=tuple(segments))


def load_segments(path: Path) -> ValueRules:
    text, file = read_rule_file(path)
    return compile_segments(text, file)
