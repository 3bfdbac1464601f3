"""The decision benchmark's policies, scored against the simulated truth with one capacity model."""
from __future__ import annotations

import pytest

from streams.tools.decisions import choices, run_policy, score_run
from streams.tools.scenario import load_scenario
from streams.tools.world import Population
from tests.support.stage import SHIPPED_ACTIONS

SIGNAL_OF = {"buy": "cart_at_risk", "cancel": "cancel_intent", "locked_out": "login_trouble",
             "help": "not_finding_answers", "compare": "pricing_hesitation"}


def signals_for(scenario):
    """One signal per person whose intent the shipped rules catch, a minute after their last step."""
    pop = Population(scenario)
    profiles = {p["customer_id"]: p for p in pop.profiles}
    out, people = [], {}
    for p in pop.people():
        people[p.visitor_id] = p
        if p.intent not in SIGNAL_OF:
            continue
        ts = min(p.steps[-1][0] + 60_000, p.end_ms - 1)
        cart = p.value if p.intent == "buy" else 0.0
        sig = {"signal_id": f"s-{p.visitor_id}", "signal": SIGNAL_OF[p.intent], "ts": ts, "visitor_id": p.visitor_id,
               "customer_id": p.customer_id, "priority": 50, "cart_value": cart, "session_pages": len(p.steps),
               "evidence": [{"event_id": "e1", "ts": p.steps[-1][0], "type": "page_view", "channel": "web"}],
               "last_event_ts": p.steps[-1][0]}
        out.append({"key": p.customer_id or p.visitor_id, "known": p.customer_id is not None,
                    "profile": profiles.get(p.customer_id), "signal": sig})
    return out, people


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_oracle_never_does_worse_than_random(seed):
    # Given the default scenario's people and their signals, and as many random invitations as naive makes
    sc = load_scenario("default").with_(seed=seed, duration_ms=20 * 60_000)
    signals, people = signals_for(sc)
    naive_decisions = {s["signal"]["signal_id"]: {"outcome": "act"} for s in signals[: len(signals) // 2]}
    # When both are scored by the truth with the same agents
    oracle = run_policy("oracle", signals, people, sc, SHIPPED_ACTIONS, naive_decisions, seed=seed)
    rand = run_policy("random", signals, people, sc, SHIPPED_ACTIONS, naive_decisions, seed=seed)
    # Then the oracle earns at least as much, and never invites a self-server or a sleeping dog
    assert oracle["incremental_value"] >= rand["incremental_value"]
    assert oracle["incremental_conversions"] > 0
    assert oracle["share_to_self_servers"] == 0 and oracle["share_to_sleeping_dogs"] == 0
    assert rand["invitations"] <= len(naive_decisions)


def test_naive_invites_only_while_an_agent_is_free_so_nobody_waits_in_vain():
    # Given few agents (the scarce-agents scenario)
    sc = load_scenario("scarce-agents").with_(duration_ms=20 * 60_000)
    signals, people = signals_for(sc)
    naive = run_policy("naive", signals, people, sc, SHIPPED_ACTIONS, {})
    # Then nobody it invites gives up waiting, and agent time never exceeds the agents' time on shift
    assert naive["abandoned"] == 0 and naive["invitations"] > 0
    shift_hours = sum(skill.agents for _, skill in sc.agents) * (sc.duration_ms + 30 * 60_000) / 3_600_000
    assert 0 < naive["agent_hours"] <= shift_hours


def test_the_engine_is_scored_on_the_invitations_it_made():
    # Given the engine acted on the first ten signals and held the rest back
    sc = load_scenario("default").with_(duration_ms=10 * 60_000)
    signals, _ = signals_for(sc)
    decisions = []
    for i, s in enumerate(signals):
        opts = choices(SHIPPED_ACTIONS, s)
        act = i < 10 and bool(opts)
        decisions.append({"signal_id": s["signal"]["signal_id"], "outcome": "act" if act else "no_action",
                          "action_id": opts[0][0] if act else None, "channel": opts[0][1] if act else None,
                          "skill": opts[0][2] if act else None})
    # When the run is scored
    res = score_run(sc, 0, signals, decisions, SHIPPED_ACTIONS)
    # Then the engine made exactly those invitations and random made as many; ratios are computed
    assert res["engine"]["invitations"] == sum(d["outcome"] == "act" for d in decisions) <= 10
    assert res["random"]["invitations"] <= res["engine"]["invitations"]
    assert res["engine_share_of_oracle_incremental_conversions"] is not None


def test_opted_out_customers_get_no_choice_at_all():
    sc = load_scenario("default")
    signals, _ = signals_for(sc)
    s = next(x for x in signals if x["profile"])
    assert choices(SHIPPED_ACTIONS, {**s, "profile": {**s["profile"], "opted_out": True}}) == []


def test_the_seer_reads_types_from_looks_by_bayes_rule_and_sits_between_naive_and_the_oracle():
    from streams.tools.decisions import type_odds

    sc = load_scenario("default").with_(duration_ms=20 * 60_000)
    signals, people = signals_for(sc)
    # Given the people, the seer's odds over types are a distribution that favours the type their looks suggest
    buyers = [p for p in people.values() if p.intent == "buy"]
    for p in buyers:
        assert abs(sum(type_odds(p).values()) - 1.0) < 1e-9
    regular = [p for p in buyers if p.looks["returning"] == "1" and p.customer_id and p.looks["device"] == "desktop"]
    new_mobile = [p for p in buyers if p.looks["returning"] == "0" and not p.customer_id and p.looks["device"] == "mobile"]
    assert type_odds(regular[0])["self_server"] > type_odds(new_mobile[0])["self_server"]
    # When it is scored with the same agents as naive and the oracle
    per_hour = {name: run_policy(name, signals, people, sc, SHIPPED_ACTIONS, {})["incremental_conversions_per_agent_hour"]
                for name in ("naive", "seer", "oracle")}
    # Then knowing the looks helps, and knowing the types helps more
    assert per_hour["naive"] < per_hour["seer"] < per_hour["oracle"]
