"""Decides what changed between two runs over the same events: signals added and removed per rule, decisions that flip, and the expected incremental value gained or lost.

Both runs' ids are deterministic (a signal's from its rule, visitor and causing event; a decision's
from its signal), so records are matched by id: a signal id only one run has was added or removed
by the rules; a decision both runs made that differs in outcome, action or channel flipped. The
expected incremental value of a decision is its `score` when it acts, else nothing (a control
decision holds the action back, so it earns nothing by design).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Iterable

from streams.detection.backtest import evidence_steps


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def label(decision: dict) -> str:
    """What a decision did, in a few words: `act <action> by <channel>`, or its outcome and gate."""
    if decision["outcome"] == "act":
        return f"act {decision.get('action_id')} by {decision.get('channel')}"
    return decision["outcome"] + (f" ({decision['gate']})" if decision.get("gate") else "")


def value(decision: dict | None) -> float:
    """The expected incremental value a decision stands for: its score if it acts."""
    return float(decision["score"]) if decision is not None and decision["outcome"] == "act" else 0.0


def _by_id(records: Iterable[dict], key: str) -> dict[str, dict]:
    return {r[key]: r for r in records}


def _signal_example(s: dict) -> dict:
    return {"signal_id": s["signal_id"], "visitor_id": s["visitor_id"], "at": iso(s["ts"]),
            "evidence": evidence_steps(s)[-5:]}


def _decision_example(decision_id: str, before: dict | None, after: dict | None) -> dict:
    d = after or before
    return {"decision_id": decision_id, "visitor_id": d["visitor_id"], "customer_id": d.get("customer_id"),
            "signal": d["signal"], "at": iso(d["signal_ts"]),
            "live": label(before) if before else None, "candidate": label(after) if after else None,
            "value_live": round(value(before), 4), "value_candidate": round(value(after), 4)}


def diff(live_signals: Iterable[dict], live_decisions: Iterable[dict], candidate_signals: Iterable[dict],
         candidate_decisions: Iterable[dict], examples: int = 3) -> dict:
    """The diff of a candidate run against the live one over the same events (records as decoded)."""
    live_s, cand_s = _by_id(live_signals, "signal_id"), _by_id(candidate_signals, "signal_id")
    live_d, cand_d = _by_id(live_decisions, "decision_id"), _by_id(candidate_decisions, "decision_id")

    rules: dict[str, dict] = {}

    def rule(s: dict) -> dict:
        return rules.setdefault(s["rule_id"], {"rule_id": s["rule_id"], "signal": s["signal"], "live": 0, "candidate": 0,
                                               "added": 0, "removed": 0, "examples_added": [], "examples_removed": []})

    for s in live_s.values():
        rule(s)["live"] += 1
    for s in cand_s.values():
        rule(s)["candidate"] += 1
    for sid in sorted(cand_s.keys() - live_s.keys(), key=lambda i: (cand_s[i]["ts"], i)):
        r = rule(cand_s[sid])
        r["added"] += 1
        if len(r["examples_added"]) < examples:
            r["examples_added"].append(_signal_example(cand_s[sid]))
    for sid in sorted(live_s.keys() - cand_s.keys(), key=lambda i: (live_s[i]["ts"], i)):
        r = rule(live_s[sid])
        r["removed"] += 1
        if len(r["examples_removed"]) < examples:
            r["examples_removed"].append(_signal_example(live_s[sid]))

    flips: Counter = Counter()
    model_changed = 0
    shown: dict[str, list] = defaultdict(list)
    gained = lost = 0.0
    same = 0
    for did in sorted(live_d.keys() | cand_d.keys(), key=lambda i: ((live_d.get(i) or cand_d[i])["signal_ts"], i)):
        before, after = live_d.get(did), cand_d.get(did)
        delta = value(after) - value(before)
        gained, lost = gained + max(delta, 0.0), lost + max(-delta, 0.0)
        if before is not None and after is not None:
            if label(before) == label(after):
                same += 1
                continue
            kind = "flipped"
            flips[(label(before), label(after))] += 1
            model_changed += before.get("model_version") != after.get("model_version")
        else:
            kind = "added" if before is None else "removed"
        if len(shown[kind]) < examples:
            shown[kind].append(_decision_example(did, before, after))

    live_value, cand_value = sum(map(value, live_d.values())), sum(map(value, cand_d.values()))
    return {
        "signals": {"live": len(live_s), "candidate": len(cand_s), "added": len(cand_s.keys() - live_s.keys()),
                    "removed": len(live_s.keys() - cand_s.keys())},
        "rules": sorted(rules.values(), key=lambda r: (-(r["added"] + r["removed"]), r["rule_id"])),
        "decisions": {"live": len(live_d), "candidate": len(cand_d), "same": same, "flipped": sum(flips.values()),
                      "added": len(cand_d.keys() - live_d.keys()), "removed": len(live_d.keys() - cand_d.keys()),
                      # flips where the two runs scored with different models (what was learned since, not the rules)
                      "flipped_with_another_model": model_changed,
                      "acting_live": sum(d["outcome"] == "act" for d in live_d.values()),
                      "acting_candidate": sum(d["outcome"] == "act" for d in cand_d.values())},
        "flips": [{"live": a, "candidate": b, "count": n} for (a, b), n in flips.most_common()],
        "value": {"live": round(live_value, 4), "candidate": round(cand_value, 4), "gained": round(gained, 4),
                  "lost": round(lost, 4), "net": round(cand_value - live_value, 4)},
        "examples": {kind: shown.get(kind, []) for kind in ("flipped", "added", "removed")},
    }


def is_empty(report: dict) -> bool:
    """Nothing differs: the candidate run found and decided exactly what the live one did."""
    s, d = report["signals"], report["decisions"]
    return not (s["added"] or s["removed"] or d["flipped"] or d["added"] or d["removed"])


def format_diff(report: dict, title: str) -> str:
    s, d, v = report["signals"], report["decisions"], report["value"]
    lines = [title,
             f"signals: live {s['live']}, candidate {s['candidate']} (+{s['added']} / -{s['removed']})"]
    for r in report["rules"]:
        lines.append(f"  {r['rule_id']:28} -> {r['signal']:22} live {r['live']:6}  candidate {r['candidate']:6}"
                     f"  +{r['added']} / -{r['removed']}")
        for ex in r["examples_added"]:
            lines.append(f"      + {ex['visitor_id']} at {ex['at']}: {' > '.join(ex['evidence'])}")
        for ex in r["examples_removed"]:
            lines.append(f"      - {ex['visitor_id']} at {ex['at']}: {' > '.join(ex['evidence'])}")
    lines.append(f"decisions: live {d['live']} ({d['acting_live']} acting), candidate {d['candidate']}"
                 f" ({d['acting_candidate']} acting); same {d['same']}, flipped {d['flipped']}"
                 f" ({d['flipped_with_another_model']} scored with another model), +{d['added']} / -{d['removed']}")
    for f in report["flips"][:10]:
        lines.append(f"  {f['count']:6} x  {f['live']}  ->  {f['candidate']}")
    lines.append(f"expected incremental value: live {v['live']:.2f}, candidate {v['candidate']:.2f}"
                 f" (gained {v['gained']:.2f}, lost {v['lost']:.2f}, net {v['net']:+.2f})")
    for kind, shown in report["examples"].items():
        for ex in shown:
            lines.append(f"  e.g. {kind}: {ex['signal']} for {ex['customer_id'] or ex['visitor_id']} at {ex['at']}:"
                         f" {ex['live'] or '(none)'} -> {ex['candidate'] or '(none)'}")
    if is_empty(report):
        lines.append("no difference")
    return "\n".join(lines)
