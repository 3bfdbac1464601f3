"""Decides how the decision stage runs on Faust: a per-customer contact ledger in RocksDB, a Decision for every signal."""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.decision.actions import ActionSet
from streams.decision.policy import decide

STAGE = "decision"


def register(engine: Engine, actions: ActionSet):
    app = engine.app
    customer_to_contacts = app.Table(topics.CUSTOMER_TO_CONTACTS, default=None, partitions=engine.settings.partitions,
                                     key_type=str)  # values are JSON (Faust's default for untyped tables)

    @app.agent(engine.topic[topics.ENRICHED.name], name="decide_actions")
    async def decide_actions(stream):
        async for msg, enriched in engine.records(stream, topics.ENRICHED, STAGE):
            async with engine.guard(STAGE, msg):
                key = enriched["key"]
                result = decide(enriched, customer_to_contacts.get(key), actions)
                # The ledger first: it records the decision itself, so a replay after a crash re-sends
                # the very same decision (same time, same gates) instead of deciding again.
                if not result.replayed:
                    customer_to_contacts[key] = result.ledger
                await engine.send(topics.DECISIONS, key, result.decision)

    return decide_actions, customer_to_contacts
