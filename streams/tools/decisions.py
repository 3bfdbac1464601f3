"""Decides how decision quality is measured: the engine and four baselines on the same people, agents and signals, scored by the truth.

For each scenario the engine runs on the real broker while the scenario is played against it.
Then its signals (engage.enriched) go through four baselines with the same capacity model:
  naive   invite on every signal whenever an agent of the action's skill is free, first come first served;
  random  as many invitations as the engine made, to signals picked at random, any eligible action;
  oracle  knows each person's true effects: the action and channel worth most, only where positive,
          agents only when free.
  seer    as the oracle, but knowing only what the engine could learn: the world's rules and what a
          person shows (intent, returning, logged in, device), not their type. The best any model of
          those features could do: the ceiling for a learning engine.
Every policy, the engine included, is scored by the same `Reception` (who accepts, which agent
takes them, who gives up) against the people's truth: incremental conversions and value are
expected values, P(convert | what reached them) - P(convert | nothing), summed over people, so
the comparison does not depend on the conversion draws.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams import clients, topics
from streams.admin import ensure_topics, wait_for_broker
from streams.decision.actions import ActionSet, load_actions
from streams.decision.policy import context_for_expressions, open_channels
from streams.rules.expr import evaluate
from streams.settings import Settings
from streams.tools import localkafka
from streams.tools.bench import machine, write_results
from streams.tools.procs import spawn, stop_process
from streams.tools.scenario import HUMAN_CHANNELS, Scenario, load_scenario
from streams.tools.world import LOOKS, Person, Population, Reception

SCENARIOS = ("default", "scarce-agents", "zero-uplift", "drift")
ATTRIBUTION_WINDOW_MS = 10 * 60_000
# The engine learns while it decides: each scenario is played for WARM_UP_MS first (other people of
# the same world, the engine exploring and learning), and only what follows is scored. A scenario
# with a drift is scored for AFTER_DRIFT_MS after the change, in SEGMENT_MS steps, to see it recover.
WARM_UP_MS = 60 * 60_000
AFTER_DRIFT_MS = 60 * 60_000
SEGMENT_MS = 15 * 60_000
POLICIES = ("engine", "naive", "random", "seer", "oracle")


@dataclass
class Score:
    invitations: int = 0
    reached: int = 0                   # shown, or taken by an agent
    declined: int = 0
    abandoned: int = 0                 # accepted, no agent came in time
    expired: int = 0                   # the person had gone
    agent_ms: int = 0
    to_type: dict = field(default_factory=dict)   # response type -> invitations

    def as_dict(self, people: list[Person], reception: Reception) -> dict:
        inc = sum(reception.p_final(p) - p.truth.base for p in people)
        value = sum((reception.p_final(p) - p.truth.base) * p.value for p in people)
        hours = self.agent_ms / 3_600_000
        n = max(1, self.invitations)
        return {
            "invitations": self.invitations, "reached": self.reached, "declined": self.declined,
            "abandoned": self.abandoned, "expired": self.expired, "agent_hours": round(hours, 2),
            "incremental_conversions": round(inc, 2), "incremental_value": round(value, 1),
            "incremental_conversions_per_agent_hour": round(inc / hours, 3) if hours else None,
            "share_to_self_servers": round(self.to_type.get("self_server", 0) / n, 3),
            "share_to_sleeping_dogs": round(self.to_type.get("sleeping_dog", 0) / n, 3),
            "invitations_by_type": dict(sorted(self.to_type.items())),
        }


def choices(action_set: ActionSet, enriched: dict) -> list[tuple[str, str, str | None]]:
    """(action, channel, skill) pairs the action rules allow for this signal: eligibility, consent, channel
    conditions and quiet hours."""
    profile = enriched["profile"] or {}
    if profile.get("opted_out"):
        return []
    ctx = context_for_expressions(enriched, action_set.policy.away_after_ms)
    ts = enriched["signal"]["ts"]
    return [(action.id, channel, action.skill) for action in action_set.answering(enriched["signal"]["signal"])
            if evaluate(action.eligible, ctx) for channel in open_channels(action, ctx, profile, action_set.policy, ts)]


def run_policy(name: str, signals: list[dict], people: dict[str, Person], scenario: Scenario, action_set: ActionSet,
               engine_decisions: dict[str, dict], seed: int = 1, segments: list[int] | None = None) -> dict:
    """Score one policy over the signals in time order; each signal may become one invitation.

    With `segments` (ascending times), also the incremental conversions of the people arriving in each
    segment [segments[i], segments[i + 1])."""
    reception = Reception(scenario)
    score = Score()
    rng = random.Random(f"{seed}:{name}")
    k = sum(1 for s in signals if (engine_decisions.get(s["signal"]["signal_id"]) or {}).get("outcome") == "act")
    chosen_for_random: set = set()
    if name == "random":  # k of the signals some action may answer: as many invitations as the engine made
        open_ = [s["signal"]["signal_id"] for s in signals if choices(action_set, s)]
        chosen_for_random = set(rng.sample(open_, min(k, len(open_))))
    for enriched in signals:
        sig = enriched["signal"]
        ts, person = sig["ts"], people.get(sig["visitor_id"])
        pick = None
        if name == "engine":
            d = engine_decisions.get(sig["signal_id"])
            if d is not None and d["outcome"] == "act":
                pick = (d["action_id"], d["channel"], d["skill"])
        else:
            options = choices(action_set, enriched)
            if name == "naive":
                # the first action the rules list for the signal; agent-led only while an agent is free
                pick = next(((a, c, s) for a, c, s in options
                             if c not in HUMAN_CHANNELS or reception.free_agents(s, ts) > 0), None)
            elif name == "random" and sig["signal_id"] in chosen_for_random and options:
                pick = rng.choice(options)
            elif name == "oracle" and person is not None:
                pick = _oracle(options, person, reception, ts, action_set)
            elif name == "seer" and person is not None:
                pick = _oracle(options, person, reception, ts, action_set, seen=True)
        if pick is None:
            continue
        score.invitations += 1
        if person is not None:
            score.to_type[person.type] = score.to_type.get(person.type, 0) + 1
        reaction = reception.offer(person, ts, *pick)
        if reaction.kind in ("shown", "accepted"):
            score.reached += 1
            score.agent_ms += reaction.handling_ms
        elif reaction.kind in ("declined", "ignored"):
            score.declined += 1
        elif reaction.kind == "abandoned":
            score.abandoned += 1
        else:
            score.expired += 1
    out = score.as_dict(list(people.values()), reception)
    if segments:
        out["by_segment"] = [round(sum(reception.p_final(p) - p.truth.base for p in people.values()
                                       if lo <= p.arrive_ms < hi), 2) for lo, hi in zip(segments, segments[1:])]
    return out


def type_odds(person: Person) -> dict[str, float]:
    """P(type | intent, returning, logged in, device): the world's own mix and looks, by Bayes' rule."""
    odds = {}
    for type_, weight in dict(person.world.intents)[person.intent].types:
        returning_p, known_p, _pages, _cart, mobile_p = LOOKS[type_]
        odds[type_] = (weight * (returning_p if person.looks["returning"] == "1" else 1 - returning_p)
                       * (known_p if person.customer_id else 1 - known_p)
                       * (mobile_p if person.looks["device"] == "mobile" else 1 - mobile_p))
    total = sum(odds.values()) or 1.0
    return {k: v / total for k, v in odds.items()}


def _expected_incremental(person: Person, action: str, channel: str) -> float:
    """What the seer expects: the effect averaged over the types the person may be."""
    strength = person.world.effect(action, channel)
    return sum(p * strength * (person.world.truth(t).treated - person.world.truth(t).base)
               for t, p in type_odds(person).items())


def _oracle(options, person: Person, reception: Reception, ts: int, action_set: ActionSet, seen: bool = False):
    best, best_value = None, 0.0
    reached = reception.strength.get(person.visitor_id, 0.0)
    for action, channel, skill in options:
        if channel in HUMAN_CHANNELS and (reception.free_agents(skill, ts) == 0 or person.visitor_id in reception.engaged):
            continue
        if person.world.effect(action, channel) <= reached:
            continue  # nothing more to gain from this person
        gain = _expected_incremental(person, action, channel) if seen else person.incremental(action, channel)
        value = gain * person.value - action_set.policy.cost(channel)
        if value > best_value:
            best, best_value = (action, channel, skill), value
    return best


def score_run(scenario: Scenario, sim_start_ms: int, enriched: list[dict], decisions: list[dict],
              action_set: ActionSet, run: str = "", scored_from_ms: int = 0) -> dict:
    """Every policy on the people who arrive from `scored_from_ms` (simulated time since the start) on, and their signals."""
    start = sim_start_ms + scored_from_ms
    people = {p.visitor_id: p for p in Population(scenario, start_ms=sim_start_ms, run=run).people()
              if p.arrive_ms >= start}
    signals = sorted((e for e in enriched if e["signal"]["visitor_id"] in people),
                     key=lambda e: (e["signal"]["ts"], e["signal"]["signal_id"]))
    by_signal = {d["signal_id"]: d for d in decisions}
    scored = [by_signal[s["signal"]["signal_id"]] for s in signals if s["signal"]["signal_id"] in by_signal]
    segments = None
    if scenario.drift_at_ms is not None:
        drift = sim_start_ms + scenario.drift_at_ms
        segments = [start] + list(range(drift, sim_start_ms + scenario.duration_ms + 1, SEGMENT_MS))
    out = {"people": len(people), "signals": len(signals), "decisions_by_outcome": _count(d["outcome"] for d in scored),
           "model_versions": len({d.get("model_version") for d in scored})}
    for policy in POLICIES:
        out[policy] = run_policy(policy, signals, people, scenario, action_set, by_signal, segments=segments)
    out["engine_belief_by_type"] = belief_by_type(signals, by_signal, people)
    if segments:
        eng, ora = out["engine"]["by_segment"], out["oracle"]["by_segment"]
        out["after_drift"] = {"segment_minutes": SEGMENT_MS // 60_000,
                              "engine_share_of_oracle": [_ratio(e, o) for e, o in zip(eng[1:], ora[1:])],
                              "before_drift_share": _ratio(eng[0], ora[0])}
    eng, naive, oracle = out["engine"], out["naive"], out["oracle"]
    out["engine_vs_naive_per_agent_hour"] = _ratio(eng["incremental_conversions_per_agent_hour"],
                                                   naive["incremental_conversions_per_agent_hour"])
    out["engine_share_of_oracle_incremental_conversions"] = _ratio(eng["incremental_conversions"],
                                                                  oracle["incremental_conversions"])
    out["engine_share_of_oracle_per_agent_hour"] = _ratio(eng["incremental_conversions_per_agent_hour"],
                                                         oracle["incremental_conversions_per_agent_hour"])
    out["seer_share_of_oracle_per_agent_hour"] = _ratio(out["seer"]["incremental_conversions_per_agent_hour"],
                                                        oracle["incremental_conversions_per_agent_hour"])
    out["engine_share_of_seer_per_agent_hour"] = _ratio(eng["incremental_conversions_per_agent_hour"],
                                                       out["seer"]["incremental_conversions_per_agent_hour"])
    return out


def belief_by_type(signals: list[dict], by_signal: dict[str, dict], people: dict[str, Person]) -> dict:
    """The model's mean uplift for the best candidate, averaged over each true response type: does it tell them apart?"""
    sums: dict = {}
    for s in signals:
        d, person = by_signal.get(s["signal"]["signal_id"]), people.get(s["signal"]["visitor_id"])
        primary = [c for c in (d or {}).get("candidates") or [] if not c.get("fallback")]
        if person is None or not primary:
            continue
        n, total = sums.get(person.type, (0, 0.0))
        sums[person.type] = (n + 1, total + primary[0]["uplift_mean"])
    return {t: {"signals": n, "mean_uplift": round(total / n, 3)} for t, (n, total) in sorted(sums.items())}


def model_summary(settings: Settings, action_set: ActionSet) -> dict:
    """What the model learned by the end of a run: outcomes, and each feature's weight on uplift (treated - untreated)."""
    from streams.decision.models import ModelBook
    from streams.decision.uplift import FEATURES

    book = ModelBook()  # as a worker reads engage.models: the latest record of each partition, merged
    book.offer(_read(settings, topics.MODELS))
    model = book.model
    pooled = model.for_actions(action_set.priors)
    mean = pooled.posteriors().mean
    shared, block = len(FEATURES) - 1, len(mean) // 2  # [base weights, base intercepts, uplift weights, uplift intercepts]
    weights = {name: round(float(mean[block + i]), 3) for i, name in enumerate(FEATURES[1:])}
    intercepts = {a: round(float(mean[block + shared + i]), 3) for i, a in enumerate(pooled.priors)}
    counts = {a: [model.evidence[a][0].n, model.evidence[a][1].n] for a in sorted(model.evidence)}
    return {"version": model.version, "labels": model.labels, "uplift_weights": weights,
            "uplift_intercepts": intercepts, "labels_treated_untreated": counts}


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _read(settings: Settings, spec: topics.TopicSpec) -> list[dict]:
    codec = clients.codec(settings)
    name = settings.topic(spec.name)
    return [codec.decode(name, spec.schema, value) for _, _, _, _, value in clients.read_all(settings, name)
            if value is not None]


def _settled(settings: Settings, spec: topics.TopicSpec, quiet_s: float, timeout_s: float) -> None:
    """Wait until the topic has had nothing new for `quiet_s` (the worker has caught up)."""
    from confluent_kafka import TopicPartition

    c = clients.consumer(settings, clients.throwaway_group("bench-settle"), log_level=None)
    name = settings.topic(spec.name)
    try:
        last, since = None, time.monotonic()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ends = tuple(clients.watermarks(c, TopicPartition(name, p), time.monotonic() + 10)[1] for p in range(settings.partitions))
            if ends != last:
                last, since = ends, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(1)
    finally:
        c.close()


def measured_lift(attributions: list[dict]) -> dict:
    """What `engage report lift` says about the run, from the control groups alone: to set beside the truth."""
    from streams.report.lift import lift_report

    overall = lift_report(attributions)["overall"]
    keep = ("n_treated", "n_control", "conversion_treated", "conversion_control", "conversion_diff", "conversion_diff_ci",
            "incremental_conversions", "incremental_conversions_ci", "agent_hours")
    return {k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v] if isinstance(v, list) else v)
            for k, v in overall.items() if k in keep}


def played(scenario: Scenario, warm_up_ms: int) -> Scenario:
    """The scenario as the bench plays it: `warm_up_ms` first, then its duration (for a drift, up to AFTER_DRIFT_MS after it)."""
    if scenario.drift_at_ms is None:
        return scenario.with_(duration_ms=warm_up_ms + scenario.duration_ms)
    return scenario.with_(duration_ms=warm_up_ms + scenario.drift_at_ms + AFTER_DRIFT_MS, drift_share=None,
                          drift_at_ms=warm_up_ms + scenario.drift_at_ms)


def run_scenario(settings: Settings, scenario: Scenario, speed: float, work: Path, warm_up_ms: int = WARM_UP_MS) -> dict:
    from streams.tools.play import play

    scenario = played(scenario, warm_up_ms)
    run = f"{scenario.name}-{time.strftime('%H%M%S')}"
    s = settings.with_(topic_prefix=f"decisions-{run}.", app_id=f"engage-decisions-{run}", data_dir=work / run / "state")
    ensure_topics(s)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers, "ENGAGE_TOPIC_PREFIX": s.topic_prefix,
           "ENGAGE_APP_ID": s.app_id, "ENGAGE_DATA_DIR": str(s.data_dir), "ENGAGE_LOG_LEVEL": "warning",
           # journeys end within minutes of their signals: a 10-minute window closes within the run
           "ENGAGE_ATTRIBUTION_WINDOW": f"{ATTRIBUTION_WINDOW_MS // 1000}s"}
    (work / run).mkdir(parents=True, exist_ok=True)
    worker = spawn(["worker"], work / run / "worker.log", env=env)
    try:
        time.sleep(15)  # the worker joins its group and restores (empty) tables
        truth = work / run / "truth.jsonl"
        t0 = time.monotonic()
        stats = play(s, scenario, speed=speed, truth_path=truth, quiet=True, stop=threading.Event())
        _settled(s, topics.ATTRIBUTIONS, quiet_s=8, timeout_s=180)
        wall = time.monotonic() - t0
    finally:
        stop_process(worker)
    enriched = _read(s, topics.ENRICHED)
    decisions = _read(s, topics.DECISIONS)
    action_set = load_actions(settings.rules_dir / "actions.yaml")
    result = score_run(scenario, stats.sim_start_ms, enriched, decisions, action_set, run=stats.run,
                       scored_from_ms=warm_up_ms)
    lines = [json.loads(line) for line in truth.read_text().splitlines()[1:]]
    result["engine_live"] = {  # what actually happened in the live run, by the same truth
        "people_ended": len(lines), "converted": sum(x["converted"] for x in lines),
        "incremental_conversions_expected": round(sum(x["p_final"] - x["base"] for x in lines), 2),
        "outcomes": stats.outcomes}
    result["engine_measured"] = measured_lift(_read(s, topics.ATTRIBUTIONS))
    result["model"] = model_summary(s, action_set)
    result["run"] = {"events": stats.events, "speed": speed, "wall_seconds": round(wall, 1),
                     "simulated_minutes": round((scenario.duration_ms) / 60_000, 1)}
    return result


def run_bench_decisions(settings: Settings, scenarios: list[str], speed: float, out: Path | None,
                        warm_up_ms: int = WARM_UP_MS) -> dict:
    run_id = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="engage-decisions-"))
    broker = localkafka.LocalBroker(port=19392, data_dir=work / "kafka")
    started = False
    result: dict = {"run": run_id, "machine": machine(), "speed": speed,
                    "warm_up": f"{warm_up_ms // 60_000} simulated minutes of the same world (other people) before the "
                               "scored part; the engine starts from the priors of rules/actions.yaml and learns "
                               "throughout, exploring by Thompson sampling",
                    "warm_up_minutes": warm_up_ms // 60_000, "scenarios": {}}
    try:
        if not settings.external_kafka:
            print("[bench-decisions] starting a local Kafka broker ...", flush=True)
            started = localkafka.up(broker)
            settings = settings.with_(bootstrap_servers=broker.bootstrap)
        wait_for_broker(settings, 60)
        for name in scenarios:
            scenario = load_scenario(name)
            total = played(scenario, warm_up_ms).duration_ms
            print(f"[bench-decisions] {scenario.name}: playing {total / 60_000:.0f} simulated minutes "
                  f"({warm_up_ms / 60_000:.0f} of warm-up) at {speed:g}x against the engine ...", flush=True)
            result["scenarios"][scenario.name] = res = run_scenario(settings, scenario, speed, work, warm_up_ms)
            print(format_scenario(scenario.name, res), flush=True)
    finally:
        if started:
            localkafka.down(broker)
        shutil.rmtree(work, ignore_errors=True)
    print(markdown_table(result))
    print(f"[bench-decisions] written to {write_results(result, 'decisions', run_id, out)}")
    return result


def markdown_table(result: dict) -> str:
    """The comparison as a Markdown table, for the README."""
    rows = ["| scenario | policy | invitations | agent-hours | incremental conversions | incremental value "
            "| conversions per agent-hour | to self-servers | to sleeping dogs |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, res in result["scenarios"].items():
        for policy in POLICIES:
            r = res[policy]
            per = r["incremental_conversions_per_agent_hour"]
            rows.append(f"| {name} | {policy} | {r['invitations']} | {r['agent_hours']:.2f} | {r['incremental_conversions']:.1f} "
                        f"| {r['incremental_value']:,.0f} | {'-' if per is None else f'{per:.2f}'} "
                        f"| {r['share_to_self_servers']:.0%} | {r['share_to_sleeping_dogs']:.0%} |")
    return "\n".join(rows)


def format_scenario(name: str, res: dict) -> str:
    rows = [f"  {name}: {res['people']} people, {res['signals']} signals",
            f"    {'policy':<8} {'invites':>7} {'agent h':>7} {'incr conv':>9} {'incr value':>10} {'conv/agent h':>12} "
            f"{'to self-servers':>15} {'to sleeping dogs':>16}"]
    for policy in POLICIES:
        r = res[policy]
        per = r["incremental_conversions_per_agent_hour"]
        rows.append(f"    {policy:<8} {r['invitations']:>7} {r['agent_hours']:>7.2f} {r['incremental_conversions']:>9.2f} "
                    f"{r['incremental_value']:>10.1f} {per if per is not None else '-':>12} "
                    f"{r['share_to_self_servers']:>15.1%} {r['share_to_sleeping_dogs']:>16.1%}")
    rows.append(f"    engine / naive per agent-hour: {res['engine_vs_naive_per_agent_hour']}; "
                f"engine / oracle incremental conversions: {res['engine_share_of_oracle_incremental_conversions']}")
    rows.append(f"    per agent-hour: engine / oracle {res['engine_share_of_oracle_per_agent_hour']}, seer / oracle "
                f"{res.get('seer_share_of_oracle_per_agent_hour')}, engine / seer {res.get('engine_share_of_seer_per_agent_hour')}")
    belief = res.get("engine_belief_by_type") or {}
    if belief:
        rows.append("    the model's mean uplift of the chosen action, by true type: "
                    + ", ".join(f"{k} {v['mean_uplift']:+.3f} ({v['signals']})" for k, v in belief.items()))
    model = res.get("model") or {}
    if model.get("labels"):
        rows.append(f"    model {model['version']}: {model['labels']} outcomes; weights on uplift: "
                    + ", ".join(f"{k} {v:+.3f}" for k, v in model["uplift_weights"].items()))
    if res.get("after_drift"):
        a = res["after_drift"]
        rows.append(f"    engine / oracle before the drift: {a['before_drift_share']}; in each {a['segment_minutes']} minutes "
                    f"after it: {a['engine_share_of_oracle']}")
    m = res.get("engine_measured")
    if m and m.get("incremental_conversions") is not None:
        ci = m["incremental_conversions_ci"] or [None, None]
        rows.append(f"    the lift report on the engine's run (control groups only): {m['incremental_conversions']:+.1f} "
                    f"incremental conversions, 95% CI {ci}, {m['n_treated']} treated / {m['n_control']} held-out customers")
    return "\n".join(rows)

