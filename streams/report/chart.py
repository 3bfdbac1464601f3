"""Decides how a lift report looks to a manager: one self-contained HTML page, inline SVG, no scripts.

Conversion by arm per action with 95% Wilson error bars, the cumulative incremental net value over
time, the headline numbers and the notes. Every text that comes from data is escaped.
"""
from __future__ import annotations

from html import escape
from pathlib import Path

from streams.report.lift import format_ci, format_share

W, LEFT, RIGHT, TOP = 760, 60, 20, 30
TREATED_COLOUR, COMPARISON_COLOUR = "#2b6cb0", "#a0aec0"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _bars(report: dict) -> str:
    groups = report["actions"] + [report["overall"]]
    h, bottom = 314, 250
    tops = [ci[1] for g in groups for ci in (g["conversion_treated_ci"], g["conversion_control_ci"]) if ci]
    ymax = max(0.1, min(1.0, -(-max(tops, default=0.1) * 10 // 1) / 10))  # next tenth up, so the bars fill the panel
    y = lambda v: bottom - (bottom - TOP) * v / ymax  # noqa: E731
    slot = (W - LEFT - RIGHT) / max(1, len(groups))
    bar = min(40.0, slot / 3)
    out = [f'<svg width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="conversion by arm">']
    for tick in (0, ymax / 2, ymax):
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e2e8f0"/>'
                   f'<text x="{LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11">{tick:.0%}</text>')
    for i, g in enumerate(groups):
        x0 = LEFT + i * slot + slot / 2 - bar
        for j, (rate, ci, colour) in enumerate(((g["conversion_treated"], g["conversion_treated_ci"], TREATED_COLOUR),
                                                (g["conversion_control"], g["conversion_control_ci"], COMPARISON_COLOUR))):
            x = x0 + j * bar
            if rate is None:
                out.append(f'<text x="{x + bar / 2:.1f}" y="{bottom - 4}" text-anchor="middle" font-size="10">n/a</text>')
                continue
            out.append(f'<rect x="{x:.1f}" y="{y(rate):.1f}" width="{bar - 2:.1f}" height="{bottom - y(rate):.1f}" '
                       f'fill="{colour}"><title>{rate:.1%}</title></rect>')
            if ci:
                cx = x + (bar - 2) / 2
                out.append(f'<path d="M{cx:.1f},{y(ci[0]):.1f}V{y(ci[1]):.1f}M{cx - 4:.1f},{y(ci[0]):.1f}h8'
                           f'M{cx - 4:.1f},{y(ci[1]):.1f}h8" stroke="#1a202c" fill="none"/>')
        # labels take turns on two lines, so long action ids next to each other do not overlap
        fits = max(6, int(slot * 2 / 6.5))
        label = g["action_id"] if len(g["action_id"]) <= fits else g["action_id"][:fits - 1] + "…"
        dy = 14 * (i % 2)
        out.append(f'<text x="{LEFT + i * slot + slot / 2:.1f}" y="{bottom + 16 + dy}" text-anchor="middle" font-size="11">'
                   f'{_e(label)}</text><text x="{LEFT + i * slot + slot / 2:.1f}" y="{bottom + 30 + dy}" '
                   f'text-anchor="middle" font-size="10" fill="#4a5568">n {g["n_treated"]} / {g["n_control"]}</text>')
    out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{bottom}" y2="{bottom}" stroke="#4a5568"/>'
               f'<rect x="{LEFT}" y="6" width="12" height="12" fill="{TREATED_COLOUR}"/>'
               f'<text x="{LEFT + 16}" y="16" font-size="11">treated</text>'
               f'<rect x="{LEFT + 80}" y="6" width="12" height="12" fill="{COMPARISON_COLOUR}"/>'
               f'<text x="{LEFT + 96}" y="16" font-size="11">comparison (control + holdout)</text></svg>')
    return "".join(out)


def _line(report: dict) -> str:
    points = [(i, p["cumulative"]) for i, p in enumerate(report["series"]) if p["cumulative"] is not None]
    h, bottom = 260, 220
    if not points:
        return f'<svg width="{W}" height="60"><text x="{LEFT}" y="30" font-size="13">no comparison data yet</text></svg>'
    lo, hi = min(0.0, *(v for _, v in points)), max(0.0, *(v for _, v in points))
    hi = hi if hi > lo else lo + 1.0
    n = max(1, len(report["series"]) - 1)
    x = lambda i: LEFT + (W - LEFT - RIGHT) * i / n  # noqa: E731
    y = lambda v: bottom - (bottom - TOP) * (v - lo) / (hi - lo)  # noqa: E731
    path = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in points)
    dots = "".join(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.5" fill="{TREATED_COLOUR}"><title>'
                   f'{_e(report["series"][i]["start"])}: {v:+,.2f}</title></circle>' for i, v in points)
    first, last = report["series"][0]["start"], report["series"][-1]["start"]
    return (f'<svg width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="cumulative incremental net value">'
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#4a5568"/>'
            f'<text x="{LEFT - 6}" y="{y(hi) + 4:.1f}" text-anchor="end" font-size="11">{hi:,.0f}</text>'
            f'<text x="{LEFT - 6}" y="{y(lo) + 4:.1f}" text-anchor="end" font-size="11">{lo:,.0f}</text>'
            f'<polyline points="{path}" fill="none" stroke="{TREATED_COLOUR}" stroke-width="2"/>{dots}'
            f'<text x="{LEFT}" y="{bottom + 18}" font-size="11">{_e(first)}</text>'
            f'<text x="{W - RIGHT}" y="{bottom + 18}" text-anchor="end" font-size="11">{_e(last)}</text>'
            f'<text x="{LEFT}" y="{bottom + 34}" font-size="10" fill="#4a5568">one point per {_e(report["bucket"])}</text></svg>')


def _table(report: dict) -> str:
    o = report["overall"]
    per_hour = o["incremental_conversions_per_agent_hour"]
    rows = [("decisions compared (treated / comparison)", f'{o["n_treated"]} / {o["n_control"]}'),
            ("decisions pending (window not over)", report["pending"]),
            ("conversion treated / comparison", f'{format_share(o["conversion_treated"])} / {format_share(o["conversion_control"])}'),
            ("difference, percentage points [95% CI]", format_ci(o["conversion_diff"], o["conversion_diff_ci"], 100)),
            ("incremental conversions [95% CI]", format_ci(o["incremental_conversions"], o["incremental_conversions_ci"])),
            ("incremental net value [95% CI]", format_ci(o["incremental_net_value"], o["incremental_net_value_ci"], digits=2)),
            ("agent hours", f'{o["agent_hours"]:.2f}'),
            ("incremental conversions per agent hour", "-" if per_hour is None else f"{per_hour:.2f}"),
            ("calls deflected [95% CI]", format_ci(o["calls_deflected"], o["calls_deflected_ci"])),
            ("converted anyway (comparison conversion rate)", format_share(o["converted_anyway_share"])),
            ("accepted among treated", format_share(o["accepted_share"]))]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def write_html(report: dict, path: Path) -> Path:
    """Write the report's page to `path` (folders made as needed) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Engage lift report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:800px;margin:2em auto;color:#1a202c}}
table{{border-collapse:collapse}}th,td{{padding:3px 10px;border-bottom:1px solid #e2e8f0;text-align:left}}
td{{font-variant-numeric:tabular-nums}}p.small{{font-size:0.85em;color:#4a5568}}</style></head><body>
<h1>What the engine's decisions earned</h1>
<p>{_e(report["from"])} to {_e(report["to"])} (attributed up to {_e(report["horizon"])})</p>
<p class="small">{_e(report["arms_note"])}</p>
<h2>Conversion by arm, with 95% intervals</h2>{_bars(report)}
<h2>Cumulative incremental net value</h2>{_line(report)}
<h2>Headline numbers (all actions)</h2>{_table(report)}
<p class="small">{_e(report["notes"])}</p>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
