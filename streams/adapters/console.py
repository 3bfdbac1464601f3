"""Decides how the console adapter shows an offer to a contact-centre agent at a terminal, and reports it as shown.

It is the adapter kit's smallest adapter (streams/adapters/kit.py): the kit drops delivery ids
already shown, reports offers whose moment has passed as expired, and commits after the outcome.
"""
from __future__ import annotations

import sys
import threading
import time

from streams.adapters.kit import Adapter, run_adapter
from streams.settings import Settings


def format_delivery(d: dict) -> str:
    ctx = d["context"]
    who = d["customer_id"] or f"anonymous visitor {d['visitor_id']}"
    if ctx.get("customer_name"):
        who = f"{ctx['customer_name']} ({d['customer_id']})"
    lines = [
        f"── {d['channel'].upper()} offer {d['delivery_id'][:8]} ─ {d['action_id']} ─ for {who}",
        f"   why:      {d['reason']}",
        f"   saw:      {ctx.get('evidence', '')}",
    ]
    profile = [f"{k} {ctx[k]}" for k in ("segment", "clv") if ctx.get(k)]
    if profile:
        lines.append(f"   customer: {', '.join(profile)}")
    if d.get("skill"):
        lines.append(f"   route to: {d['skill']} agents")
    lines.append(f"   message:  {d['message']}")
    lines.append(f"   expires:  in {max(0, (d['expires_at'] - int(time.time() * 1000)) // 1000)} s")
    return "\n".join(lines)


class Console(Adapter):
    """Every channel's offers, printed for an agent at a terminal; each reported `shown`."""

    name = "console"

    def __init__(self, out=None):
        self.out = out or sys.stdout

    def deliver(self, delivery: dict) -> list[str]:
        print(format_delivery(delivery), file=self.out, flush=True)
        return ["shown"]


def run_console(settings: Settings, stop: threading.Event | None = None, out=None, from_beginning: bool = False,
                max_deliveries: int | None = None) -> int:
    return run_adapter(settings, Console(out), stop=stop, from_beginning=from_beginning, max_deliveries=max_deliveries)
