"""Decides which signals one interaction raises for its visitor, given the visitor's state.

Pure: `detect(state, event, rules)` returns the new state and the signals; `fire_due(state, ...)`
fires the visitor's timers (absence, dwell) whose deadline the event-time watermark has passed.
The same events with the same rules give the same signals, in the same order, on replay.

State per visitor (JSON, bounded): identity, the session (20 minutes idle ends it), the cart,
recent event ids (duplicates are dropped), and per rule only what that rule needs: the events in
a count window, the partial matches of a sequence, the current visit of a dwell section, the
latest awaited event of an absence, plus pending timers. Each rule's state carries the rule's
fingerprint: after a hot reload, the state of rules whose `when` did not change is kept. The
stored keys are short and named in state.py.
"""
from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass
from operator import itemgetter

from streams.detection.rules import DetectionRule, DetectionRuleSet
from streams.detection.state import (ABSENT, AT, AWAITED, BUFFER, BUFFER_EVIDENCE, CART, CUSTOMER, DWELL, FINGERPRINT,
                                     FIRED, INDEXED, LAST_TS, LOOKS, RULES, RULESET, SEEN, SESSION, SESSIONS, STEP_MASK,
                                     TIMERS, WINDOW, WINDOW_EVIDENCE, RuleKind, Timer, timer_order)

SESSION_GAP_MS = 20 * 60_000  # 20 minutes idle ends a session
SEEN_IDS = 64                 # recent event ids kept per visitor to drop producer duplicates
EVIDENCE_EVENTS = 10          # events kept as evidence in a signal
SEQUENCE_BUFFER = 32          # candidate events kept per sequence rule
MAX_TIMERS = 16               # pending timers per visitor; the oldest are dropped beyond this
EVENT, COUNT, SEQUENCE = RuleKind.EVENT, RuleKind.COUNT, RuleKind.SEQUENCE  # globals: the per-event loop reads them


class InvalidEvent(ValueError):
    """An interaction that decodes but breaks the contract's rules (e.g. empty ids)."""


@dataclass
class Detection:
    state: dict
    signals: list[dict]
    duplicate: bool = False


# The longest text each field may hold: rules run on every event, and what they read must be
# bounded for their work to be (a producer's 1 MB query would cost every pattern a megabyte).
FIELD_LIMITS = {"event_id": 256, "visitor_id": 256, "customer_id": 256, "channel": 64, "type": 64, "path": 2048,
                "query": 1024}
MAX_ATTRIBUTES = 64            # entries in `attributes`
MAX_ATTRIBUTE_CHARS = 1024     # characters of one attribute's key or value
# what a signal carries of its visitor's latest attributes (device, returning, ...): for the decision
# stage's model and the agent; bounded, since it is kept in every visitor's state
SIGNAL_ATTRIBUTES = 8
SIGNAL_ATTRIBUTE_CHARS = 64


def validate_event(ev: dict) -> None:
    if not ev.get("event_id"):
        raise InvalidEvent("event_id is empty")
    if not ev.get("visitor_id"):
        raise InvalidEvent("visitor_id is empty")
    if not ev.get("type"):
        raise InvalidEvent("type is empty")
    if ev.get("ts", 0) <= 0:
        raise InvalidEvent(f"ts must be epoch milliseconds, got {ev.get('ts')}")
    for name, limit in FIELD_LIMITS.items():
        value = ev.get(name)
        if value is not None and len(value) > limit:
            raise InvalidEvent(f"{name} has {len(value):,} characters; at most {limit:,}")
    attributes = ev.get("attributes") or {}
    if len(attributes) > MAX_ATTRIBUTES:
        raise InvalidEvent(f"attributes has {len(attributes)} entries; at most {MAX_ATTRIBUTES}")
    for key, value in attributes.items():
        if len(key) > MAX_ATTRIBUTE_CHARS or len(value) > MAX_ATTRIBUTE_CHARS:
            raise InvalidEvent(f"an attribute's key or value has more than {MAX_ATTRIBUTE_CHARS:,} characters")


def new_state() -> dict:
    """A visitor never seen before (the keys are named in state.py)."""
    return {CUSTOMER: None, SESSIONS: 0, SESSION: None, CART: {"value": 0.0, "items": 0}, SEEN: {}, LAST_TS: 0,
            RULES: {}, TIMERS: [], FIRED: {}, INDEXED: None}


def restored(state: dict) -> dict:
    """The state as the code reads it: timers read back from JSON are lists, made Timers again."""
    timers = state[TIMERS]
    if timers and type(timers[0]) is not Timer:
        state[TIMERS] = [Timer(*t) for t in timers]
    return state


def signal_attributes(attributes: dict) -> dict:
    """The first SIGNAL_ATTRIBUTES attributes, keys and values cut to SIGNAL_ATTRIBUTE_CHARS."""
    out = {}
    for key, value in attributes.items():
        if len(out) == SIGNAL_ATTRIBUTES:
            break
        out[key[:SIGNAL_ATTRIBUTE_CHARS]] = value[:SIGNAL_ATTRIBUTE_CHARS]
    return out


def evidence_of(ev: dict) -> dict:
    return {"event_id": ev["event_id"], "ts": ev["ts"], "type": ev["type"], "channel": ev["channel"],
            "path": ev.get("path"), "query": ev.get("query"), "value": ev.get("value")}


def signal_id(rule_id: str, visitor_id: str, event_id: str) -> str:
    return hashlib.sha256(f"{rule_id}\x1f{visitor_id}\x1f{event_id}".encode()).hexdigest()[:24]


def _advance_session(state: dict, ev: dict) -> dict:
    ts = ev["ts"]
    session = state[SESSION]
    if session is None or ts - session["last"] > SESSION_GAP_MS:
        state[SESSIONS] += 1
        session = {"id": f"{ev['visitor_id']}:{ts}", "start": ts, "last": ts, "pages": 0, "events": 0, "searches": 0}
        state[SESSION] = session
    elif ts < session["start"]:
        session["start"] = ts  # a late event of this session
    if ts > session["last"]:
        session["last"] = ts
    session["events"] += 1
    t = ev["type"]
    if t == "page_view":
        session["pages"] += 1
    elif t == "search":
        session["searches"] += 1
    return session


def _update_cart(state: dict, ev: dict) -> None:
    t = ev["type"]
    if t == "add_to_cart":
        cart = state[CART]
        cart["items"] += 1
        cart["value"] = round(cart["value"] + (ev.get("value") or 0.0), 2)
    elif t == "purchase" or t == "cart_cleared":
        state[CART] = {"value": 0.0, "items": 0}


def session_view(state: dict) -> dict:
    """What `session.*` and `cart.*` read in expressions, and the session a signal belongs to."""
    session = state[SESSION] or {"id": "", "pages": 0, "events": 0, "searches": 0, "start": 0, "last": 0}
    return {"pages": session["pages"], "events": session["events"], "searches": session["searches"],
            "duration_s": (session["last"] - session["start"]) / 1000.0,
            "returning": state[SESSIONS] > 1, "cart": state[CART], "session_id": session["id"]}


def snapshot(view: dict) -> dict:
    """The view kept with a timer: what the rule's `where` and its signal read, as of when the timer was set.

    A timer fires once the partition's clock passes its deadline, which depends on other visitors'
    traffic; events of this visitor that are later than the deadline may have arrived meanwhile. Reading
    the session from the snapshot, not from the state at firing, keeps the signal the same whatever
    the other traffic.
    """
    return {**view, "cart": dict(view["cart"])}


def _rule_state(state: dict, rule: DetectionRule) -> dict:
    rs = state[RULES].get(rule.id)
    if rs is None or rs[FINGERPRINT] != rule.fingerprint:
        rs = state[RULES][rule.id] = {FINGERPRINT: rule.fingerprint}
    return rs


class _Run:
    """One visitor's pass over an event or a timer: collects signals in order."""

    __slots__ = ("state", "rules", "visitor_id", "signals")

    def __init__(self, state: dict, rules: DetectionRuleSet, visitor_id: str):
        self.state, self.rules, self.visitor_id, self.signals = state, rules, visitor_id, []

    def fire(self, rule: DetectionRule, ts: int, cause_id: str, evidence: list[dict], ev: dict, view: dict,
             guarded: bool = False) -> None:
        """Raise the rule's signal unless once_per_session or its `where` (unless `guarded`: checked already) stops it."""
        state = self.state
        session_id = view["session_id"]
        if rule.once_per_session and state[FIRED].get(rule.id) == session_id:
            return
        if not guarded and rule.guard is not None and not rule.guard.test(ev, view):
            return
        if rule.once_per_session:
            state[FIRED][rule.id] = session_id
        self.signals.append({
            "signal_id": signal_id(rule.id, self.visitor_id, cause_id),
            "ts": ts,
            "visitor_id": self.visitor_id,
            "customer_id": state[CUSTOMER],
            "session_id": session_id,
            "signal": rule.signal,
            "rule_id": rule.id,
            "rule_description": rule.description,
            "ruleset_version": self.rules.version,
            "priority": rule.priority,
            "evidence": evidence[-EVIDENCE_EVENTS:],
            "session_pages": view["pages"],
            "session_events": view["events"],
            "cart_value": float(view["cart"]["value"]),
            "returning": view["returning"],
            "session_seconds": view["duration_s"],
            "attributes": dict(state.get(LOOKS) or {}),
            "last_event_ts": state[LAST_TS] or ts,
        })

    def matched(self, rule: DetectionRule, rs: dict, ts: int, cause_id: str, evidence: list[dict], ev: dict,
                view: dict) -> None:
        """The rule's pattern is complete: fire now, or wait for the awaited event to stay away."""
        if rule.absent is None:
            self.fire(rule, ts, cause_id, evidence, ev, view)
            return
        deadline = ts + rule.absent_ms
        if ts <= rs.get(AWAITED, 0) < deadline:
            return  # the awaited event already came (it arrived before the event that completed the pattern)
        if rule.guard is not None and not rule.guard.test(ev, view):
            return  # `where` is checked when the pattern completes, on the session as it is then
        add_timer(self.state, Timer(deadline, rule.id, rule.fingerprint, ABSENT, ts, cause_id, evidence[-EVIDENCE_EVENTS:],
                                    snapshot(view)))


def add_timer(state: dict, timer: Timer) -> None:
    timers = state[TIMERS]
    bisect.insort(timers, timer, key=timer_order)
    if len(timers) > MAX_TIMERS:
        # keep the state bounded: the timer that would fire first is the oldest commitment
        del timers[0]


def _cancel_timers(state: dict, ev: dict, view: dict, rules: DetectionRuleSet) -> None:
    ts = ev["ts"]
    keep = []
    for t in state[TIMERS]:
        rule = rules.by_id.get(t.rule_id)
        if rule is None or rule.fingerprint != t.fingerprint:
            continue  # the rule was removed or changed by a reload
        if t.kind == ABSENT:
            if t.start <= ts < t.deadline and rule.absent.test(ev, view):
                continue  # the awaited event came in time
        elif t.start < ts < t.deadline and not rule.steps[0].test(ev, view):
            continue  # left the section before dwelling long enough
        keep.append(t)
    state[TIMERS] = keep


_at = itemgetter(AT)


def _count(run: _Run, rule: DetectionRule, rs: dict, ev: dict, view: dict) -> None:
    entries = rs.setdefault(WINDOW, [])
    ts = ev["ts"]
    bisect.insort(entries, [ts, evidence_of(ev)], key=_at)
    horizon = entries[-1][AT] - rule.within_ms
    if entries[0][AT] <= horizon:
        entries[:] = [e for e in entries if e[AT] > horizon]
    if len(entries) > rule.at_least:
        del entries[:-rule.at_least]
    if len(entries) >= rule.at_least:
        evidence = [e[WINDOW_EVIDENCE] for e in entries]
        entries.clear()  # fire once per burst; the next burst counts afresh
        run.matched(rule, rs, ts, ev["event_id"], evidence, ev, view)


def find_sequence(buffer: list, steps: int, within_ms: int) -> list | None:
    """The earliest-starting match of steps 0..n-1 in time order within the window, or None.

    `buffer` holds [ts, step mask, evidence] sorted by ts; other events may come between steps.
    """
    for i, first in enumerate(buffer):
        if not first[STEP_MASK] & 1:
            continue
        chosen, step, limit = [first], 1, first[AT] + within_ms
        for entry in buffer[i + 1:]:
            if entry[AT] > limit:
                break
            if entry[STEP_MASK] >> step & 1:
                chosen.append(entry)
                step += 1
                if step == steps:
                    return chosen
    return None


def _sequence(run: _Run, rule: DetectionRule, state: dict, ev: dict, view: dict, mask: int) -> None:
    """`mask` has bit i set when the event matches step i."""
    rs = _rule_state(state, rule)
    buffer = rs.setdefault(BUFFER, [])
    ts = ev["ts"]
    bisect.insort(buffer, [ts, mask, evidence_of(ev)], key=_at)
    horizon = buffer[-1][AT] - rule.within_ms
    if buffer[0][AT] < horizon:
        buffer[:] = [e for e in buffer if e[AT] >= horizon]
    if len(buffer) > SEQUENCE_BUFFER:
        del buffer[:-SEQUENCE_BUFFER]
    match = find_sequence(buffer, len(rule.steps), rule.within_ms)
    if match is None:
        return
    last = match[-1][AT]
    buffer[:] = [e for e in buffer if e[AT] > last]  # the matched events are used up
    run.matched(rule, rs, last, ev["event_id"], [e[BUFFER_EVIDENCE] for e in match], ev, view)


def _dwell(rule: DetectionRule, state: dict, ev: dict, view: dict) -> None:
    """An in-order event in the section starts a visit, unless one is on; its pending timer is the visit.

    The first event outside the section cancels the timer (see _cancel_timers), so a dwell rule
    only needs to see the events of its section, and holds no state of its own. A visit is over at
    its deadline in event time, whether or not its timer has fired yet (that depends on when other
    traffic moves the partition's clock): an event in the section at or after it starts the next.
    """
    rule_id, ts, timers = rule.id, ev["ts"], state[TIMERS]
    for i, t in enumerate(timers):
        if t.rule_id == rule_id and t.kind == DWELL and ts < t.deadline:
            timers[i] = t._replace(view=snapshot(view))  # the visit goes on; its signal reports the session now
            return
    add_timer(state, Timer(ts + rule.dwell_ms, rule_id, rule.fingerprint, DWELL, ts, ev["event_id"], [evidence_of(ev)],
                           snapshot(view)))


def _note_absent(rs: dict, ev: dict) -> None:
    # the latest awaited event: one arriving before the event that completes the pattern, but later
    # in event time, must still prevent the absence (out-of-order arrival)
    if ev["ts"] > rs.get(AWAITED, 0):
        rs[AWAITED] = ev["ts"]


def detect(state: dict | None, ev: dict, rules: DetectionRuleSet) -> Detection:
    """The event must be valid (Detector.on_event checks it with validate_event, once)."""
    state = new_state() if state is None else restored(state)
    seen = state[SEEN]  # event id -> 1, insertion-ordered: a dict, so the check is O(1)
    event_id = ev["event_id"]
    if event_id in seen:
        return Detection(state, [], duplicate=True)
    seen[event_id] = 1
    if len(seen) > SEEN_IDS:
        del seen[next(iter(seen))]
    in_order = ev["ts"] >= state[LAST_TS]
    if ev.get("customer_id"):
        # identity stitching, first slice: once a visitor logs in, later events are theirs
        state[CUSTOMER] = ev["customer_id"]
    if ev["ts"] > state[LAST_TS]:
        state[LAST_TS] = ev["ts"]
    _advance_session(state, ev)
    _update_cart(state, ev)
    attributes = ev.get("attributes")
    # most events repeat the visitor's attributes: one dict comparison, no copy (measured: building the
    # bounded copy on every event cost rule-only detection ~4 µs of ~7)
    if attributes and in_order and attributes != state.get(LOOKS):
        state[LOOKS] = signal_attributes(attributes)
    view = session_view(state)
    if state[TIMERS]:
        _cancel_timers(state, ev, view, rules)
    run = _Run(state, rules, ev["visitor_id"])
    if state.get(RULESET) != rules.version:
        if state[RULES] or state[TIMERS] or state[FIRED]:
            prune_state(state, rules)
        state[RULESET] = rules.version
    # Rule state is only created when a rule's condition matches: most rules never hold any.
    for rule, kind, test, absent, steps in rules.plans_for(ev["type"], ev.get("path")):
        if absent is not None and absent(ev, view):
            _note_absent(_rule_state(state, rule), ev)
        if kind == EVENT:
            if test(ev, view):
                if absent is None:
                    run.fire(rule, ev["ts"], event_id, [evidence_of(ev)], ev, view)
                else:
                    run.matched(rule, _rule_state(state, rule), ev["ts"], event_id, [evidence_of(ev)], ev, view)
        elif kind == COUNT:
            if test(ev, view):
                _count(run, rule, _rule_state(state, rule), ev, view)
        elif kind == SEQUENCE:
            mask = 0
            for i, step in enumerate(steps):
                if step(ev, view):
                    mask |= 1 << i
            if mask:
                _sequence(run, rule, state, ev, view, mask)
        elif in_order and test(ev, view):  # dwell: an in-order event in the section
            _dwell(rule, state, ev, view)
    return Detection(state, run.signals)


def fire_due(state: dict, visitor_id: str, watermark: int, rules: DetectionRuleSet) -> list[dict]:
    """Fire the visitor's timers with a deadline at or before the watermark, oldest first."""
    restored(state)
    run = _Run(state, rules, visitor_id)
    timers = state[TIMERS]
    while timers and timers[0].deadline <= watermark:
        timer = timers.pop(0)
        rule = rules.by_id.get(timer.rule_id)
        if rule is None or rule.fingerprint != timer.fingerprint:
            continue
        # the session as of when the timer was set (timers stored before views were kept read it now)
        view = timer.view or session_view(state)
        ev = {**timer.evidence[-1], "visitor_id": visitor_id, "customer_id": state[CUSTOMER], "attributes": {}}
        rs = _rule_state(state, rule)
        if timer.kind == DWELL:  # the visit counted; a new one starts with the next event in the section
            run.matched(rule, rs, timer.deadline, f"{timer.cause_id}:dwell", timer.evidence, ev, view)
        else:
            run.fire(rule, timer.deadline, f"{timer.cause_id}:absent", timer.evidence, ev, view,
                     guarded=timer.view is not None)
    return run.signals


def prune_state(state: dict, rules: DetectionRuleSet) -> dict:
    """Drop state of rules that were removed or changed, so a visitor's state stays bounded."""
    by_id = rules.by_id
    state[RULES] = {k: v for k, v in state[RULES].items() if k in by_id and by_id[k].fingerprint == v[FINGERPRINT]}
    state[FIRED] = {k: v for k, v in state[FIRED].items() if k in by_id}
    state[TIMERS] = [t for t in state[TIMERS] if t.rule_id in by_id and by_id[t.rule_id].fingerprint == t.fingerprint]
    return state
