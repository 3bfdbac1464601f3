"""Decides what delivery makes of a decision: a decision to act becomes a Delivery with a channel header, any other nothing."""
from __future__ import annotations

from streams import topics
from streams.delivery.render import to_delivery
from streams.runtime.stage import Handler

STAGE = "delivery"


def check_decision(decision: dict) -> None:
    """A decision to act must say what and where, or no adapter could deliver it."""
    if decision["outcome"] == "act":
        missing = [f for f in ("action_id", "channel") if not decision.get(f)]
        if missing:
            raise ValueError(f"a decision to act needs {' and '.join(missing)}")


def deliver(record, decision: dict | None, tables) -> list:
    if decision is None:
        raise ValueError("a decision cannot be empty")
    check_decision(decision)
    delivery = to_delivery(decision)
    return [] if delivery is None else [(topics.DELIVERY, delivery["key"], delivery, {"channel": delivery["channel"]})]


def handlers() -> list[Handler]:
    return [Handler(STAGE, topics.DECISIONS, deliver)]
