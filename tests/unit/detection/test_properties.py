"""Property tests: the compiled evaluators agree with slow reference evaluators on random input."""
from __future__ import annotations

import itertools
import re

from hypothesis import given, settings, strategies as st

from streams.detection.visitor import find_sequence
from streams.detection.rules import DETECTION_NAMES
from streams.rules.expr import compile_expr, evaluate
from tests.unit.detection.harness import S, Partition, cart_stall, rules

# ---- expressions: a random tree, rendered as rule text, evaluated two ways -------------------

FIELDS = {"value": "num", "query": "str", "path": "str", "session.pages": "num", "cart.value": "num"}
WORDS = ["cancel", "help", "/pricing", "Plan", ""]


def _leaf_num():
    return st.one_of(st.sampled_from([f for f, k in FIELDS.items() if k == "num"]).map(lambda f: ("field", f)),
                     st.integers(-5, 200).map(lambda n: ("const", n)))


def _num_expr():
    return st.recursive(_leaf_num(), lambda inner: st.tuples(st.sampled_from(["+", "-", "*"]), inner, inner)
                        .map(lambda t: ("arith", *t)), max_leaves=3)


def _str_field():
    return st.sampled_from([f for f, k in FIELDS.items() if k == "str"])


_atom = st.one_of(
    st.tuples(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), _num_expr(), _num_expr()).map(lambda t: ("cmp", *t)),
    st.tuples(st.sampled_from(["~", "startswith", "endswith", "contains"]), _str_field(), st.sampled_from(WORDS))
    .map(lambda t: ("text", *t)),
    st.tuples(_str_field(), st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)).map(lambda t: ("in", *t)),
)
EXPRS = st.recursive(_atom, lambda inner: st.one_of(
    st.tuples(st.sampled_from(["and", "or"]), inner, inner).map(lambda t: ("bool", *t)),
    inner.map(lambda e: ("not", e))), max_leaves=6)


def render(node) -> str:
    kind = node[0]
    if kind == "field":
        return node[1]
    if kind == "const":
        return str(node[1])
    if kind == "arith":
        return f"({render(node[2])} {node[1]} {render(node[3])})"
    if kind == "cmp":
        return f"{render(node[2])} {node[1]} {render(node[3])}"
    if kind == "text":
        return f'{node[2]} {node[1]} "{node[3]}"'
    if kind == "in":
        return f"{node[1]} in [{', '.join(repr(w) for w in node[2])}]"
    if kind == "bool":
        return f"({render(node[2])}) {node[1]} ({render(node[3])})"
    return f"not ({render(node[1])})"


def reference(node, ev: dict, s: dict):
    """A deliberately plain tree walk: Python semantics, TypeError from a missing value propagates."""
    kind = node[0]
    if kind == "field":
        if "." in node[1]:
            root, key = node[1].split(".")
            return (s if root == "session" else s["cart"]).get(key)
        return ev.get(node[1])
    if kind == "const":
        return node[1]
    if kind == "arith":
        a, b = reference(node[2], ev, s), reference(node[3], ev, s)
        return {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b}[node[1]]()
    if kind == "cmp":
        a, b = reference(node[2], ev, s), reference(node[3], ev, s)
        return {"<": lambda: a < b, "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b,
                "==": lambda: a == b, "!=": lambda: a != b}[node[1]]()
    if kind == "text":
        value, word = reference(("field", node[2]), ev, s), node[3]
        if not isinstance(value, str):
            return False
        if node[1] == "~":
            return re.search(word, value, re.IGNORECASE) is not None
        low, w = value.lower(), word.lower()
        return {"startswith": low.startswith(w), "endswith": low.endswith(w), "contains": w in low}[node[1]]
    if kind == "in":
        return reference(("field", node[1]), ev, s) in node[2]
    if kind == "bool":
        a = reference(node[2], ev, s)
        if node[1] == "and":
            return a and reference(node[3], ev, s)
        return a or reference(node[3], ev, s)
    return not reference(node[1], ev, s)


maybe_num = st.one_of(st.none(), st.floats(-50, 500, allow_nan=False), st.integers(0, 20))
maybe_str = st.one_of(st.none(), st.sampled_from(["How to CANCEL", "/pricing/biz", "help me", "plan", "", "/x"]))


@settings(max_examples=400, deadline=None)
@given(EXPRS, maybe_num, maybe_str, maybe_str, maybe_num, maybe_num)
def test_compiled_expression_agrees_with_the_reference_evaluator(tree, value, query, path, pages, cart_value):
    ev = {"value": value, "query": query, "path": path}
    s = {"pages": pages, "cart": {"value": cart_value}}
    try:
        expected = bool(reference(tree, ev, s))
    except TypeError:
        expected = False  # the language's rule: a comparison with a missing value is false
    assert evaluate(compile_expr(render(tree), DETECTION_NAMES), ev, s) is expected


# ---- sequences: the greedy matcher against every subsequence -------------------------------

entries = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 7)), max_size=12).map(
    lambda xs: [[ts, mask, {"i": i}] for i, (ts, mask) in enumerate(sorted(xs, key=lambda x: x[0]))])


def brute_force_match_exists(buffer, steps, within):
    for combo in itertools.combinations(buffer, steps):
        if all(combo[i][1] >> i & 1 for i in range(steps)) and combo[-1][0] - combo[0][0] <= within \
                and all(combo[i][0] <= combo[i + 1][0] for i in range(steps - 1)):
            return True
    return False


@settings(max_examples=500, deadline=None)
@given(entries, st.integers(2, 3), st.integers(0, 30))
def test_sequence_matcher_finds_a_match_exactly_when_one_exists(buffer, steps, within):
    found = find_sequence(buffer, steps, within)
    assert (found is not None) == brute_force_match_exists(buffer, steps, within)
    if found:
        assert [all(e[1] >> i & 1 for i, e in enumerate(found))] == [True]
        assert found[-1][0] - found[0][0] <= within


# ---- whole rules over random in-order streams, against a reference that rescans history -----

STREAM = st.lists(st.tuples(st.sampled_from("abcx"), st.integers(0, 40)), min_size=1, max_size=40)


def firing_events(p: Partition, stream) -> list[int]:
    """Indexes of the events of `stream` ((type, seconds since the previous event)) that raised a signal."""
    fired, t = [], 0
    for i, (kind, gap) in enumerate(stream):
        t += gap * S
        if p.event(kind, t):
            fired.append(i)
    return fired


def reference_count(types_and_gaps, at_least, within):
    """Fires at event i when at least `at_least` 'a' events since the last firing lie within `within`."""
    fired, since, t = [], 0, 0
    times = []
    for i, (kind, gap) in enumerate(types_and_gaps):
        t += gap * S
        times.append(t)
        if kind != "a":
            continue
        window = [j for j in range(since, i + 1) if types_and_gaps[j][0] == "a" and times[i] - times[j] < within]
        if len(window) >= at_least:
            fired.append(i)
            since = i + 1
    return fired


@settings(max_examples=300, deadline=None)
@given(STREAM, st.integers(2, 4), st.integers(1, 60))
def test_count_rule_agrees_with_the_reference(stream, at_least, within_s):
    p = Partition(rules(f"- id: r\n  when: {{count: {{event: a, at_least: {at_least}, within: {within_s}s}}}}\n  signal: s\n"))
    assert firing_events(p, stream) == reference_count(stream, at_least, within_s * S)


def reference_sequence(stream, within):
    """Fires at event i when a..b..c (in time order, within the window) exists among events after the last match."""
    fired, consumed_until, t, times = [], -1, 0, []
    for i, (kind, gap) in enumerate(stream):
        t += gap * S
        times.append(t)
        if kind not in "abc":
            continue
        pool = [(times[j], stream[j][0]) for j in range(i + 1) if times[j] > consumed_until and stream[j][0] in "abc"
                and times[j] >= times[i] - within]
        best = None
        for combo in itertools.combinations(pool, 3):
            if [k for _, k in combo] == ["a", "b", "c"] and combo[2][0] - combo[0][0] <= within:
                best = combo if best is None or combo[2][0] < best[2][0] else best
        if best:
            fired.append(i)
            consumed_until = best[2][0]
    return fired


@settings(max_examples=300, deadline=None)
@given(STREAM, st.integers(1, 80))
def test_sequence_rule_agrees_with_the_reference(stream, within_s):
    p = Partition(rules(f"- id: r\n  when: {{sequence: [a, b, c], within: {within_s}s}}\n  signal: s\n"))
    assert firing_events(p, stream) == reference_sequence(stream, within_s * S)


# ---- event time: a visitor's signals do not depend on arrival order or on other visitors -------

LATENESS = 5 * S
TIMED_RULES = rules(cart_stall("20s") + """
- id: pricing-dwell
  when: {dwell: {where: 'path startswith "/pricing"', at_least: 15s}}
  signal: pricing_hesitation
- id: gone
  when: {event: login, then_absent: {event: page_view, for: 10s}}
  signal: gone
- id: fails
  when: {count: {event: login_failed, at_least: 2, within: 30s}}
  signal: login_trouble
""")
STEPS = [("add_to_cart", None, 30.0), ("checkout_start", None, None), ("purchase", None, 80.0),
         ("page_view", "/pricing/a", None), ("page_view", "/shop", None), ("login", None, None), ("login_failed", None, None)]


def _journey(visitor: str, steps: list[tuple[int, int]]) -> list[dict]:
    from tests.support.wire import interaction

    out, t = [], 0
    for i, (step, gap_s) in enumerate(steps):
        t += gap_s * S
        type_, path, value = STEPS[step]
        out.append(interaction(event_id=f"{visitor}-{i}", visitor_id=visitor, type_=type_, ts=T0_PROP + t, path=path,
                               value=value))
    return out


T0_PROP = 1_700_000_000_000
journeys = st.lists(st.tuples(st.integers(0, len(STEPS) - 1), st.integers(0, 25)), min_size=1, max_size=12)


def _signals_of(visitor: str, events: list[dict]) -> list[tuple]:
    p = Partition(TIMED_RULES, lateness_ms=LATENESS)
    for ev in events:
        p.event(ev["type"], ev["ts"] - T0_PROP, visitor=ev["visitor_id"], event_id=ev["event_id"], path=ev["path"],
                value=ev["value"])
    p.tick(max(ev["ts"] for ev in events) - T0_PROP + 3_600 * S)
    return sorted((s["rule_id"], s["ts"], s["signal_id"], s["session_id"], s["session_pages"], s["session_events"],
                   s["cart_value"], tuple(e["event_id"] for e in s["evidence"])) for s in p.signals if s["visitor_id"] == visitor)


@settings(max_examples=300, deadline=None)
@given(journeys, st.lists(journeys, min_size=1, max_size=3), st.data())
def test_a_visitors_signals_do_not_depend_on_other_visitors_traffic(mine, others, data):
    # Given a visitor's journey, alone and in event-time order: the signals it must raise
    own = _journey("me", mine)
    expected = _signals_of("me", own)
    # When the same events arrive mixed with other visitors' events, which move the partition's clock
    # earlier or later relative to this visitor's events (each up to the allowed lateness out of order)
    theirs = [ev for i, j in enumerate(others) for ev in _journey(f"other{i}", j)]
    jitter = [0] * len(own) + [data.draw(st.integers(-LATENESS + 1, LATENESS - 1)) for _ in theirs]
    everyone = own + theirs
    arrival = [everyone[i] for i in sorted(range(len(everyone)), key=lambda i: (everyone[i]["ts"] + jitter[i], i))]
    # Then the visitor's signals are the same ones, at the same times, with the same ids and content
    assert _signals_of("me", arrival) == expected


ABSENCE_RULES = rules("""
- id: gone
  when: {event: login, then_absent: {event: page_view, for: 10s}}
  signal: gone
- id: no-purchase
  when: {event: checkout_start, then_absent: {event: purchase, for: 20s}}
  signal: no_purchase
""")


@settings(max_examples=300, deadline=None)
@given(journeys, st.lists(journeys, max_size=2), st.data())
def test_an_absence_is_decided_by_event_time_whatever_the_arrival_order_within_the_lateness(mine, others, data):
    # Given a visitor's journey: which absences fire, alone and in event-time order
    own = _journey("me", mine)
    expected = _absences_of(own)
    # When its events and other visitors' arrive shuffled, each up to the allowed lateness out of order
    everyone = own + [ev for i, j in enumerate(others) for ev in _journey(f"other{i}", j)]
    jitter = [data.draw(st.integers(0, LATENESS - 1)) for _ in everyone]
    arrival = [everyone[i] for i in sorted(range(len(everyone)), key=lambda i: (everyone[i]["ts"] + jitter[i], i))]
    # Then the same absences fire, at the same times, with the same ids
    assert _absences_of(arrival) == expected


def _absences_of(events: list[dict]) -> list[tuple]:
    p = Partition(ABSENCE_RULES, lateness_ms=LATENESS)
    for ev in events:
        p.event(ev["type"], ev["ts"] - T0_PROP, visitor=ev["visitor_id"], event_id=ev["event_id"], path=ev["path"])
    p.tick(max(ev["ts"] for ev in events) - T0_PROP + 3_600 * S)
    return sorted((s["rule_id"], s["ts"], s["signal_id"]) for s in p.signals if s["visitor_id"] == "me")
