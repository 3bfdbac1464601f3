"""Detection rules: the expression whitelist, validation errors with file and line, and the engine."""
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from streams.detection.engine import InvalidEvent, SESSION_GAP_MS, detect
from streams.detection.rules import DETECTION_NAMES, compile_detection, load_detection
from streams.rules.expr import ExprError, compile_expr, evaluate
from streams.rules.loader import RuleError
from streams.settings import REPO_ROOT
from tests.support.wire import interaction

RULES = load_detection(REPO_ROOT / "rules" / "detection.yaml")
T0 = 1_700_000_000_000


def ev(i, type_, ts=None, visitor="v1", **kw):
    return interaction(event_id=f"e{i}", visitor_id=visitor, type_=type_, ts=ts or T0 + i * 1000, **kw)


def run(events, rules=RULES):
    state, signals = None, []
    for e in events:
        result = detect(state, e, rules)
        state = result.state
        signals += result.signals
    return state, signals


@pytest.mark.parametrize("text, event, expected", [
    ('query ~ "cancel|terminate"', {"query": "How do I CANCEL?"}, True),
    ('query ~ "cancel"', {"query": None}, False),
    ('path startswith "/pricing"', {"path": "/pricing/plans"}, True),
    ('value >= 100', {"value": None}, False),
    ('value >= 100 and not (path endswith ".pdf")', {"value": 120.0, "path": "/x.html"}, True),
    ('attributes.plan in ["gold", "max"]', {"attributes": {"plan": "max"}}, True),
    ('query contains "close my"', {"query": "please close my account"}, True),
])
def test_expressions_read_like_sentences(text, event, expected):
    base = interaction(event_id="e", visitor_id="v", type_="search", ts=T0)
    assert evaluate(compile_expr(text, DETECTION_NAMES), {**base, **event}, {}) is expected


@pytest.mark.parametrize("text, reason", [
    ('__import__("os")', "unknown function"),
    ('query.__class__', "starting with '_'"),
    ('(lambda: 1)()', "lambda"),
    ('[c for c in query]', "ListComp"),
    ('open("/etc/passwd")', "unknown function 'open'"),
    ('qurey ~ "x"', "unknown name 'qurey'"),
    ('session.nope > 1', "session has no 'nope'"),
    ('query ~ path', "must be a text in quotes"),
    ('query ~ "("', "bad pattern"),
    ('2 ** 64', "not part of the rule language"),
    ('', "empty"),
])
def test_forbidden_or_broken_expressions_are_refused(text, reason):
    with pytest.raises(ExprError, match=reason):
        compile_expr(text, DETECTION_NAMES)


FORBIDDEN = ["__import__('os')", "().__class__", "lambda: 0", "[x for x in y]", "{k: 1 for k in y}",
             "exec('1')", "eval('1')", "getattr(query, 'x')", "globals()", "query.__len__()", "x := 1",
             "import os", "yield 1", "await x", "f'{query}'", "query[0:2]"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FORBIDDEN), st.sampled_from(["", "query ~ \"a\" and ", "not ", "value > 1 or "]))
def test_validation_never_lets_a_forbidden_construct_through(bad, prefix):
    with pytest.raises(ExprError):
        compile_expr(prefix + bad, DETECTION_NAMES)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_either_compiles_or_is_refused_cleanly(text):
    try:
        compile_expr(text, DETECTION_NAMES)
    except ExprError:
        pass


def test_invalid_rule_file_names_file_line_and_reason():
    text = "rules:\n  - id: ok\n    when: {event: search}\n    signal: fine\n  - id: broken\n    when:\n      event: search\n      where: 'query.__class__'\n    signal: x\n"
    with pytest.raises(RuleError) as err:
        compile_detection(text, "rules/mine.yaml")
    assert str(err.value).startswith("rules/mine.yaml:8: rule 'broken': where:")
    with pytest.raises(RuleError, match=r"rules/x.yaml:2: .*unknown key 'wen'"):
        compile_detection("rules:\n  - {id: a, wen: {event: x}, signal: s}\n", "rules/x.yaml")
    with pytest.raises(RuleError, match=r"x.yaml:3: rule 'a': id is used twice"):
        compile_detection("- {id: a, when: {event: x}, signal: s}\n- {id: b, when: {event: x}, signal: s}\n- {id: a, when: {event: x}, signal: s}\n", "x.yaml")
    with pytest.raises(RuleError, match="within must be a duration"):
        compile_detection("- {id: a, when: {count: {event: x, at_least: 2, within: soon}}, signal: s}\n", "x.yaml")
    with pytest.raises(RuleError, match="not valid YAML"):
        compile_detection("- {id: a, when: [\n", "x.yaml")


def test_cancel_search_raises_a_signal_with_its_evidence():
    _, signals = run([ev(1, "page_view", path="/"), ev(2, "search", query="how to cancel my contract")])
    assert [s["signal"] for s in signals] == ["cancel_intent"]
    assert signals[0]["evidence"][0]["event_id"] == "e2" and signals[0]["ruleset_version"] == RULES.version


def test_two_failed_logins_within_five_minutes_fire_once():
    _, signals = run([ev(1, "login_failed"), ev(2, "login_failed", ts=T0 + 4 * 60_000)])
    assert [s["signal"] for s in signals] == ["login_trouble"]
    assert [e["event_id"] for e in signals[0]["evidence"]] == ["e1", "e2"]


def test_failed_logins_too_far_apart_do_not_fire():
    _, signals = run([ev(1, "login_failed"), ev(2, "login_failed", ts=T0 + 6 * 60_000)])
    assert signals == []


def test_late_event_inside_the_window_still_counts():
    _, signals = run([ev(2, "login_failed", ts=T0 + 60_000), ev(1, "login_failed", ts=T0)])
    assert len(signals) == 1 and [e["event_id"] for e in signals[0]["evidence"]] == ["e1", "e2"]


def test_duplicate_event_ids_are_dropped():
    first = ev(1, "search", query="cancel")
    state, signals = run([first, first])
    assert len(signals) == 1


def test_session_ends_after_twenty_idle_minutes_and_once_per_session_rearms():
    events = [ev(1, "page_view", path="/account/password-reset"), ev(2, "page_view", path="/account/password-reset"),
              ev(3, "page_view", path="/account/password-reset", ts=T0 + 3000 + SESSION_GAP_MS + 1)]
    state, signals = run(events)
    assert [s["rule_id"] for s in signals] == ["password-reset-page", "password-reset-page"]
    assert signals[0]["session_id"] != signals[1]["session_id"] and state["sessions"] == 2


def test_cart_value_and_identity_carry_through_the_session():
    events = [ev(1, "login", customer_id="C1"), ev(2, "add_to_cart", value=80.0), ev(3, "add_to_cart", value=40.0),
              ev(4, "checkout_start")]
    _, signals = run(events)
    assert [(s["signal"], s["customer_id"], s["cart_value"]) for s in signals] == [("cart_at_risk", "C1", 120.0)]


def test_replay_gives_identical_signals():
    events = [ev(i, t, query="cancel" if t == "search" else None) for i, t in
              enumerate(["login_failed", "search", "login_failed", "page_view", "search"])]
    assert run(events)[1] == run(events)[1]


def test_event_breaking_the_contract_is_refused():
    with pytest.raises(InvalidEvent, match="visitor_id is empty"):
        detect(None, {**ev(1, "search"), "visitor_id": ""}, RULES)


def test_state_stays_bounded_under_many_events():
    state, _ = run([ev(i, "login_failed", ts=T0 + i * 10 * 60_000) for i in range(500)])
    assert len(state["seen"]) <= 64 and all(len(v) <= 2 for v in state["counts"].values())
