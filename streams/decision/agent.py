"""Decides how the decision stage runs on Faust: a per-customer contact ledger in RocksDB, a Decision for every signal."""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.codec import DecodeError
from streams.decision.actions import ActionSet
from streams.decision.policy import decide

STAGE = "decision"


def register(engine: Engine, actions: ActionSet):
    app = engine.app
    customer_to_contacts = app.Table("customer_to_contacts", default=None, partitions=engine.settings.partitions,
                                     key_type=str)

    @app.agent(engine.topic[topics.ENRICHED.name], name="decide_actions")
    async def decide_actions(stream):
        async for event in stream.events():
            msg = event.message
            try:
                enriched = engine.decode(topics.ENRICHED, msg.value)
            except DecodeError as exc:
                await engine.dead_letter(STAGE, msg, exc)
                continue
            key = enriched["key"]
            result = decide(enriched, customer_to_contacts.get(key), actions)
            if not result.replayed:
                customer_to_contacts[key] = result.ledger
            await engine.send(topics.DECISIONS, enriched["key"], result.decision)

    return customer_to_contacts
