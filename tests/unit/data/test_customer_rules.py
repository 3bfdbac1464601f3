"""Customer rules: counts over a customer's journey, across their devices, raising customer signals once per window."""
from __future__ import annotations

import pytest

from streams import topics
from streams.data import journey
from streams.data.customer_rules import compile_customer_rules, fired
from streams.rules.loader import RuleError
from streams.settings import REPO_ROOT
from tests.support import wire
from tests.support.runners import DataStage
from tests.support.stage import T0, signal

RULES = compile_customer_rules("""
rules:
  - id: failed-logins-across-devices
    description: Failed to log in three times within ten minutes, on any of their devices
    count: {step: login_failed, at_least: 3, within: 10m}
    signal: login_trouble
    priority: 75
""", "customer.yaml")
M = 60_000


def failed_login(n: int, visitor: str, ts: int) -> dict:
    """The signal detection raises for one failed login on `visitor` (a device) of C1."""
    ev = {"event_id": f"{visitor}-lf{n}", "ts": ts, "type": "login_failed", "channel": "app" if "phone" in visitor else "web",
          "path": "/account/login", "query": None, "value": None}
    return signal(f"sig-lf-{visitor}-{n}", visitor_id=visitor, customer_id="C1", name="login_failed", ts=ts,
                  rule_id="login-failed", evidence=[ev], priority=20)


def _journey_of(signals: list[dict]) -> list[dict]:
    steps = None
    for s in signals:
        steps = journey.added(steps, journey.steps_of_signal(s)) or steps
    return steps


def test_two_failed_logins_on_the_phone_and_one_on_the_laptop_raise_one_customer_signal():
    # Given C1's journey: two failed logins on the phone and, minutes later, one on the laptop
    sigs = [failed_login(1, "phone", T0), failed_login(2, "phone", T0 + M), failed_login(1, "laptop", T0 + 4 * M)]
    steps = _journey_of(sigs)
    # When the laptop's signal arrives
    [raised] = fired(RULES, steps, sigs[-1])
    # Then one customer signal, with the three failures as evidence, from both devices
    assert raised["signal"] == "login_trouble" and raised["customer_id"] == "C1" and raised["priority"] == 75
    assert [e["event_id"] for e in raised["evidence"]] == ["phone-lf1", "phone-lf2", "laptop-lf1"]
    assert {e["channel"] for e in raised["evidence"]} == {"app", "web"}
    assert raised["ts"] == T0 + 4 * M and raised["attributes"] == {"scope": "customer"}
    assert raised["signal_id"].startswith("customer:failed-logins-across-devices:")
    # And the same journey gives the same signal (a replay), and a customer signal is not counted again
    assert fired(RULES, steps, sigs[-1]) == [raised]
    assert fired(RULES, steps, raised) == []


def test_once_fired_the_rule_counts_afresh_and_failures_too_far_apart_do_not_count():
    sigs = [failed_login(i, "phone", T0 + i * M) for i in range(3)]
    steps = _journey_of(sigs)
    [raised] = fired(RULES, steps, sigs[-1])
    # Given the customer signal in the journey (where the rule counts afresh from)
    steps = journey.added(steps, journey.steps_of_signal(raised))
    # When a fourth failure comes, then a fifth: not yet three new ones
    more = [failed_login(3, "laptop", T0 + 3 * M), failed_login(4, "laptop", T0 + 4 * M)]
    steps = journey.added(steps, [s for x in more for s in journey.steps_of_signal(x)])
    assert fired(RULES, steps, more[-1]) == []
    # And three failures over more than ten minutes do not fire either
    apart = [failed_login(i, "phone", T0 + i * 6 * M) for i in range(3)]
    assert fired(RULES, _journey_of(apart), apart[-1]) == []


@pytest.mark.parametrize("body, line, reason", [
    ("  - id: x\n    count: {step: login_failed, at_least: 1, within: 10m}\n    signal: s\n", 2, "at_least must be"),
    ("  - id: x\n    count: {step: Login-Failed, at_least: 3, within: 10m}\n    signal: s\n", 2, "step must be"),
    ("  - id: x\n    count: {step: login_failed, at_least: 3, within: 30d}\n    signal: s\n", 2, "within must be at most 7"),
    ("  - id: x\n    count: {step: login_failed, at_least: 3, within: 10m}\n    signal: s\n    when: y\n", 1,
     "unknown key 'when'"),
    ("  - id: x\n    count: {step: login_failed, at_least: 3}\n    signal: s\n", 2, "count needs 'within'"),
])
def test_a_wrong_customer_rule_is_refused_with_file_line_and_reason(body, line, reason):
    with pytest.raises(RuleError) as refused:
        compile_customer_rules("rules:\n" + body, "customer.yaml")
    assert refused.value.file == "customer.yaml" and refused.value.line == line + 1 and reason in refused.value.reason


def test_the_shipped_customer_rules_compile():
    from streams.data.customer_rules import load_customer_rules

    assert [r.id for r in load_customer_rules(REPO_ROOT / "rules" / "customer.yaml").rules] == [
        "failed-logins-across-devices"]
    assert load_customer_rules(REPO_ROOT / "rules" / "missing.yaml").rules == ()


def test_the_data_stage_raises_the_customer_signal_for_the_decision_stage(tmp_path):
    # Given the data stage with the customer rule
    st = DataStage(tmp_path, RULES)
    # When C1's failed logins arrive: two from the phone, one from the laptop
    for s in (failed_login(1, "phone", T0), failed_login(2, "phone", T0 + M), failed_login(1, "laptop", T0 + 4 * M)):
        st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", s))
    [(key, raised, _)] = st.out(topics.SIGNALS_BY_CUSTOMER)
    # Then the customer signal goes on keyed by C1, to be enriched and decided on like any other
    assert key == b"C1" and raised["signal"] == "login_trouble" and len(raised["evidence"]) == 3
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", raised))
    # and the phone's own login trouble signal for its two failures, dated with the second, comes after
    trouble = signal("sig-phone-trouble", visitor_id="phone", customer_id="C1", name="login_trouble", ts=T0 + M,
                     evidence=failed_login(1, "phone", T0)["evidence"] + failed_login(2, "phone", T0 + M)["evidence"])
    st.put(topics.SIGNALS_BY_CUSTOMER, b"C1", wire.encode("Signal", trouble))
    assert len(st.out(topics.ENRICHED)) == 5
    assert any(s["ref"] == raised["signal_id"] for s in st.stored(topics.KEY_TO_JOURNEY, "C1")), "its step"
    # And it raises nothing more
    assert len(st.out(topics.SIGNALS_BY_CUSTOMER)) == 1
    [(_, enriched, _)] = [o for o in st.out(topics.ENRICHED) if o[1]["signal"]["signal_id"] == raised["signal_id"]]
    assert enriched["key"] == "C1" and enriched["signal"]["attributes"]["scope"] == "customer"


def test_steps_dated_before_the_rules_last_signal_count_for_nothing():
    # Given failures at 0, 2 and 4 minutes that raised the customer signal (its step in the journey)
    sigs = [failed_login(1, "phone", T0), failed_login(2, "phone", T0 + 2 * M), failed_login(1, "laptop", T0 + 4 * M)]
    steps = _journey_of(sigs)
    [raised] = fired(RULES, steps, sigs[-1])
    marked = journey.added(steps, journey.steps_of_signal(raised))
    # When a failure of minute 3 arrives late from another device's partition, then one of minute 5
    late, later = failed_login(3, "tablet", T0 + 3 * M), failed_login(4, "tablet", T0 + 5 * M)
    marked = journey.added(marked, journey.steps_of_signal(late))
    # Then neither makes a second window of steps counted already
    assert fired(RULES, marked, late) == []
    assert fired(RULES, journey.added(marked, journey.steps_of_signal(later)), later) == []


def test_customer_signals_are_not_counted_and_old_history_does_not_fire_a_new_rule():
    signals_rule = compile_customer_rules("""
rules:
  - {id: many-signals, count: {step: signal, at_least: 2, within: 1d}, signal: busy}
""", "customer.yaml")
    # Given a journey with one signal of a customer rule and one ordinary signal
    sigs = [failed_login(i, "phone", T0 + i * M) for i in range(3)]
    [raised] = fired(RULES, _journey_of(sigs), sigs[-1])
    steps = journey.added(_journey_of(sigs[:1]), journey.steps_of_signal(raised))
    # Then a rule counting signals does not count the customer signal
    assert fired(signals_rule, steps, sigs[0]) == []
    # And three failures of days ago (a rule published today would find them) do not fire on today's search
    today = signal("sig-today", customer_id="C1", ts=T0 + 3 * 86_400_000)
    old = _journey_of(sigs)
    assert fired(RULES, journey.added(old, journey.steps_of_signal(today)), today) == []


def _failed_login_step(n: int, visitor: str, ts: int) -> dict:
    """A failed login as detection sends it to the journey of the customer known on the device (no signal)."""
    ev = wire.interaction(f"{visitor}-ev{n}", visitor, "login_failed", ts, customer_id="C1", path="/account/login")
    return {"key": "C1", "from_key": visitor, "steps": [journey.step_of_conversion(ev)], "hops": 0}


def test_failed_logins_reach_the_customers_journey_without_signals_and_count_across_devices(tmp_path):
    # Given the data stage with the customer rule
    st = DataStage(tmp_path, RULES)
    # When C1 fails to log in twice on the phone and once on the laptop (each sent by detection to C1's journey)
    for n, (visitor, at) in enumerate((("phone", T0), ("phone", T0 + M), ("laptop", T0 + 4 * M))):
        st.put(topics.JOURNEY_MOVES, b"C1", _failed_login_step(n, visitor, at))
    [(key, raised, _)] = st.out(topics.SIGNALS_BY_CUSTOMER)
    # Then the customer rule raises login_trouble for C1 from the three failures, with no signal per failure
    assert key == b"C1" and raised["signal"] == "login_trouble" and raised["visitor_id"] == "laptop"
    assert [e["event_id"] for e in raised["evidence"]] == ["phone-ev0", "phone-ev1", "laptop-ev2"]
