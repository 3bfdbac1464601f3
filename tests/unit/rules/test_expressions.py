"""Rule expressions: what reads like a sentence compiles, what is outside the whitelist is refused with a reason."""

import pytest
from hypothesis import given, settings, strategies as st

from streams.detection.rules import DETECTION_NAMES, compile_detection
from streams.rules.expr import ExprError, compile_expr, evaluate
from streams.rules.loader import RuleError
from tests.support.wire import interaction

T0 = 1_700_000_000_000


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
