"""The uplift learner: which attributions teach what, when a label is final, and that the same inputs give the same model."""
from __future__ import annotations


import numpy as np
import pytest

from streams.runtime.values import decode
from streams import topics
from streams.decision.learn import LATENESS_MS, STEP_MS, due, label_of, learn, new_partition_state, step_to
from streams.decision.models import ModelBook
from streams.decision.policy import decide
from streams.decision.uplift import DIMS, FEATURES, Model, evidence_record, merge, signal_features, vector
from tests.support import wire
from tests.support.runners import after_decision, feed, sent
from tests.support.stage import ACTIONS, T0, enriched, profile, signal

WINDOW = 600_000
FEATURES_OF_A_CUSTOMER = {"bias": 1.0, "known": 1.0, "clv": 0.6, "returning": 1.0, "pages": 0.15}


def attribution(did: str, arm: str = "treated", converted: bool = True, ts: int = T0, **over) -> dict:
    a = {"decision_id": did, "key": "C1", "visitor_id": "v1", "customer_id": "C1", "revision": 0, "decision_ts": ts,
         "window_end_ts": ts + WINDOW, "updated_ts": ts, "signal": "cancel_intent", "arm": arm,
         "outcome": {"treated": "act", "control": "control", "holdout": "control", "none": "no_action"}[arm],
         "gate": None, "action_id": "retention-chat", "channel": "chat", "skill": "retention", "goal": "retain",
         "score": 1.0, "shown": False, "accepted": False, "declined": False, "abandoned": False, "expired": False,
         "agent_seconds": 0.0, "purchases": 0, "revenue": 0.0, "cancelled": not converted, "lost_value": 0.0,
         "called": False, "converted": converted, "incomplete": False, "ruleset_version": "r1/a",
         "features": dict(FEATURES_OF_A_CUSTOMER)}
    a.update(over)
    return a


def test_treated_decisions_teach_acting_and_every_other_decision_with_an_action_teaches_not_acting():
    assert label_of(attribution("d1", "treated"), 0)["t"] is True
    for arm in ("control", "holdout", "none"):
        assert label_of(attribution("d1", arm), 0)["t"] is False
    # Then a decision without an action, without features (an older release) or cut short teaches nothing
    assert label_of(attribution("d1", "none", action_id=None), 0) is None
    assert label_of(attribution("d1", features={}), 0) is None
    assert label_of(attribution("d1", incomplete=True), 0) is None


def test_a_label_is_learned_only_once_its_window_and_the_lateness_have_passed_on_the_partitions_clock():
    # Given two decisions pending on partition 0 and one on partition 1
    pending = [("d2", label_of(attribution("d2", ts=T0 + 1000), 0)), ("d1", label_of(attribution("d1"), 0)),
               ("d3", label_of(attribution("d3"), 1))]
    state = new_partition_state()
    # When the clock reaches the first window's end, but not the lateness after it
    assert step_to(state, T0 + WINDOW + LATENESS_MS - 1)
    assert due(state, pending, 0) == []
    # Then a step later both of partition 0 are due, oldest window first; partition 1's is not this partition's
    assert not step_to(state, T0 + WINDOW + LATENESS_MS + STEP_MS - 2)  # less than a step: the clock stays
    assert step_to(state, T0 + WINDOW + LATENESS_MS + 1000 + STEP_MS)
    assert [did for did, _ in due(state, pending, 0)] == ["d1", "d2"]


def test_the_same_attributions_in_the_same_order_give_the_same_model_versions():
    def run(order_seed: int) -> list[str]:
        rng = np.random.default_rng(7)
        pending, versions = {}, []
        states = {0: new_partition_state(), 1: new_partition_state()}
        book = ModelBook()
        for i in range(400):
            p = i % 2
            arm = "treated" if rng.random() < 0.5 else "none"
            a = attribution(f"d{i}", arm, converted=bool(rng.random() < 0.4), ts=T0 + i * 10_000,
                            features={"bias": 1.0, "known": float(rng.random() < 0.5)})
            pending[a["decision_id"]] = label_of(a, p)
            if step_to(states[p], a["decision_ts"]):
                labels = due(states[p], pending.items(), p)
                learn(states[p], labels)
                for did, _ in labels:
                    del pending[did]
                if labels:
                    book.offer([evidence_record(p, states[p]["labels"], states[p]["clock"], states[p]["ev"])])
                    versions.append(book.model.version)
        return versions

    first, second = run(1), run(2)
    assert len(first) > 10 and first == second
    assert len(set(first)) == len(first)  # each new evidence is a new version


def test_partitions_merge_to_one_model_whatever_order_they_are_read_in():
    states = []
    for p in range(3):
        s = new_partition_state()
        learn(s, [(f"d{p}{i}", label_of(attribution(f"d{p}{i}", "treated" if i % 2 else "none", converted=i % 3 == 0), p))
                  for i in range(30)])
        states.append(evidence_record(p, s["labels"], T0, s["ev"]))
    a, b = ModelBook(), ModelBook()
    a.offer(states)
    b.offer(list(reversed(states)))
    assert a.model.version == b.model.version and a.model.labels == 90
    x = vector(FEATURES_OF_A_CUSTOMER, "chat")
    ta = a.model.for_actions(ACTIONS.priors).terms("retention-chat", x)
    tb = b.model.for_actions(ACTIONS.priors).terms("retention-chat", x)
    assert ta == tb
    # And an older record of a partition does not replace a newer one
    assert not a.offer([evidence_record(0, 1, T0, {})])
    # And a record for another feature list (another release's model) is left out
    other = dict(states[0], features=["bias", "something_else"])
    assert merge({0: other}).version == "prior"


def test_a_decision_records_the_model_version_and_each_candidates_terms_which_recompute_its_score():
    # Given a model that learned something about retention-chat
    s = new_partition_state()
    learn(s, [(f"d{i}", label_of(attribution(f"d{i}", "treated", converted=True), 0)) for i in range(50)])
    model = merge({0: evidence_record(0, s["labels"], T0, s["ev"])})
    # When C1's cancel intent is decided with exploration on
    e = enriched(signal("sig-1"), profile())
    d = decide(e, None, ACTIONS, model, explore=True).decision
    # Then the decision names the model and every candidate with terms an analyst can recompute
    assert d["model_version"] == model.version != "prior"
    assert {c["action_id"] for c in d["candidates"]} == {"retention-callback", "retention-chat"}
    for c in d["candidates"]:
        assert c["score"] == pytest.approx((c["p_act"] - c["p_no_act"]) * c["value"] - c["cost"], abs=1e-3)
    assert d["candidates"][0]["action_id"] == d["action_id"] and d["score"] == d["candidates"][0]["score"]
    assert set(d["features"]) == set(FEATURES) - {"agent_led"}
    # And deciding again gives the very same draws; another model version draws anew
    assert decide(e, None, ACTIONS, model, explore=True).decision == d
    assert decide(e, None, ACTIONS, Model(), explore=True).decision["candidates"] != d["candidates"]


def test_features_are_bounded_and_read_the_customers_local_hour():
    # Given a huge cart, a long session, and a customer in Tokyo at 22:13 UTC (07:13 there)
    sig = signal("s", cart_value=1e9, session_pages=10_000, session_seconds=1e7,
                 attributes={"device": "mobile", "returning": "1"})
    f = signal_features(enriched(sig, profile(clv=-5.0, timezone="Asia/Tokyo")))
    assert f["cart"] == 1.0 and f["pages"] == 1.0 and f["dwell"] == 1.0 and f["clv"] == 0.0
    assert f["mobile"] == 1.0 and f["returning"] == 1.0
    hour = np.degrees(np.arctan2(f["hour_sin"], f["hour_cos"])) / 15 % 24
    assert hour == pytest.approx(7 + 13 / 60, abs=0.02)
    assert len(vector(f, "web_message")) == DIMS and vector(f, "chat")[-1] == 1.0


def test_the_learner_sends_its_partitions_evidence_once_windows_close_and_forgets_the_labels(tmp_path):
    # Given the learner
    runner = after_decision(tmp_path)

    def attributed(*records):
        feed(runner, [("engage.attributions", a["decision_id"].encode(), wire.encode("Attribution", a)) for a in records])

    # When three decisions are attributed (one revised: converted, then cancelled) ...
    attributed(attribution("d1"), attribution("d2", "none", converted=True))
    attributed(attribution("d1", revision=1, converted=False, ts=T0), attribution("d3", ts=T0 + 5000))
    assert sent(runner, topics.MODELS) == []
    # ... and a decision made after their windows closed moves the clock
    attributed(attribution("d4", ts=T0 + WINDOW + LATENESS_MS + STEP_MS + 5000))
    [(key, rec, _)] = sent(runner, topics.MODELS)
    # Then the partition's evidence holds the three labels, d1's from its latest revision
    assert key == b"0" and rec["labels"] == 3 and rec["features"] == list(FEATURES)
    arms = {r["arm"]: r for r in rec["arms"] if r["action_id"] == "retention-chat"}
    assert arms["treated"]["n"] == 2 and arms["untreated"]["n"] == 1
    # d1 cancelled in the end (its first revision said converted), d3 converted: one of two
    assert arms["treated"]["xty"][0] == 1.0 and arms["untreated"]["xty"][0] == 1.0
    assert len(arms["treated"]["xtx"]) == DIMS * DIMS
    # And only the decision whose window is still open is waiting
    db = runner.stores.dbs[0]
    assert [k for k, _ in db.items(topics.DECISION_TO_LABEL)] == ["d4"]
    assert decode(db.get(topics.PARTITION_TO_EVIDENCE, "0"))["labels"] == 3


def test_a_worker_that_must_not_learn_never_reads_the_attributions(tmp_path):
    # Given the after-decision runner of a replay or a shadow (ENGAGE_LEARN=0), whose decisions no one is shown
    runner = after_decision(tmp_path, learn=False)
    # Then it reads the decisions but not the attributions: nothing it would learn can reach a models topic
    assert "engage.decisions" in runner.handlers and "engage.attributions" not in runner.handlers
    # while a live worker's does
    assert "engage.attributions" in after_decision(tmp_path / "live").handlers
