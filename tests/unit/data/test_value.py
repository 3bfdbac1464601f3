"""Customer value and segments: the CLV estimate from purchases (worked example), CRM first, rule files checked."""
from __future__ import annotations

import pytest

from streams.data.value import DAY_MS, compile_segments, customer_value, load_segments, on_purchase
from streams.rules.loader import RuleError
from streams.settings import REPO_ROOT

T0 = 1_790_000_000_000
RULES = load_segments(REPO_ROOT / "rules" / "segments.yaml")


def _purchase(event_id: str, ts: int, value: float | None) -> dict:
    return {"event_id": event_id, "ts": ts, "type": "purchase", "value": value}


def _bought(*purchases) -> dict:
    state = None
    for p in purchases:
        state = on_purchase(state, p, RULES.half_life_ms) or state
    return state


def test_the_worked_example_of_the_module_docstring():
    # Given purchases of 100 and 50, 90 days apart (half-life 180 days, 3 years, margin 1)
    state = _bought(_purchase("p1", T0, 100.0), _purchase("p2", T0 + 90 * DAY_MS, 50.0))
    # When a signal comes 30 days after the second
    value = customer_value(None, state, T0 + 120 * DAY_MS, RULES)
    # Then the estimate is 453.46, from 2 purchases, and the customer is active (bought within 90 days)
    assert value == {"clv": pytest.approx(453.46, abs=0.01), "clv_source": "estimate", "segment": "active",
                     "purchases": 2, "last_purchase_ts": T0 + 90 * DAY_MS}


def test_a_replayed_purchase_counts_once_and_a_late_one_counts_decayed():
    # Given a purchase counted, then the same event again (a replay after a crash)
    once = _bought(_purchase("p1", T0, 100.0))
    assert on_purchase(once, _purchase("p1", T0, 100.0), RULES.half_life_ms) is None
    # When a purchase from 180 days before arrives late
    late = on_purchase(once, _purchase("p0", T0 - 180 * DAY_MS, 100.0), RULES.half_life_ms)
    # Then it counts at half its value, the first purchase moves back, and the sum stays at the latest time
    assert late["s"] == pytest.approx(150.0) and late["n"] == 2 and late["first"] == T0 - 180 * DAY_MS
    assert late["at"] == T0 and late["last"] == T0
    # And purchases without a value change nothing
    assert on_purchase(late, _purchase("p9", T0, None), RULES.half_life_ms) is None


def test_crm_value_comes_first_and_the_segments_follow_the_rule_file():
    bought_twice_long_ago = _bought(_purchase("a", T0, 40.0), _purchase("b", T0 + DAY_MS, 40.0))
    later = T0 + 200 * DAY_MS
    # CRM gives a CLV: it is used, whatever the purchases say; above 2000 the customer is high-value
    crm = customer_value({"clv": 2500.0, "segment": "gold"}, bought_twice_long_ago, later, RULES)
    assert (crm["clv"], crm["clv_source"], crm["segment"]) == (2500.0, "crm", "high-value")
    # No CRM value: the estimate, and two purchases then nothing for 199 days is at-risk
    est = customer_value({"clv": 0.0, "segment": "gold"}, bought_twice_long_ago, later, RULES)
    assert est["clv_source"] == "estimate" and est["segment"] == "at-risk"
    # A first purchase last week: new
    assert customer_value(None, _bought(_purchase("c", later - 7 * DAY_MS, 10.0)), later, RULES)["segment"] == "new"
    # Nothing known at all: no value, and new (no purchase and no profile)
    assert customer_value(None, None, later, RULES) == {"clv": 0.0, "clv_source": "none", "segment": "new",
                                                         "purchases": 0, "last_purchase_ts": None}
    # A profile with no purchases and no CRM value: the last segment, everyone else
    assert customer_value({"clv": 0.0}, None, later, RULES)["segment"] == "standard"


@pytest.mark.parametrize("text, line, reason", [
    ("segments:\n  - name: a\n    when: 'clv > 1'\n", 2, "the last segment has no 'when'"),
    ("segments:\n  - name: a\n  - name: b\n", 2, "segment 'a' needs a 'when'"),
    ("segments:\n  - name: a\n    when: 'clv >'\n  - name: b\n", 2, "segment 'a': cannot parse expression"),
    ("segments:\n  - name: a\n    when: 'wealth > 1'\n  - name: b\n", 2, "segment 'a':"),
    ("segments:\n  - name: a\n    when: 'clv > 1'\n  - name: a\n", 4, "named twice"),
    ("value:\n  half_life: soon\nsegments:\n  - name: a\n", 2, "half_life must be a duration"),
    ("value:\n  margin: 2\nsegments:\n  - name: a\n", 2, "margin must be a number above 0 and at most 1"),
    ("segments: []\n", 1, "at least one segment"),
])
def test_a_wrong_segments_file_is_refused_with_its_line_and_reason(text, line, reason):
    with pytest.raises(RuleError) as err:
        compile_segments(text, "segments.yaml")
    assert err.value.line == line and reason in err.value.reason
