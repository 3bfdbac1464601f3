"""Decides the next-best-action for one enriched signal, or nothing, and says which gate stopped it.

Gates, in order (each named on the Decision it stops): an action answers the signal
(no_matching_action); the customer has not opted out (opted_out); an action is eligible
(not_eligible) and not suppressed after a recent purchase or a decline of it (recent_purchase,
recent_decline); a channel is allowed by opt-outs, consent and `when`, and outside the quiet hours
(no_channel, quiet_hours); acting has positive expected incremental value
((P(convert | act) - P(convert | no action)) x value - channel cost) (no_positive_uplift); the
minimum gap since the last offer, the daily and the weekly cap hold (min_gap, daily_cap, weekly_cap);
the customer is not in the global hold-out nor in the action's control group (global_holdout,
control_group). Every signal gets a Decision. The ledger is one per customer (or anonymous
visitor) across every channel, in the customer's time zone.

P(convert | act) and P(convert | no action) come from the uplift model (streams/decision/uplift.py),
drawn by Thompson sampling with a generator seeded by the decision id, the model version, the
action and the channel: the same signal and model give the same decision. Exploration only ranks
candidates; every gate above still applies to the one chosen.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from streams.bounded import MERGED_KEPT, put_newest
from streams.data.journey import lines as journey_lines
from streams.decision.actions import IN_PAGE, NEEDS_CONSENT, ON_SITE_SOURCES, READ_LATER, Action, ActionSet, Policy
from streams.decision.clock import local_time
from streams.decision.uplift import AGENT_LED, Model, draw_seed, signal_features, vector
from streams.rules.expr import Compiled, evaluate

RECENT_DECISIONS = 16  # kept per key so a redelivered signal gets the very same decision back
DECLINES_KEPT = 16     # declined actions remembered per key (the most recent)


@dataclass
class Outcome:
    decision: dict
    ledger: dict
    replayed: bool = False
    # an offer that needs an agent goes to its skill's pacer (streams/decision/pacing.py), with the
    # best offer that needs none as the fallback if no agent is free in time
    paced: bool = False
    fallback: dict | None = None


def decision_id(signal_id: str) -> str:
    return hashlib.sha256(f"decision\x1f{signal_id}".encode()).hexdigest()[:24]


def _share_of(*parts: str) -> float:
    return draw_seed(*parts) / 2**64


def in_control_group(key: str, action_id: str, share: float) -> bool:
    """Stable across restarts and replays: a hash of the customer (or visitor) and the action."""
    return share > 0 and _share_of("control", action_id, key) < share


def in_global_holdout(key: str, share: float) -> bool:
    """Customers who never get a proactive offer, whatever the action: a hash of the key alone, so it
    is independent of each action's control group and stable across restarts, replays and rule changes."""
    return share > 0 and _share_of("holdout", key) < share


def local_day(ts_ms: int, tz: str | None) -> str:
    return local_time(ts_ms, tz).date().isoformat()


def local_week(ts_ms: int, tz: str | None) -> str:
    year, week, _ = local_time(ts_ms, tz).isocalendar()
    return f"{year}-W{week:02d}"


def new_ledger() -> dict:
    return {"day": "", "offers_today": 0, "week": "", "offers_week": 0, "last_offer_ts": 0, "purchase_ts": 0,
            "declined": {}, "recent": {}}


def _upgraded(ledger: dict) -> dict:
    """A ledger written by an earlier release, with the fields it lacks."""
    for key, value in new_ledger().items():
        ledger.setdefault(key, value)
    return ledger


def counts_of(ledger: dict) -> dict:
    """What a merged key hands on (a StateMove's ContactCounts): its offers on the latest day and week
    it knows of, counting what was merged into it in turn, its last offer and purchase, its declines."""
    ledger = _upgraded(ledger)
    merged = list(ledger.get("merged", {}).values())
    day = max([ledger["day"]] + [c["day"] for c in merged])  # ISO dates and weeks sort as text
    week = max([ledger["week"]] + [c["week"] for c in merged])
    return {"day": day, "offers_today": offers_in(ledger, "day", day), "week": week,
            "offers_week": offers_in(ledger, "week", week), "last_offer_ts": ledger["last_offer_ts"],
            "purchase_ts": ledger["purchase_ts"], "declined": dict(ledger["declined"])}


def offers_in(ledger: dict, period: str, which: str) -> int:
    """Offers made on local day (period "day") or ISO week ("week") `which`, this key's and its merged keys'."""
    count = "offers_today" if period == "day" else "offers_week"
    own = ledger[count] if ledger[period] == which else 0
    return own + sum(c[count] for c in ledger.get("merged", {}).values() if c[period] == which)


def on_merge(ledger: dict | None, from_key: str, counts: dict) -> dict | None:
    """The ledger with another key's counts in it (a StateMove); None when nothing changed.

    The counts are kept under `from_key`, replacing what that key sent before, so a move received
    twice, or again after the key made more offers, is never counted twice. The last offer and
    purchase are the latest of both; a declined action stays declined from the latest decline."""
    ledger = _upgraded(new_ledger() if ledger is None else ledger)
    merged = ledger.setdefault("merged", {})
    offers = {k: counts[k] for k in ("day", "offers_today", "week", "offers_week")}
    changed = merged.get(from_key) != offers
    if changed:
        put_newest(merged, from_key, offers, MERGED_KEPT)
    for field in ("last_offer_ts", "purchase_ts"):
        if counts[field] > ledger[field]:
            ledger[field], changed = counts[field], True
    for action, ts in counts["declined"].items():
        if ts > ledger["declined"].get(action, 0):
            ledger["declined"].pop(action, None)
            ledger["declined"][action], changed = ts, True
    while len(ledger["declined"]) > DECLINES_KEPT:
        ledger["declined"].pop(min(ledger["declined"], key=ledger["declined"].get))
    return ledger if changed else None


def on_conversion(ledger: dict | None, event: dict) -> dict | None:
    """Note a purchase in the ledger (for suppress_after_purchase); None when nothing changed."""
    if event["type"] != "purchase":
        return None
    ledger = _upgraded(new_ledger() if ledger is None else ledger)
    if event["ts"] <= ledger["purchase_ts"]:
        return None
    ledger["purchase_ts"] = event["ts"]
    return ledger


def on_outcome(ledger: dict | None, outcome: dict) -> dict | None:
    """Note a declined offer in the ledger (for suppress_after_decline); None when nothing changed."""
    action = outcome.get("action_id")
    if outcome["type"] != "declined" or not action:
        return None
    ledger = _upgraded(new_ledger() if ledger is None else ledger)
    declined = ledger["declined"]
    if declined.get(action, 0) >= outcome["ts"]:
        return None
    put_newest(declined, action, outcome["ts"], DECLINES_KEPT)
    return ledger


def last_seen(sig: dict) -> tuple[int, str]:
    """When the visitor was last seen, as of the signal, and on which channel (that of its newest evidence)."""
    newest = max(sig["evidence"], key=lambda e: e["ts"], default=None)
    channel = newest["channel"] if newest else ""
    return sig.get("last_event_ts") or (newest["ts"] if newest else 0), channel


def on_site(sig: dict, away_after_ms: int) -> bool:
    """Is the visitor still on the site (or in the app) when the signal is raised? Their newest evidence
    came from there, and they did something within `away_after_ms` of the signal: a timer's signal is
    raised after a quiet spell, and a visitor quiet for longer has gone."""
    seen, channel = last_seen(sig)
    return channel in ON_SITE_SOURCES and sig["ts"] - seen <= away_after_ms


def context_for_expressions(enriched: dict, away_after_ms: int, channel: str | None = None) -> dict:
    sig = enriched["signal"]
    return {"known": enriched["known"], "profile": enriched["profile"] or {}, "value": enriched.get("value") or {},
            "signal": sig["signal"],
            "priority": sig["priority"], "cart_value": sig["cart_value"], "session_pages": sig["session_pages"],
            "channel": channel, "on_site": on_site(sig, away_after_ms)}


def _value(action: Action, ctx: dict) -> float:
    if isinstance(action.value, Compiled):
        try:
            v = action.value.fn(ctx)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError):
            return 0.0
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0
    return action.value


def allowed_channels(action: Action, ctx: dict, profile: dict) -> list[str]:
    """The action's channels, in the rule's order, that the customer has not opted out of, consented to
    where consent is needed, and whose `when` holds."""
    blocked = set(profile.get("channels_opted_out") or [])
    return [c.channel for c in action.channels
            if c.channel not in blocked
            and not (c.channel in NEEDS_CONSENT and not profile.get("marketing_consent"))
            and evaluate(c.when, ctx)]


def in_quiet_hours(policy: Policy, channel: str, ts_ms: int, tz: str | None) -> bool:
    quiet = policy.quiet_hours
    if quiet is None or channel not in quiet.channels:
        return False
    local = local_time(ts_ms, tz)
    return quiet.holds(local.hour * 60 + local.minute)


def open_channels(action: Action, ctx: dict, profile: dict, policy: Policy, ts_ms: int) -> list[str]:
    """allowed_channels, less those in their quiet hours for this customer now and, once the visitor has
    left the site, those shown in the page; while they are on it, those in the page before the ones
    read later (an in-page message beats an e-mail), the rule's order kept otherwise."""
    out = [c for c in allowed_channels(action, ctx, profile)
           if not in_quiet_hours(policy, c, ts_ms, profile.get("timezone")) and (ctx["on_site"] or c not in IN_PAGE)]
    if ctx["on_site"]:
        out.sort(key=lambda c: c in READ_LATER)  # stable: the rule's order within each kind
    return out


def candidate_channels(action: Action, ctx: dict, profile: dict, policy: Policy, ts_ms: int) -> list[str]:
    """The channel the action uses for this customer: their preferred one when open (but one read later
    while a channel in the page is open to them there), else the first open one (the rule's author ranks
    them; the model has no prior per channel)."""
    allowed = open_channels(action, ctx, profile, policy, ts_ms)
    preferred = profile.get("preferred_channel")
    if preferred in allowed and not (preferred in READ_LATER and allowed[0] not in READ_LATER):
        return [preferred]
    return allowed[:1]


def fallback_channel(action: Action, ctx: dict, profile: dict, policy: Policy, ts_ms: int, primary: list[str]) -> list[str]:
    """The first open channel that needs no agent, when the action's own channel needs one."""
    if not primary or primary[0] not in AGENT_LED:
        return []
    return [c for c in open_channels(action, ctx, profile, policy, ts_ms) if c not in AGENT_LED][:1]


def suppressed(action: Action, ledger: dict, policy: Policy, ts_ms: int) -> str | None:
    """The suppression gate that keeps `action` from this customer now, if any."""
    if (action.goal == "purchase" and policy.suppress_after_purchase_ms and ledger["purchase_ts"]
            and 0 <= ts_ms - ledger["purchase_ts"] < policy.suppress_after_purchase_ms):
        return "recent_purchase"
    declined = ledger["declined"].get(action.id)
    if policy.suppress_after_decline_ms and declined and 0 <= ts_ms - declined < policy.suppress_after_decline_ms:
        return "recent_decline"
    return None


def _evidence_text(sig: dict) -> str:
    parts = []
    for e in sig["evidence"]:
        detail = e.get("query") or e.get("path") or ""
        parts.append(f"{e['type']}" + (f" '{detail}'" if detail else ""))
    return "; ".join(parts)


def _base(enriched: dict, actions: ActionSet, model: Model) -> dict:
    sig = enriched["signal"]
    profile = enriched["profile"] or {}
    context = {"signal": sig["signal"], "rule": sig["rule_id"], "why": sig["rule_description"] or sig["signal"],
               "evidence": _evidence_text(sig), "session_pages": str(sig["session_pages"]),
               "known": "yes" if enriched["known"] else "no"}
    if enriched["known"]:
        context.update(segment=str(profile.get("segment", "")), clv=f"{float(profile.get('clv') or 0.0):.2f}")
        if profile.get("display_name"):
            context["customer_name"] = profile["display_name"]
    value = enriched.get("value")
    if value:  # the data stage's view: CRM's CLV or the estimate from purchases, and the derived segment
        context["value_segment"] = value["segment"]
        if value["clv_source"] != "none":
            context.update(clv=f"{value['clv']:.2f}", clv_source=value["clv_source"])
    if sig["cart_value"]:
        context["cart_value"] = f"{sig['cart_value']:.2f}"
    if enriched.get("journey"):  # what they did before, across channels, and what we offered and how it went
        context["journey"] = journey_lines(enriched["journey"])
    return {
        "decision_id": decision_id(sig["signal_id"]), "key": enriched["key"], "ts": sig["ts"],
        "signal_id": sig["signal_id"], "signal": sig["signal"], "signal_ts": sig["ts"],
        "visitor_id": sig["visitor_id"], "customer_id": sig["customer_id"], "known": enriched["known"],
        "outcome": "no_action", "gate": None, "reason": "", "action_id": None, "channel": None, "skill": None,
        "score": 0.0, "ttl_ms": 0, "rules_fired": [sig["rule_id"]], "features": signal_features(enriched), "scores": {},
        "context": context, "ruleset_version": f"{sig['ruleset_version']}/{actions.version}",
        "model_version": model.version, "candidates": [],
    }


def _stop(d: dict, outcome: str, gate: str, reason: str) -> dict:
    d.update(outcome=outcome, gate=gate, reason=reason)
    return d


def decide(enriched: dict, ledger: dict | None, actions: ActionSet, model: Model | None = None,
           explore: bool = True) -> Outcome:
    """The Decision for one enriched signal and the customer's ledger after it.

    `model` is the uplift model (None: the rules' priors alone); `explore` draws from its posterior
    (Thompson sampling) instead of using its means."""
    ledger = new_ledger() if ledger is None else _upgraded(ledger)
    model = model or Model()
    sig = enriched["signal"]
    earlier = ledger["recent"].get(sig["signal_id"])
    if earlier is not None:
        return Outcome(earlier, ledger, replayed=True, paced=is_paced(earlier), fallback=fallback_of(earlier, actions))
    d = _base(enriched, actions, model)
    decision = _gates(d, enriched, ledger, actions, model, explore)
    put_newest(ledger["recent"], sig["signal_id"], decision, RECENT_DECISIONS)
    return Outcome(decision, ledger, paced=is_paced(decision), fallback=fallback_of(decision, actions))


def is_paced(decision: dict) -> bool:
    """An offer that needs an agent of a skill: released by that skill's pacer."""
    return decision["outcome"] == "act" and decision["channel"] in AGENT_LED and bool(decision["skill"])


def fallback_of(decision: dict, actions: ActionSet) -> dict | None:
    """For a paced offer, the decision to send instead if no agent is free in time: its best candidate
    that needs no agent and is worth sending; None when there is none. Derived from the decision alone,
    so a replayed decision gets the same fallback."""
    if not is_paced(decision):
        return None
    best = None
    for c in decision["candidates"]:
        if c.get("fallback") and c["score"] > 0 and (best is None or c["score"] > best["score"]):
            best = c
    action = actions.get(best["action_id"]) if best else None
    if action is None:
        return None
    context = dict(decision["context"], message_template=action.message)
    return dict(decision, action_id=action.id, channel=best["channel"], skill=None, score=best["score"],
                ttl_ms=action.ttl_ms, context=context,
                reason=offer_reason(context.get("why", decision["signal"]), action, best["channel"], best["score"]))


def offer_reason(why: str, action: Action, channel: str, score: float) -> str:
    return f"{why}: {action.description or action.id} by {channel} (expected incremental value {score:.2f})."


def score_candidates(d: dict, enriched: dict, actions: list[Action], action_set: ActionSet, model: Model,
                     explore: bool) -> list[dict]:
    """Every (action, channel) candidate with its terms, best first (ties: the action listed first)."""
    profile = enriched["profile"] or {}
    ctx = context_for_expressions(enriched, action_set.policy.away_after_ms)
    out = []
    pooled = model.for_actions(action_set.priors)
    for action in actions:
        value = _value(action, ctx)
        primary = candidate_channels(action, ctx, profile, action_set.policy, d["ts"])
        fallback = fallback_channel(action, ctx, profile, action_set.policy, d["ts"], primary)
        for channel in primary + fallback:
            rng = np.random.default_rng(draw_seed(d["decision_id"], model.version, action.id, channel)) if explore else None
            terms = pooled.terms(action.id, vector(d["features"], channel), rng)
            cost = action_set.policy.cost(channel)
            out.append({"action_id": action.id, "channel": channel, "p_act": round(terms["p_act"], 6),
                        "p_no_act": round(terms["p_no_act"], 6), "value": round(value, 4), "cost": cost,
                        "score": round((terms["p_act"] - terms["p_no_act"]) * value - cost, 4),
                        "uplift_mean": round(terms["uplift_mean"], 6), "uplift_sd": round(terms["uplift_sd"], 6),
                        "fallback": channel in fallback, "_action": action})
    out.sort(key=lambda c: (c["fallback"], -c["score"], c["_action"].line))
    return out


def _gates(d: dict, enriched: dict, ledger: dict, actions: ActionSet, model: Model, explore: bool) -> dict:
    sig = enriched["signal"]
    profile = enriched["profile"] or {}
    why = sig["rule_description"] or sig["signal"]
    candidates = actions.answering(sig["signal"])
    if not candidates:
        return _stop(d, "no_action", "no_matching_action", f"No action answers the signal {sig['signal']}.")
    if profile.get("opted_out"):
        return _stop(d, "suppressed", "opted_out", "The customer opted out of proactive contact.")
    policy = actions.policy
    ctx = context_for_expressions(enriched, policy.away_after_ms)
    eligible = [a for a in candidates if evaluate(a.eligible, ctx)]
    if not eligible:
        return _stop(d, "no_action", "not_eligible",
                     f"None of {', '.join(a.id for a in candidates)} is for this {'customer' if enriched['known'] else 'visitor'}.")
    held = {a.id: suppressed(a, ledger, policy, sig["ts"]) for a in eligible}
    eligible = [a for a in eligible if held[a.id] is None]
    if not eligible:
        gate = "recent_purchase" if "recent_purchase" in held.values() else "recent_decline"
        why_not = {"recent_purchase": "bought recently", "recent_decline": "declined it recently"}[gate]
        return _stop(d, "suppressed", gate, f"Not offering {', '.join(held)}: the customer {why_not}.")
    scored = score_candidates(d, enriched, eligible, actions, model, explore)
    if not scored:
        allowed = {c for a in eligible for c in allowed_channels(a, ctx, profile)}
        if allowed and allowed <= IN_PAGE:  # only channels in the page, and the visitor is not on the site
            seen, channel = last_seen(sig)
            where = (f"last seen {max(0, sig['ts'] - seen) // 1000} s before the signal" if channel in ON_SITE_SOURCES
                     else f"last seen on {channel or 'no channel'}")
            return _stop(d, "no_action", "left_site",
                         f"The visitor is not on the site ({where}) and every open channel is in the page.")
        if allowed:
            return _stop(d, "suppressed", "quiet_hours",
                         "Every open channel is outbound and it is the quiet hours in the customer's time zone.")
        return _stop(d, "no_action", "no_channel", "Every channel of the eligible actions is opted out or not allowed.")
    for c in reversed(scored):  # each action's best channel, but for fallbacks
        if not c["fallback"]:
            d["scores"][c["action_id"]] = c["score"]
    best = scored[0]
    action, channel, score = best["_action"], best["channel"], best["score"]
    d["candidates"] = [{k: v for k, v in c.items() if k != "_action"} for c in scored]

    d.update(action_id=action.id, channel=channel, skill=action.skill, score=score, ttl_ms=action.ttl_ms)
    d["context"]["message_template"] = action.message
    if score <= 0:
        return _stop(d, "no_action", "no_positive_uplift",
                     f"Acting is not worth it: the best action, {action.id}, scores {score:.2f}.")
    tz = profile.get("timezone")
    since = sig["ts"] - ledger["last_offer_ts"]
    if policy.min_gap_ms and ledger["last_offer_ts"] and 0 <= since < policy.min_gap_ms:
        return _stop(d, "suppressed", "min_gap", f"The last offer was {since // 1000} s ago (at least "
                                                 f"{policy.min_gap_ms // 1000} s between offers).")
    day, week = local_day(sig["ts"], tz), local_week(sig["ts"], tz)
    if ledger["day"] != day:
        ledger["day"], ledger["offers_today"] = day, 0
    if ledger["week"] != week:
        ledger["week"], ledger["offers_week"] = week, 0
    # the caps count the offers made to keys merged into this one too (a device before its login, a duplicate)
    cap, today = policy.max_offers_per_day, offers_in(ledger, "day", day)
    if today >= cap:
        return _stop(d, "suppressed", "daily_cap", f"Already {today} offers today (cap {cap}).")
    week_cap, this_week = policy.max_offers_per_week, offers_in(ledger, "week", week)
    if week_cap is not None and this_week >= week_cap:
        return _stop(d, "suppressed", "weekly_cap", f"Already {this_week} offers this week (cap {week_cap}).")
    # The hold-outs come after every other gate, so a held-out decision is one that would have been
    # an offer: treated and control are compared like for like. Its action_id is the action it would have
    # taken, and it counts against the cap as that offer would have, so caps thin both arms alike.
    ledger["offers_today"] += 1
    ledger["offers_week"] += 1
    ledger["last_offer_ts"] = max(ledger["last_offer_ts"], sig["ts"])
    if in_global_holdout(d["key"], actions.policy.holdout_share):
        return _stop(d, "control", "global_holdout",
                     f"In the global hold-out (never offered anything); {action.id} would have scored {score:.2f}.")
    if in_control_group(d["key"], action.id, actions.policy.control_share):
        return _stop(d, "control", "control_group",
                     f"Held out in the control group of {action.id}; it would have scored {score:.2f}.")
    d.update(outcome="act", gate=None,
             reason=offer_reason(why, action, channel, score))
    return d
