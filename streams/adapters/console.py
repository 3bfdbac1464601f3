"""Decides how the console adapter shows an offer to a contact-centre agent, and reports it as shown.

It drops delivery ids it has already shown (a delivery processed twice after a worker crash
carries the same id) and offers whose moment has passed (reported as expired).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict

from streams import clients, topics
from streams.codec import DecodeError
from streams.settings import Settings

SEEN_IDS = 100_000


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


class SeenIds:
    def __init__(self, limit: int = SEEN_IDS):
        self.limit, self._ids = limit, OrderedDict()

    def add(self, delivery_id: str) -> bool:
        """True the first time an id is seen."""
        if delivery_id in self._ids:
            return False
        self._ids[delivery_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


def outcome_for(d: dict, kind: str, now_ms: int) -> dict:
    return {"outcome_id": f"{d['delivery_id']}-{kind}", "key": d["key"], "ts": now_ms, "type": kind,
            "delivery_id": d["delivery_id"], "decision_id": d["decision_id"], "action_id": d["action_id"],
            "channel": d["channel"], "visitor_id": d["visitor_id"], "customer_id": d["customer_id"],
            "value": None, "source": "console"}


def run_console(settings: Settings, stop: threading.Event | None = None, out=None, from_beginning: bool = False,
                max_deliveries: int | None = None) -> int:
    out = out or sys.stdout
    stop = stop or threading.Event()
    codec = clients.codec(settings)
    consumer = clients.consumer(settings, f"{settings.app_id}-console-adapter",
                                offset_reset="earliest" if from_beginning else "latest", log_level=None)
    producer = clients.producer(settings)
    t_delivery, t_out = settings.topic(topics.DELIVERY.name), settings.topic(topics.OUTCOMES.name)
    consumer.subscribe([t_delivery])
    seen, shown = SeenIds(), 0
    try:
        while not stop.is_set() and (max_deliveries is None or shown < max_deliveries):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                print(f"[console] consumer error: {msg.error()}", file=sys.stderr)
                continue
            try:
                d = codec.decode(t_delivery, "Delivery", msg.value())
            except DecodeError as exc:
                print(f"[console] skipped undecodable delivery at offset {msg.offset()}: {exc}", file=sys.stderr)
                consumer.commit(msg, asynchronous=False)
                continue
            now = int(time.time() * 1000)
            if seen.add(d["delivery_id"]):
                kind = "expired" if d["expires_at"] < now else "shown"
                if kind == "shown":
                    print(format_delivery(d), file=out, flush=True)
                    shown += 1
                producer.produce(t_out, key=d["key"].encode(), value=codec.encode(t_out, "Outcome", outcome_for(d, kind, now)))
                producer.flush(10)
            consumer.commit(msg, asynchronous=False)
    finally:
        consumer.close()
        producer.flush(10)
    return shown
