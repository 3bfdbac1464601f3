"""Decides what a customer's journey holds: their recent steps across channels, offers and outcomes, capped in count and age.

A journey is keyed like the decisions (customer_id, else visitor_id) and holds, newest last:
signals raised and the events that raised them (searches, pages, form errors ... on any channel),
purchases, cancellations and calls, offers made (decisions to act) and what became of them
(shown, accepted, declined ...). At most MAX_STEPS steps younger than MAX_AGE_MS (in event time,
against the newest step) are kept, each text at most TEXT_CHARS characters: a journey stays under
~4 KiB however busy the customer. A step is identified by its `ref` (event, signal, decision or
outcome id), so a record read twice (a replay) adds nothing.

Page views and searches that match no rule are not in the journey: every event would then cost a
state write; the signals carry the events that made them, which is what an agent needs to see.
"""
from __future__ import annotations

import time

from streams import topics

# Events that reach the journey of the customer a device is known as (a login on it) without raising a
# signal: detection sends each as a step onto engage.journey-moves, which only the data stage reads. What
# customer rules may count across devices (rules/customer.yaml) though no detection rule fires on one
# alone; they cost no signal, decision, ledger or attribution write (a signal each halved the
# pipeline's throughput in make bench).
JOURNEY_EVENTS = frozenset({"login_failed"})
MAX_STEPS = 30
MAX_AGE_MS = 7 * 86_400_000
TEXT_CHARS = 120
IN_CONTEXT = 8  # steps written into a decision's context for the agent


def _step(ts: int, channel: str | None, kind: str, text: str, ref: str) -> dict:
    return {"ts": int(ts), "channel": channel or "", "kind": kind, "text": (text or "")[:TEXT_CHARS], "ref": ref}


def _event_text(ev: dict) -> str:
    if ev.get("query"):
        return f"'{ev['query']}'"
    if ev.get("value") is not None and ev.get("type") in ("purchase", "add_to_cart"):
        return f"{ev['value']:.2f}" + (f" at {ev['path']}" if ev.get("path") else "")
    return ev.get("path") or ""


def steps_of_signal(signal: dict) -> list[dict]:
    """The events that raised the signal, then the signal."""
    steps = [_step(e["ts"], e.get("channel"), e["type"], _event_text(e), e["event_id"]) for e in signal["evidence"]]
    why = signal.get("rule_description") or signal["rule_id"]
    steps.append(_step(signal["ts"], (signal["evidence"][-1].get("channel") if signal["evidence"] else None),
                       "signal", f"{signal['signal']}: {why}", signal["signal_id"]))
    return steps


def step_of_conversion(ev: dict) -> dict:
    return _step(ev["ts"], ev.get("channel"), ev["type"], _event_text(ev), ev["event_id"])


def step_of_decision(d: dict) -> dict | None:
    """An offer made; decisions not to act (no action, control, suppressed) are not steps the customer took part in."""
    if d["outcome"] != "act":
        return None
    return _step(d["ts"], d.get("channel"), "offer", f"{d['action_id']} on {d['channel']}", d["decision_id"])


def step_of_outcome(o: dict) -> dict:
    what = f"{o['type']}" + (f" {o['action_id']}" if o.get("action_id") else "") + (
        f" on {o['channel']}" if o.get("channel") else "")
    return _step(o["ts"], o.get("channel"), "outcome", what, o["outcome_id"])


def moved(into: str, from_key: str, steps: list[dict], hops: int = 0) -> tuple:
    """(spec, key, record) of a JourneyMove: `steps` for the journey of `into`, kept until now under `from_key`
    (a device, a duplicate customer); `hops`: how often they were passed on along merges already."""
    return (topics.JOURNEY_MOVES, into, {"key": into, "from_key": from_key, "steps": steps, "hops": hops})


def added(journey: list[dict] | None, steps: list[dict], until_ts: int | None = None) -> list[dict] | None:
    """The journey with `steps` in it, in time order, capped; None when nothing changed.

    Steps dated after `until_ts` (the wall clock plus the lateness events may have) are left out: one
    record dated years ahead would otherwise push every real step out of the age cap.
    """
    journey = list(journey or [])
    refs = {s["ref"] for s in journey}
    new = [s for s in steps if s["ref"] not in refs and (until_ts is None or s["ts"] <= until_ts)]
    if not new:
        return None
    merged = sorted(journey + new, key=lambda s: s["ts"])
    newest = merged[-1]["ts"]
    return [s for s in merged if s["ts"] > newest - MAX_AGE_MS][-MAX_STEPS:]


def lines(journey: list[dict] | None, most: int = IN_CONTEXT) -> str:
    """The last `most` steps as text for an agent, newest last: `2026-12-01 14:02 web search 'cancel my contract'`."""
    out = []
    for s in (journey or [])[-most:]:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(s["ts"] / 1000))
        out.append(" ".join(x for x in (when, s["channel"], s["kind"], s["text"]) if x))
    return "\n".join(out)
