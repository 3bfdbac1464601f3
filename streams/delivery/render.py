"""Decides what a channel adapter receives for a decision to act: message, reason, context, expiry."""
from __future__ import annotations

import hashlib
import re

_FIELD = re.compile(r"\{(\w+)\}")


def delivery_id(decision_id: str) -> str:
    """Deterministic, so a decision processed twice after a crash yields the same delivery id
    and adapters can drop the second one."""
    return hashlib.sha256(f"delivery\x1f{decision_id}".encode()).hexdigest()[:24]


def render_message(template: str, values: dict[str, str]) -> str:
    # Only {simple_names} validated at rule load are substituted; no format-string attribute access.
    return _FIELD.sub(lambda m: values.get(m.group(1), ""), template).replace("  ", " ").replace(" ,", ",")


def to_delivery(decision: dict) -> dict | None:
    """The Delivery for a decision, or None when the decision is not to act."""
    if decision["outcome"] != "act":
        return None
    context = dict(decision["context"])
    template = context.pop("message_template", "")
    values = {"name": context.get("customer_name") or "there", "segment": context.get("segment", ""),
              "signal": decision["signal"], "cart_value": context.get("cart_value", "")}
    context.update(action=decision["action_id"], score=f"{decision['score']:.2f}", decision_id=decision["decision_id"])
    return {
        "delivery_id": delivery_id(decision["decision_id"]),
        "decision_id": decision["decision_id"],
        "key": decision["key"],
        "ts": decision["ts"],
        "expires_at": decision["ts"] + decision["ttl_ms"],
        "signal_ts": decision["signal_ts"],
        "visitor_id": decision["visitor_id"],
        "customer_id": decision["customer_id"],
        "channel": decision["channel"],
        "action_id": decision["action_id"],
        "skill": decision["skill"],
        "message": render_message(template, values),
        "reason": decision["reason"],
        "context": context,
    }
