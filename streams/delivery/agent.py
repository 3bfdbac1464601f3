"""Decides how delivery runs on Faust: every decision to act becomes a Delivery with a channel header."""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.delivery.render import to_delivery

STAGE = "delivery"


def check_decision(msg, decision: dict) -> None:
    """A decision to act must say what and where, or no adapter could deliver it."""
    if decision["outcome"] == "act":
        missing = [f for f in ("action_id", "channel") if not decision.get(f)]
        if missing:
            raise ValueError(f"a decision to act needs {' and '.join(missing)}")


def register(engine: Engine):
    app = engine.app

    @app.agent(engine.topic[topics.DECISIONS.name], name="deliver_decisions")
    async def deliver_decisions(stream):
        def deliver(msg) -> list:
            decision = engine.decode(topics.DECISIONS, msg.value)
            check_decision(msg, decision)
            delivery = to_delivery(decision)
            return [] if delivery is None else [(topics.DELIVERY, delivery["key"], delivery,
                                                 {"channel": delivery["channel"]})]

        await engine.handle_batches(stream, STAGE, deliver)

    return deliver_decisions
