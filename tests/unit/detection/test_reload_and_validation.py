"""Rule sets change while visitors are mid-pattern: unchanged rules keep their state; bad files are refused with file and line."""
import pytest

from streams.rules.book import RuleBook
from streams.detection.rules import compile_detection, load_detection
from streams.rules.loader import RuleError
from streams.settings import REPO_ROOT
from tests.unit.detection.harness import M, S, Partition, rules

V1 = """
- id: login-trouble
  when: {count: {event: login_failed, at_least: 2, within: 5m}}
  signal: login_trouble
- id: stall
  when: {event: checkout_start, then_absent: {event: purchase, for: 3m}}
  signal: cart_at_risk
"""


def test_a_reload_keeps_the_state_of_rules_that_did_not_change():
    # Given a visitor halfway through the login-trouble count
    p = Partition(rules(V1))
    p.event("login_failed", 0)
    # When a new version adds a rule and leaves login-trouble as it was
    p.ruleset = rules(V1 + "- id: new\n  when: {event: search}\n  signal: s\n")
    # Then the second failure still completes the count
    assert [s["rule_id"] for s in p.event("login_failed", M)] == ["login-trouble"]
    assert p.signals[-1]["ruleset_version"] == p.ruleset.version


def test_a_reload_drops_the_state_and_timers_of_changed_or_removed_rules():
    p = Partition(rules(V1))
    p.event("login_failed", 0)
    p.event("checkout_start", S)
    # When login-trouble now needs 3 failures and stall is removed
    p.ruleset = rules(V1.replace("at_least: 2", "at_least: 3").split("- id: stall")[0])
    p.event("login_failed", M)
    # Then the old failure does not count towards the new rule (it would be the third here) ...
    assert p.event("login_failed", 2 * M) == []
    assert [s["rule_id"] for s in p.event("login_failed", 3 * M)] == ["login-trouble"]
    # ... and the stall timer of the removed rule is gone
    p.tick(60 * M)
    assert p.fired() == [("login-trouble", 3 * M)]


def _published(text: str, version: str) -> dict:
    return {"name": "detection", "kind": "detection", "version": version, "ts": 0, "source": text, "author": "t"}


def test_the_rule_book_switches_to_a_valid_version_and_refuses_an_invalid_one():
    book = RuleBook(load_detection(REPO_ROOT / "rules" / "detection.yaml"))
    first = book.current
    assert book.offer(_published(V1, "v1")) and book.current.rules[0].id == "login-trouble"
    running = book.current
    # When a broken version is published
    assert not book.offer(_published("- id: x\n  when: {event: search, where: 'query.__class__'}\n  signal: s\n", "bad"))
    # Then it is refused with its line and reason, and the running version stays
    assert book.current is running and book.current is not first
    assert "engage.rules:detection@bad:2: rule 'x': where:" in book.refused[-1][1]
    assert not book.offer({**_published(V1, "v1"), "kind": "actions"})


@pytest.mark.parametrize("text, where", [
    ("- id: a\n  when:\n    sequence: [{event: a}]\n    within: 5m\n  signal: s\n", r"x.yaml:3: rule 'a': sequence must be a list of 2"),
    ("- id: a\n  when:\n    sequence: [{event: a}, {evnt: b}]\n    within: 5m\n  signal: s\n", r"x.yaml:3: rule 'a': unknown key 'evnt' in sequence step 2"),
    ("- id: a\n  when:\n    sequence: [{event: a}, {event: b}]\n  signal: s\n", r"x.yaml:3: rule 'a': when needs 'within'"),
    ("- id: a\n  when:\n    dwell: {where: 'path startswith \"/p\"'}\n  signal: s\n", r"x.yaml:3: rule 'a': dwell must be a mapping"),
    ("- id: a\n  when:\n    event: a\n    then_absent: {event: b}\n  signal: s\n", r"x.yaml:4: rule 'a': then_absent must be a mapping with the awaited event and for"),
    ("- id: a\n  when:\n    all: {event: a}\n  signal: s\n", r"x.yaml:3: rule 'a': all must be a list"),
    ("- id: a\n  when:\n    event: a\n    not: {event: b}\n  signal: s\n", r"x.yaml:3: rule 'a': when takes one of event, all, any or not"),
    ("- id: a\n  when:\n    count: {event: a, at_least: 1, within: 1m}\n  signal: s\n", r"x.yaml:3: rule 'a': at_least must be a whole number from 2"),
    ("- id: a\n  when:\n    any:\n      - event: a\n      - where: 'import os'\n  signal: s\n", r"x.yaml:5: rule 'a': where: "),
])
def test_invalid_constructs_are_refused_with_file_line_and_reason(text, where):
    with pytest.raises(RuleError, match=where):
        rules_from(text)


def rules_from(text):
    from streams.detection.rules import compile_detection

    return compile_detection(text, "x.yaml")


def test_the_default_rule_set_covers_the_seed_examples():
    ruleset = load_detection(REPO_ROOT / "rules" / "detection.yaml")
    kinds = {(r.signal, r.kind.name.lower(), r.absent is not None) for r in ruleset.rules}
    assert {("cancel_intent", "event", False), ("login_trouble", "count", False), ("cart_at_risk", "sequence", True),
            ("pricing_hesitation", "dwell", False), ("not_finding_answers", "count", True),
            ("high_value_browsing", "count", False)} <= kinds


def _rule(i: int, when: str = "{event: search}") -> str:
    return f"- id: r{i}\n  when: {when}\n  signal: s{i}\n"


@pytest.mark.parametrize("text, where, reason", [
    ("base: &b [{event: search}]\n" + "".join(f"l{i}: &l{i} [*{'b' if i == 0 else f'l{i-1}'}, *{'b' if i == 0 else f'l{i-1}'}]\n"
                                             for i in range(30)), "x.yaml:2:", "YAML aliases (*name) are not allowed"),
    ("".join(_rule(i) for i in range(501)), "x.yaml:1501:", "the file has 501 rules; at most 500"),
    ("# " + "x" * 300_000 + "\n" + _rule(1), "x.yaml:", "a rule file may have at most 262,144"),
    (_rule(1, "{all: [{all: [{all: [{all: [{all: [{all: [{all: [{all: [{event: search}]}]}]}]}]}]}]}]}"), "x.yaml:2: rule 'r1':",
     "all/any/not are nested more than 6 deep"),
    (_rule(1, "{any: [" + ", ".join(["{event: search}"] * 33) + "]}"), "x.yaml:2: rule 'r1':", "any lists 33 conditions; at most 32"),
    ("[" * 5000 + "]" * 5000, "x.yaml:", "nested too deeply"),
])
def test_oversize_rule_files_are_refused_with_file_line_and_reason(text, where, reason):
    # Given a rule file a careless or hostile author wrote; when it is validated, then one line says where and why
    with pytest.raises(RuleError) as refused:
        compile_detection(text, "x.yaml")
    assert str(refused.value).startswith(where) and reason in str(refused.value), str(refused.value)
