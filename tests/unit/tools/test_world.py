"""The simulated world's truth: who people are, what they do, and how invitations and agents change it."""
from __future__ import annotations

import statistics

import pytest

from streams.rules.loader import RuleError
from streams.tools.scenario import compile_scenario, load_scenario
from streams.tools.world import Population, Reception

SHIPPED = ("default", "scarce-agents", "zero-uplift", "drift")


def people(scenario, start_ms=0):
    return list(Population(scenario, start_ms=start_ms).people())


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_scenarios_load(name):
    sc = load_scenario(name)
    assert sc.name == name and sc.duration_ms > 0 and sc.agents


def test_the_same_seed_gives_the_same_traffic_and_another_seed_other_traffic():
    # Given the default scenario played twice with its seed, and once with another
    sc = load_scenario("default")
    a, b = Population(sc, 1_000), Population(sc, 1_000)
    c = Population(sc.with_(seed=8), 1_000)
    # Then people, journeys and hidden truths are identical for the same seed
    ev = lambda pop: [(p.visitor_id, p.type, p.u, pop.events_of(p)) for p in pop.people()]  # noqa: E731
    assert ev(a) == ev(b)
    assert ev(a) != ev(c)


def test_a_persuadable_converts_only_when_helped_in_expectation_over_seeds():
    # Given persuadables whose base chance is zero and whose full treatment gives 60%, over ten seeds
    sc = load_scenario("default")
    sc = sc.with_(world=sc.world.__class__(sc.world.intents, tuple(
        (t, truth.__class__(0.0, 0.6) if t == "persuadable" else truth) for t, truth in sc.world.types), sc.world.effects))
    treated, untreated = [], []
    for seed in range(10):
        s = sc.with_(seed=seed, duration_ms=10 * 60_000)
        for p in people(s):
            if p.type != "persuadable" or p.intent != "cancel":
                continue
            untreated.append(Reception(s).converts(p))
            r = Reception(s)
            r.offer(p, p.arrive_ms, "save-offer-web", "web_message", None)  # shown: a quarter of the effect
            treated.append(r.converts(p))
    # Then untreated they never convert, and shown the web message about 0.25 x 60% = 15% do
    assert len(untreated) > 100 and not any(untreated)
    assert 0.08 < statistics.mean(treated) < 0.22


def test_a_self_server_converts_anyway_and_a_sleeping_dog_is_put_off_by_any_offer():
    sc = load_scenario("default")
    everyone = people(sc.with_(duration_ms=20 * 60_000))
    dog = next(p for p in everyone if p.type == "sleeping_dog" and p.intent == "cancel")
    server = next(p for p in everyone if p.type == "self_server" and p.intent == "cancel")
    r = Reception(sc)
    r.offer(server, server.arrive_ms, "save-offer-web", "web_message", None)
    assert r.p_final(server) == server.truth.base == server.truth.treated
    # Given a sleeping dog who declines an agent's invitation, they are still worse off for being asked
    r.offer(dog, dog.arrive_ms, "retention-chat", "chat", "retention")
    assert r.p_final(dog) < dog.truth.base


def test_types_show_in_what_can_be_observed_but_not_perfectly():
    sc = load_scenario("default")
    everyone = people(sc)
    def share_returning(t):
        xs = [p.looks["returning"] == "1" for p in everyone if p.type == t]
        return statistics.mean(xs)
    def pages(t):
        return statistics.mean(sum(1 for _, e in p.steps if e["type"] == "page_view") for p in everyone
                               if p.type == t and p.intent == "buy")
    # Then self-servers return more often and look at fewer pages than persuadables ...
    assert share_returning("self_server") > share_returning("persuadable") + 0.2
    assert pages("persuadable") > pages("self_server") + 1
    # ... yet neither signal decides the type: both kinds of people show both
    assert 0.1 < share_returning("persuadable") < 0.9 and 0.1 < share_returning("self_server") < 0.95


def test_an_agent_takes_one_person_at_a_time_and_a_person_gives_up_after_their_patience():
    # Given one sales agent with 3-minute chats and people who wait at most a minute
    sc = load_scenario("default")
    sc = sc.with_(agents=(("sales", sc.skill("sales").__class__(1, 180_000)),), accept=1.0, patience_ms=60_000)
    buyers = [p for p in people(sc) if p.intent == "buy"][:3]
    r = Reception(sc)
    t = max(p.arrive_ms for p in buyers)
    # When three of them accept a chat at the same moment
    reactions = [r.offer(p, t, "checkout-assist", "chat", "sales") for p in buyers]
    # Then the first is taken at once and the agent is busy; the others give up
    assert reactions[0].kind == "accepted" and reactions[0].start_ms == t
    assert [x.kind for x in reactions[1:]] == ["abandoned", "abandoned"]
    assert r.free_agents("sales", t) == 0 and r.free_agents("sales", t + reactions[0].handling_ms) == 1


def test_an_offer_after_the_person_left_expires():
    sc = load_scenario("default")
    p = people(sc)[0]
    assert Reception(sc).offer(p, p.end_ms, "save-offer-web", "web_message", None).kind == "expired"


def test_journeys_end_in_a_purchase_a_cancellation_or_a_call_as_the_goal_says():
    sc = load_scenario("default")
    pop = Population(sc)
    by_intent = {}
    for p in pop.people():
        by_intent.setdefault(p.intent, p)
    assert pop.ending(by_intent["buy"], True)["type"] == "purchase" and pop.ending(by_intent["buy"], False) is None
    assert pop.ending(by_intent["cancel"], False)["type"] == "cancel" and pop.ending(by_intent["cancel"], True) is None
    call = pop.ending(by_intent["locked_out"], False)
    assert call["type"] == "call" and call["channel"] == "voice"


def test_drift_changes_the_truth_from_its_moment_on():
    sc = load_scenario("drift")
    assert sc.drift_at_ms == sc.duration_ms // 2
    assert sc.world_at(0).effect("checkout-assist", "chat") == 0.8
    assert sc.world_at(sc.drift_at_ms).effect("checkout-assist", "chat") == 0.2


TYPES = ("types: {self_server: {base: 0.8, treated: 0.8}, persuadable: {base: 0, treated: 0.5}, "
         "lost_cause: {base: 0, treated: 0}, sleeping_dog: {base: 0.5, treated: 0.2}}\n")


@pytest.mark.parametrize("text, line, reason", [
    ("intents: {buy: {weight: 1, types: {self_server: 1}}}\ntypes: {}\neffects: {}\nagents: {}\n", 2,
     "types needs every response type"),
    ("intents: {shop: {weight: 1, types: {self_server: 1}}}\ntypes: {}\neffects: {}\nagents: {}\n", 1,
     "unknown intent 'shop'"),
    ("arrival_rate: -1\nintents: {buy: {weight: 1, types: {self_server: 1}}}\n" + TYPES + "effects: {}\nagents: {}\n", 1,
     "arrival_rate must be a number"),
    ("intents: {buy: {weight: 1, types: {self_server: 1}}}\n" + TYPES + "effects: {x: {fax: 1}}\nagents: {}\n", 3,
     "unknown channel 'fax'"),
    ("name: ../../etc\nintents: {buy: {weight: 1, types: {self_server: 1}}}\n" + TYPES + "effects: {}\nagents: {}\n", 1,
     "name may hold up to 40 letters"),
    ("arrival_rate: 1000\nduration: 7d\nintents: {buy: {weight: 1, types: {self_server: 1}}}\n" + TYPES +
     "effects: {}\nagents: {}\n", 1, "people; at most 2,000,000"),
    ("intents: {buy: {weight: 1, types: {self_server: 1}}}\n" + TYPES + "effects: {}\nagents: {}\n"
     "drift: {at: 50%, intents: {help: {weight: 3}}}\n", 5, "intent help is new here: it needs types"),
])
def test_an_invalid_scenario_is_refused_with_file_line_and_reason(text, line, reason):
    with pytest.raises(RuleError) as err:
        compile_scenario(text, "bad.yaml")
    assert reason in str(err.value) and str(err.value).startswith("bad.yaml")
    if line is not None:
        assert f"bad.yaml:{line}" in str(err.value)


def test_a_drift_given_as_a_share_stays_a_share_when_the_duration_changes():
    sc = load_scenario("drift")
    shorter = sc.with_(duration_ms=10 * 60_000)
    assert shorter.drift_at_ms == 5 * 60_000
