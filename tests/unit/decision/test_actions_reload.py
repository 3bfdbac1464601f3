"""Action rules published while workers run: a valid version replaces the running one at the next signal, an invalid one is refused with file, line and reason."""
from __future__ import annotations

from streams import topics
from streams.rules.book import RuleBook
from streams.settings import REPO_ROOT
from tests.support.runners import DecisionStage
from tests.support.stage import ACTIONS, enriched, signal

SHIPPED = (REPO_ROOT / "rules" / "actions.yaml").read_text()
# save-offer-web worth ten times as much, with another message
V2 = SHIPPED.replace("    value: 40\n", "    value: 400\n").replace(
    "Thinking of leaving? Our flexible plans start at 5 a month.", "Before you go: three months at half price.")
BROKEN = SHIPPED.replace("    value: 40\n", "    value: 'profile.__class__'\n")


def published(text: str, version: str, name: str = "actions") -> dict:
    return {"name": name, "kind": name, "version": version, "ts": 0, "source": text, "author": "t"}


def test_the_action_book_switches_to_a_valid_version_and_refuses_an_invalid_one():
    book = RuleBook(ACTIONS)
    assert book.offer(published(V2, "v2"))
    running = book.current
    assert next(a for a in running.actions if a.id == "save-offer-web").value == 400.0
    # When a broken version is published, it is refused with its line and reason, and v2 stays
    assert not book.offer(published(BROKEN, "bad"))
    assert book.current is running
    line = SHIPPED[:SHIPPED.index("    value: 40\n")].count("\n") + 1
    assert f"engage.rules:actions@bad:{line}:" in book.refused[-1][1] and "value" in book.refused[-1][1]
    # And a detection rule set is not an action rule set
    assert not book.offer(published(V2, "v3", name="detection"))


def test_the_decision_stage_decides_with_the_version_published_since_the_last_signal(tmp_path):
    # Given the decision stage following a book of action rules
    book = RuleBook(ACTIONS)
    st = DecisionStage(tmp_path, actions=book)
    first = signal("s1", visitor_id="anon-1", customer_id=None)
    st.put(topics.ENRICHED.name, b"anon-1", st.encode(topics.ENRICHED, enriched(first, None)))
    # When version 2 is published between two signals
    book.offer(published(V2, "v2"))
    second = signal("s2", visitor_id="anon-2", customer_id=None)
    st.put(topics.ENRICHED.name, b"anon-2", st.encode(topics.ENRICHED, enriched(second, None)))
    (_, d1, _), (_, d2, _) = st.decided()
    # Then the second decision uses it: its version, its value, its message
    assert d1["ruleset_version"].endswith(ACTIONS.version) and d2["ruleset_version"].endswith(book.current.version)
    assert d2["score"] > 9 * d1["score"]
    assert d2["context"]["message_template"] == "Before you go: three months at half price."
