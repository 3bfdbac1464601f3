"""No expression can stall a worker: each one is refused cleanly or evaluates with bounded work.

The guard below turns a hang into a failure (a catastrophic regular expression under Python's
backtracking `re` runs for hours); it is a hang detector with a generous limit, not a timing.
"""
from __future__ import annotations

import contextlib
import signal

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from streams.detection.rules import DETECTION_NAMES, compile_detection
from streams.rules.expr import MAX_NODES, ExprError, compile_expr
from streams.rules.loader import RuleError

HANG_S = 20
LONGEST_FIELD = 4096  # what the fuzzer feeds; the contract bounds real fields (visitor.FIELD_LIMITS)


class Hung(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S):
    def hung(*_):
        raise Hung(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def event(query: str | None = None, value=None, path: str | None = "/") -> dict:
    return {"event_id": "e", "ts": 1, "visitor_id": "v", "customer_id": None, "channel": "web", "type": "search",
            "path": path, "query": query, "value": value, "attributes": {"plan": query or ""}}


SESSION = {"pages": 1, "events": 2, "searches": 0, "duration_s": 3.0, "returning": False, "cart": {"value": 0.0, "items": 0}}


def test_a_catastrophic_pattern_runs_in_linear_time():
    # Given a pattern that backtracks exponentially under Python's re, on a query that makes it try
    rule = compile_expr('query ~ "(a+)+$"', DETECTION_NAMES)
    # When it is evaluated, then it answers (RE2: no backtracking) instead of hanging the worker
    with no_hang():
        assert rule.test(event("a" * 4000 + "!"), SESSION) is False
        assert rule.test(event("a" * 4000), SESSION) is True


@pytest.mark.parametrize("text, reason", [
    ('query ~ "(a)\\\\1"', "RE2 syntax: no backreferences or lookaround"),
    ('query ~ "(?=x)y"', "RE2 syntax"),
    ('not ' * 400 + 'true', "nested more than"),
    ('-' * 1500 + '1', "nested more than"),
    ('value in ' + '[' * 100 + '1' + ']' * 100, "nested more than"),
    ('1' + ' + 1' * 400, "more than"),  # a long chain nests as deep as it is long
    ('value > 1' + ' and value > 1' * 100, "more than 200 parts"),
    ('value > 1e300', "numbers larger than"),
    ('value > 99999999999999999999', "numbers larger than"),
])
def test_oversize_and_overdeep_expressions_are_refused_with_a_reason(text, reason):
    with no_hang(), pytest.raises(ExprError) as refused:
        compile_expr(text, DETECTION_NAMES)
    assert reason in str(refused.value)


@pytest.mark.parametrize("text", ['query * 100000000 contains "x"', 'len(query * 100000000) > 1',
                                  'len(attributes.plan * 99999999999) > 0'])
def test_a_text_cannot_be_repeated_into_a_huge_one(text):
    # Given an expression that would build a text of gigabytes; when it runs, then it is simply false
    with no_hang():
        assert compile_expr(text, DETECTION_NAMES).test(event("abc" * 100, 2.5), SESSION) is False


def test_a_refused_expression_names_file_line_and_rule():
    with pytest.raises(RuleError) as refused:
        compile_detection("- id: r1\n  when: {event: search, where: '" + "not " * 300 + "true'}\n  signal: s\n", "big.yaml")
    assert str(refused.value).startswith("big.yaml:2: rule 'r1': where: expression is nested more than")


# ---- the fuzzer: random token soups and random events -----------------------------------------

TOKENS = ["query", "path", "value", "session.pages", "cart.value", "attributes.plan", "attributes", "event", "ts",
          "lower(", "len(", "round(", "max(", "min(", "number(", "abs(", "open(", "__import__(", "x.__class__",
          "(", ")", "[", "]", ",", "+", "-", "*", "/", "%", "**", "==", "!=", "<", ">=", "and", "or", "not", "in",
          "~", "startswith", "endswith", "contains", "if", "else", "lambda", "true", "null", "0", "1", "7", "-3",
          "99999999", "1e9", "2.5", '"a"', '"cancel|leave"', '"(a+)+$"', '"(x*)*y"', '".*.*.*.*=.*"', '"\\\\1"',
          '"[a-z]{1000}"', '"(a|aa)*$"', '""']


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=60),
       st.one_of(st.none(), st.text(max_size=40), st.builds(lambda c, n: c * n, st.sampled_from("ax!"),
                                                            st.integers(0, LONGEST_FIELD))),
       st.one_of(st.none(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True)))
def test_any_expression_is_refused_cleanly_or_evaluates_with_bounded_work(tokens, query, value):
    text = " ".join(tokens)
    with no_hang():
        try:
            compiled = compile_expr(text, DETECTION_NAMES)
        except ExprError:
            return  # a clean refusal: the message is what the rule author reads
        assert isinstance(compiled.test(event(query, value), SESSION), bool)
        try:
            result = compiled.fn(event(query, value), SESSION)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError, OverflowError):
            return
        if isinstance(result, (str, tuple)):
            # no operation repeats a text: a result is at most the joined inputs of the expression
            assert len(result) <= MAX_NODES * max(LONGEST_FIELD, len(text))


@pytest.mark.parametrize("pattern, engine", [
    ("refund|complaint", "re"), ("(cancel|leave) my plan", "re"), (r"\bbill\b", "re"),
    ("(a+)+$", "re2"), ("cancel(ling)?", "re2"), ("(a|a)(a|a)x", "re2"), ("x{3}", "re2"),
])
def test_word_alternations_run_on_re_and_anything_that_could_backtrack_on_re2(pattern, engine):
    from streams.rules.expr import compile_pattern

    assert type(compile_pattern(pattern)).__module__.split(".")[0] == engine


def test_chained_alternations_cannot_backtrack_exponentially():
    # Given a pattern of 40 alternations in a row, which a backtracking engine tries 2^40 ways on a near miss
    rule = compile_expr('query ~ "' + "(a|a)" * 40 + 'x"', DETECTION_NAMES)
    with no_hang():
        assert rule.test(event("a" * 1000), SESSION) is False
