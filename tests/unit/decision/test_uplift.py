"""The online uplift model: it learns a known answer, explores less as evidence grows, merges partitions exactly, and repeats itself."""
from __future__ import annotations

import numpy as np
import pytest

from streams.decision.uplift import Evidence, UpliftModel, draw_seed


def one_action(dims: int, prior_act: float, prior_baseline: float) -> UpliftModel:
    """The model with a single action, "a": its features' weights are its own."""
    return UpliftModel({"a": (prior_act, prior_baseline)}, dims=dims)


def synthetic(n: int, seed: int):
    """Customers with one feature f in {0, 1}: the action lifts conversion from 0.1 to 0.6 when f = 1, and does nothing when f = 0."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        f = float(rng.random() < 0.5)
        treated = bool(rng.random() < 0.5)
        p = (0.6 if treated else 0.1) if f else 0.3
        yield np.array([1.0, f]), treated, bool(rng.random() < p)


def test_the_model_learns_a_known_uplift_from_a_wrong_prior():
    # Given an action whose rule claims +10 points everywhere (0.35 against 0.25)
    model = one_action(2, prior_act=0.35, prior_baseline=0.25)
    # When it learns from 8,000 outcomes of treated and held-out customers
    for x, treated, converted in synthetic(8000, seed=1):
        model.learn("a", x, treated, converted)
    # Then it finds the truth: +50 points where f = 1, none where f = 0
    on, off = model.terms("a", np.array([1.0, 1.0])), model.terms("a", np.array([1.0, 0.0]))
    assert on["p_act"] - on["p_no_act"] == pytest.approx(0.5, abs=0.05)
    assert off["p_act"] - off["p_no_act"] == pytest.approx(0.0, abs=0.05)


def test_thompson_sampling_explores_less_as_evidence_grows():
    # Given the same action with no evidence, and after 200 and 5,000 outcomes
    x = np.array([1.0, 1.0])
    spreads = []
    model = one_action(2, 0.35, 0.25)
    data = list(synthetic(5000, seed=2))
    for upto in (0, 200, 5000):
        model = one_action(2, 0.35, 0.25)
        for xi, t, c in data[:upto]:
            model.learn("a", xi, t, c)
        rng = np.random.default_rng(3)
        draws = [model.terms("a", x, rng) for _ in range(400)]
        spreads.append(np.std([d["p_act"] - d["p_no_act"] for d in draws]))
    # Then the sampled uplift narrows, and its spread matches the posterior's
    assert spreads[0] > spreads[1] > spreads[2]
    assert spreads[2] < 0.03


def test_partitions_merge_to_exactly_the_model_of_all_the_evidence():
    # Given the outcomes split over three partitions, learned separately
    data = list(synthetic(900, seed=4))
    parts = [Evidence.empty(2) for _ in range(3)]
    whole = Evidence.empty(2)
    for i, (x, t, c) in enumerate(data):
        if t:
            parts[i % 3].add(x, float(c))
            whole.add(x, float(c))
    # When they are merged in any order, and through JSON (as on the model topic)
    merged = Evidence.from_json(parts[2].as_json()).merged(parts[0]).merged(parts[1])
    # Then the statistics are those of all the evidence at once
    assert merged.n == whole.n
    np.testing.assert_allclose(merged.xtx, whole.xtx)
    np.testing.assert_allclose(merged.xty, whole.xty)


def test_the_same_inputs_give_the_same_draws():
    model = one_action(2, 0.35, 0.25)
    for x, t, c in synthetic(300, seed=5):
        model.learn("a", x, t, c)
    x = np.array([1.0, 1.0])
    seed = draw_seed("decision-1", "v7")
    a = model.terms("a", x, np.random.default_rng(seed))
    b = model.terms("a", x, np.random.default_rng(seed))
    assert a == b
    assert model.terms("a", x, np.random.default_rng(draw_seed("decision-2", "v7"))) != a


def test_with_no_evidence_the_model_says_the_rules_priors():
    model = one_action(3, 0.35, 0.10)
    t = model.terms("a", np.array([1.0, 0.0, 0.0]))
    assert t["p_act"] == pytest.approx(0.35) and t["p_no_act"] == pytest.approx(0.10)


def test_the_joint_model_tells_who_is_moved_from_who_converts_anyway_and_shares_it_across_actions():
    from streams.decision.uplift import DIMS, FEATURES, Model

    # Given two actions, and people whose only visible difference is being a returning visitor: returning ones
    # convert anyway (0.85 either way), the others are moved by an offer (0.05 -> 0.50)
    model = Model().for_actions((("a", 0.35, 0.25), ("b", 0.6, 0.3)))

    def x(returning: float) -> np.ndarray:
        v = np.zeros(DIMS)
        v[0], v[FEATURES.index("returning")] = 1.0, returning
        return v

    prior_spread = np.std([(lambda t: t["p_act"] - t["p_no_act"])(model.terms("a", x(1.0), np.random.default_rng(i)))
                           for i in range(200)])
    rng = np.random.default_rng(1)
    # When 2,000 outcomes are learned, all of them from action b
    for _ in range(2000):
        r, treated = float(rng.random() < 0.5), bool(rng.random() < 0.6)
        p = 0.85 if r else (0.50 if treated else 0.05)
        model.learn("b", x(r), treated, bool(rng.random() < p))
    # Then action a, which never ran, already knows who is moved: the features' weights are shared
    moved, anyway = model.terms("a", x(0.0)), model.terms("a", x(1.0))
    assert moved["uplift_mean"] > anyway["uplift_mean"] + 0.25
    assert moved["p_no_act"] < 0.2 < 0.7 < anyway["p_no_act"]
    # And the exploration at the rules' priors was bounded (about 0.13 of uplift), not anywhere in [0, 1]
    assert 0.05 < prior_spread < 0.2
