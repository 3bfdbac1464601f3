"""Decides what the engine's decisions earned: treated against control + hold-out, per action and overall, with 95% CIs.

Reads the current revision of every decision's attribution (engage.attributions), keeps the decisions
whose attribution window is over, and compares the people the engine acted on with the people held
out: conversion (the engine's own per-goal flag), net value (revenue − lost value), calls to the
contact centre and agent time. Everything but `read_attributions` is pure, so the report can be
tested and re-run on any list of records.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from statistics import NormalDist, fmean, variance
from typing import Iterable, NamedTuple

CONFIDENCE = 0.95
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)
TREATED = "treated"
COMPARISON = ("control", "holdout")
ARMS = (TREATED, *COMPARISON, "none")
OVERALL = "overall"
NO_ACTION = "(no action)"
HOUR_MS = 3_600_000
MAX_BUCKETS = 48
# bucket sizes people read without arithmetic; the first that gives at most MAX_BUCKETS wins
BUCKETS = ((60_000, "1m"), (5 * 60_000, "5m"), (10 * 60_000, "10m"), (15 * 60_000, "15m"), (30 * 60_000, "30m"),
           (HOUR_MS, "1h"), (2 * HOUR_MS, "2h"), (3 * HOUR_MS, "3h"), (6 * HOUR_MS, "6h"), (12 * HOUR_MS, "12h"),
           (24 * HOUR_MS, "1d"), (48 * HOUR_MS, "2d"), (7 * 24 * HOUR_MS, "7d"), (14 * 24 * HOUR_MS, "14d"),
           (30 * 24 * HOUR_MS, "30d"))

ARMS_NOTE = ("treated = the engine acted. Per action, comparison = control + holdout (control: held out of this "
             "action; holdout: the global hold-out, never offered anything); overall and over time, comparison = "
             "holdout only, the one arm no action touched. Decisions with arm 'none' are counted, not compared.")


# ---------------------------------------------------------------- intervals


def wilson(x: int, n: int, z: float = Z) -> list[float] | None:
    """Wilson score interval for x successes out of n; None when n is 0."""
    if n <= 0:
        return None
    p = x / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z / d * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clamped: rounding can put 0/n or n/n a hair outside [0, 1]
    return [max(0.0, centre - half), min(1.0, centre + half)]


def newcombe(x1: int, n1: int, x2: int, n2: int, z: float = Z) -> list[float] | None:
    """Interval for x1/n1 − x2/n2: Newcombe's hybrid score interval (1998, method 10) from two Wilson intervals.

    Unlike the Wald interval it keeps its coverage near 0 and 1 and with small groups, which is
    where control arms live. None when either group is empty.
    """
    w1, w2 = wilson(x1, n1, z), wilson(x2, n2, z)
    if w1 is None or w2 is None:
        return None
    p1, p2 = x1 / n1, x2 / n2
    d = p1 - p2
    return [d - math.sqrt((p1 - w1[0]) ** 2 + (w2[1] - p2) ** 2),
            d + math.sqrt((w1[1] - p1) ** 2 + (p2 - w2[0]) ** 2)]


def welch(a: list[float], b: list[float], z: float = Z) -> tuple[float | None, list[float] | None]:
    """mean(a) − mean(b) and its interval by Welch's normal approximation (var/n of each group).

    The difference needs one value each side; the interval needs two (a sample variance), else None.
    """
    if not a or not b:
        return None, None
    diff = fmean(a) - fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, None
    se = math.sqrt(variance(a) / len(a) + variance(b) / len(b))
    return diff, [diff - z * se, diff + z * se]


def _scaled(ci: list[float] | None, k: float) -> list[float] | None:
    return None if ci is None else sorted([ci[0] * k, ci[1] * k])


def _share(x: int, n: int) -> float | None:
    return x / n if n else None


# ---------------------------------------------------------------- report


def latest(records: Iterable[dict]) -> list[dict]:
    """The current attribution of each decision: its highest revision (of equal ones, the later in the input).

    The topic is compacted but not yet compacted everywhere, and a replay can write an older
    revision again; either way each decision counts once, as its latest state.
    """
    current: dict[str, dict] = {}
    for rec in records:
        seen = current.get(rec["decision_id"])
        if seen is None or rec["revision"] >= seen["revision"]:
            current[rec["decision_id"]] = rec
    return list(current.values())


def _net(rec: dict) -> float:
    return float(rec.get("revenue") or 0.0) - float(rec.get("lost_value") or 0.0)


def first_per(rows: list[dict], unit) -> list[dict]:
    """The first decision of each unit (a customer, or a customer and action), in decision time.

    The unit of comparison is the customer, not the decision: a customer who raises two signals (two
    failed-login rules, a second visit) gets two decisions whose windows overlap, and one purchase
    would count for both. Which arm a customer is in is stable (a hash of the key and the action), so
    the first decision stands for them, with what followed it within its window (intention to treat).
    """
    first: dict = {}
    for r in sorted(rows, key=lambda r: (r["decision_ts"], r["decision_id"])):
        first.setdefault(unit(r), r)
    return list(first.values())


def _group(name: str, rows: list[dict], unit, comparison_arms: tuple[str, ...] = COMPARISON) -> dict:
    # agent time is what every treated decision used; conversions and value are per customer (first_per)
    agent_hours = sum(float(r.get("agent_seconds") or 0.0) for r in rows if r["arm"] == TREATED) / 3600
    n_decisions = len(rows)
    rows = first_per(rows, unit)
    treated = [r for r in rows if r["arm"] == TREATED]
    comparison = [r for r in rows if r["arm"] in comparison_arms]
    nt, nc = len(treated), len(comparison)
    # converted is the engine's verdict by the action's goal (bought / did not cancel / did not call): not recomputed
    xt, xc = sum(bool(r.get("converted")) for r in treated), sum(bool(r.get("converted")) for r in comparison)
    rt, rc = _share(xt, nt), _share(xc, nc)
    diff = rt - rc if rt is not None and rc is not None else None
    diff_ci = newcombe(xt, nt, xc, nc)
    net_t, net_c = [_net(r) for r in treated], [_net(r) for r in comparison]
    net_diff, net_ci = welch(net_t, net_c)
    incremental = diff * nt if diff is not None else None
    per_agent_hour = incremental / agent_hours if incremental is not None and agent_hours > 0 else None
    ct, cc = sum(bool(r.get("called")) for r in treated), sum(bool(r.get("called")) for r in comparison)
    call_t, call_c = _share(ct, nt), _share(cc, nc)
    return {
        "action_id": name, "n_treated": nt, "n_control": nc, "decisions": n_decisions,
        "conversion_treated": rt, "conversion_control": rc,
        "conversion_treated_ci": wilson(xt, nt), "conversion_control_ci": wilson(xc, nc),
        "conversion_diff": diff, "conversion_diff_ci": diff_ci,
        "incremental_conversions": incremental, "incremental_conversions_ci": _scaled(diff_ci, nt),
        "net_value_treated": fmean(net_t) if net_t else None, "net_value_control": fmean(net_c) if net_c else None,
        "net_value_diff": net_diff, "net_value_diff_ci": net_ci,
        "incremental_net_value": net_diff * nt if net_diff is not None else None,
        "incremental_net_value_ci": _scaled(net_ci, nt),
        "agent_hours": agent_hours,
        "incremental_conversions_per_agent_hour": per_agent_hour,
        "call_rate_treated": call_t, "call_rate_control": call_c,
        "calls_deflected": (call_c - call_t) * nt if call_t is not None and call_c is not None else None,
        "calls_deflected_ci": _scaled(newcombe(cc, nc, ct, nt), nt),
        "converted_anyway_share": rc,
        "accepted_share": _share(sum(bool(r.get("accepted")) for r in treated), nt),
        "shown_share": _share(sum(bool(r.get("shown")) for r in treated), nt),
    }


def _bucket(span_ms: int) -> tuple[int, str]:
    for size, label in BUCKETS:
        if math.ceil(span_ms / size) <= MAX_BUCKETS:
            return size, label
    days = math.ceil(span_ms / MAX_BUCKETS / (24 * HOUR_MS))
    return days * 24 * HOUR_MS, f"{days}d"


def _series(rows: list[dict]) -> tuple[int, str, list[dict]]:
    """Incremental net value per time bucket and its running total, for the chart.

    Each bucket compares its own treated and comparison means, so the last running total is close
    to, not equal to, the period's incremental net value (which compares the period's means).
    """
    if not rows:
        return HOUR_MS, "1h", []
    first, last = min(r["decision_ts"] for r in rows), max(r["decision_ts"] for r in rows)
    size, label = _bucket(last - first + 1)
    origin = first // size * size  # whole hours / days, so the axis reads naturally
    comparison_all = [_net(r) for r in rows if r["arm"] != TREATED]
    by_bucket: dict[int, list[dict]] = {}
    for r in rows:
        by_bucket.setdefault((r["decision_ts"] - origin) // size, []).append(r)
    out, total = [], 0.0
    for i in range((last - origin) // size + 1):
        bucket = by_bucket.get(i, [])
        net_t = [_net(r) for r in bucket if r["arm"] == TREATED]
        # a bucket without comparison rows borrows the period's comparison mean rather than leaving a hole
        net_c = [_net(r) for r in bucket if r["arm"] != TREATED] or comparison_all
        value = (fmean(net_t) - fmean(net_c)) * len(net_t) if net_t and net_c else (0.0 if comparison_all else None)
        total = total + value if value is not None else total
        out.append({"start": _iso(origin + i * size), "start_ms": origin + i * size, "n_treated": len(net_t),
                    "n_control": sum(r["arm"] != TREATED for r in bucket), "incremental_net_value": value,
                    "cumulative": total if comparison_all else None})
    return size, label, out


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def lift_report(records: Iterable[dict], start_ms: int | None = None, end_ms: int | None = None,
                horizon_ms: int | None = None) -> dict:
    """Treated against control + hold-out for the decisions with start_ms <= decision_ts < end_ms whose window is over.

    `horizon_ms` is how far attribution has got: a decision whose window ends after it may still
    convert (or, for retain and resolve, still fail), so it is counted as pending, not compared.
    By default it is the latest decision_ts in the records.
    """
    records = list(records)
    if horizon_ms is None:
        horizon_ms = max((r["decision_ts"] for r in records), default=None)
    in_range = [r for r in latest(records)
                if (start_ms is None or r["decision_ts"] >= start_ms) and (end_ms is None or r["decision_ts"] < end_ms)]
    done = [r for r in in_range if horizon_ms is not None and r["window_end_ts"] <= horizon_ms
            and not r.get("incomplete")]  # an incomplete attribution never looked for its whole window
    decisions = dict.fromkeys(ARMS, 0)
    for r in done:
        decisions[r["arm"]] = decisions.get(r["arm"], 0) + 1
    compared = [r for r in done if r["arm"] == TREATED or r["arm"] in COMPARISON]
    actions: dict[str, list[dict]] = {}
    for r in compared:
        actions.setdefault(r.get("action_id") or NO_ACTION, []).append(r)
    size, label, series = _series([r for r in first_per(compared, lambda r: r["key"])
                                   if r["arm"] in (TREATED, "holdout")])
    pending = len(in_range) - len(done)
    first = start_ms if start_ms is not None else min((r["decision_ts"] for r in in_range), default=None)
    return {
        "from": _iso(first), "to": _iso(end_ms if end_ms is not None else horizon_ms), "horizon": _iso(horizon_ms),
        "confidence": CONFIDENCE, "arms_note": ARMS_NOTE, "decisions": decisions, "pending": pending,
        # per action, a customer counts once for that action; overall, once whatever the action
        "actions": [_group(name, rows, lambda r: (r["key"], r.get("action_id"))) for name, rows in sorted(actions.items())],
        # overall, only the global hold-out is untreated: a customer in one action's control group may
        # be treated by another action within the window
        "overall": _group(OVERALL, compared, lambda r: r["key"], comparison_arms=("holdout",)),
        "bucket": label, "bucket_ms": size, "series": series,
        "notes": _notes(pending),
    }


def _notes(pending: int) -> str:
    return (f"Each customer counts once per action (and once overall), by their first decision in the period and "
            f"what followed it within its window; agent-hours are those of every treated decision. "
            f"'Converted anyway' is estimated by the comparison arm's conversion rate: the share of offers that went "
            f"to people who would have converted without them. Converted is the engine's per-goal flag (purchase: "
            f"bought; retain: did not cancel; resolve: did not call). Net value = revenue − lost value. Intervals "
            f"are {CONFIDENCE:.0%}: Newcombe's hybrid score interval for differences of rates, Welch's normal "
            f"approximation for differences of means; incremental figures are the difference × n treated. "
            f"{pending} decision(s) whose attribution window is not over yet are left out.")


def format_ci(value: float | None, ci: list[float] | None, k: float = 1.0, digits: int = 1) -> str:
    """`+12.3 [4.1, 20.5]`: the value and its interval, each times k; '-' for no value, '[n/a]' for no interval."""
    if value is None:
        return "-"
    text = f"{value * k:+.{digits}f}"
    return text + (f" [{ci[0] * k:.{digits}f}, {ci[1] * k:.{digits}f}]" if ci is not None else " [n/a]")


def format_share(value: float | None) -> str:
    """A rate as a percentage, '-' when there is none."""
    return "-" if value is None else f"{value:.1%}"


def format_text(report: dict) -> str:
    """The report as a fixed-width table: one line per action and one for all of them."""
    d = report["decisions"]
    lines = [f"lift {report['from']} .. {report['to']} (attributed up to {report['horizon']}): "
             + ", ".join(f"{arm} {n}" for arm, n in d.items()) + f"; {report['pending']} pending",
             report["arms_note"], ""]
    head = (f"{'action':22} {'n_tr':>6} {'n_cmp':>6} {'conv_tr':>7} {'conv_cmp':>8}  {'diff pp [95% CI]':24} "
            f"{'incr conv [95% CI]':26} {'incr net value [95% CI]':32} {'agent h':>8} {'conv/agent h':>12}  "
            f"{'calls deflected [95% CI]':24}")
    lines += [head, "-" * len(head)]
    for g in report["actions"] + [report["overall"]]:
        per_hour = g["incremental_conversions_per_agent_hour"]
        lines.append(
            f"{g['action_id'][:22]:22} {g['n_treated']:6} {g['n_control']:6} {format_share(g['conversion_treated']):>7} "
            f"{format_share(g['conversion_control']):>8}  {format_ci(g['conversion_diff'], g['conversion_diff_ci'], 100):24} "
            f"{format_ci(g['incremental_conversions'], g['incremental_conversions_ci']):26} "
            f"{format_ci(g['incremental_net_value'], g['incremental_net_value_ci'], digits=2):32} "
            f"{g['agent_hours']:8.2f} {'-' if per_hour is None else f'{per_hour:.2f}':>12}  "
            f"{format_ci(g['calls_deflected'], g['calls_deflected_ci'])}")
    o = report["overall"]
    lines += ["", f"converted anyway (comparison conversion rate): {format_share(o['converted_anyway_share'])}; "
                  f"accepted among treated: {format_share(o['accepted_share'])}", "notes: " + report["notes"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- reading (Kafka)


class Attributions(NamedTuple):
    records: list[dict]
    skipped: int  # records that could not be decoded
    horizon_ms: int | None  # the latest decision_ts on the whole topic


def read_attributions(settings, start_ms: int, end_ms: int, timeout_s: float = 120.0) -> Attributions:
    """Every Attribution with start_ms <= decision_ts < end_ms on all partitions, from the beginning to the end as of now.

    The horizon is taken over the whole topic, decisions after end_ms included: they show how far
    attribution has got, which decides whether the last windows before end_ms are over.
    Tombstones are skipped; undecodable records are skipped and counted.
    """
    from streams import clients

    topic = settings.topic("engage.attributions")
    codec = clients.codec(settings)
    records: list[dict] = []
    skipped, horizon = 0, None
    # read_all: a throwaway group, assignment to the watermarks taken first, the pattern of every whole-topic reader
    for _partition, _offset, _ts, _key, value in clients.read_all(settings, topic, timeout_s=timeout_s,
                                                                   group_prefix="engage-report"):
        if value is None:
            continue
        try:
            rec = codec.decode(topic, "Attribution", value)
        except ValueError:  # DecodeError, and a bad fingerprint or schema id
            skipped += 1
            continue
        # decision times, not updated_ts: an outcome may be dated ahead (an agent's handling time), and a
        # horizon pushed ahead of the decisions would close windows whose cancellations have not come yet
        horizon = rec["decision_ts"] if horizon is None else max(horizon, rec["decision_ts"])
        if start_ms <= rec["decision_ts"] < end_ms:
            records.append(rec)
    return Attributions(records, skipped, horizon)
