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
        async for msg, decision in engine.records(stream, topics.DECISIONS, STAGE, check_decision):
            async with engine.guard(STAGE, msg):
                delivery = to_delivery(decision)
                if delivery is not None:
                    await engine.send(topics.DELIVERY, delivery["key"], delivery,
                                      headers={"channel": delivery["channel"]})

    return deliver_decisions
