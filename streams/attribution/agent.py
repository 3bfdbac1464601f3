"""Decides how attribution runs on Faust: decisions, outcomes and conversions of one key folded in RocksDB, records out.

The three input topics are keyed alike (customer_id, else visitor_id) and partitioned alike, so one
agent reads them together and a key's state lives on one partition. The state is written after the
records are acknowledged: a crash in between replays the input against the old state and sends
the very same revisions again, which the compacted topic and the report collapse to one.
"""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.audit import audit
from streams.attribution.attribute import Attributor, new_state
from streams.decision.actions import ActionSet
from streams.rules.book import RuleBook

STAGE = "attribution"
FORGOTTEN = "forgotten"  # the only field of a forgotten customer's state


def register(engine: Engine, actions: ActionSet | RuleBook):
    app, settings = engine.app, engine.settings
    key_to_attributions = app.Table(topics.KEY_TO_ATTRIBUTIONS, default=None, partitions=settings.partitions,
                                    key_type=str)  # values are JSON (Faust's default for untyped tables)
    book = actions if isinstance(actions, RuleBook) else RuleBook(actions)
    # the goal of the action rules running now (they may be republished while the worker runs)
    attributor = Attributor(window_ms=settings.attribution_window_ms, goal_of=lambda aid: book.rules().goal_of(aid))
    channel, by_topic = engine.channel_of(topics.DECISIONS, topics.OUTCOMES, topics.CONVERSIONS, topics.FORGET)
    fold = {topics.DECISIONS.name: attributor.on_decision, topics.OUTCOMES.name: attributor.on_outcome,
            topics.CONVERSIONS.name: attributor.on_conversion}

    @app.agent(channel, name="attribute_outcomes")
    async def attribute_outcomes(stream):
        async for event in stream.events():
            msg = event.message
            async with engine.guard(STAGE, msg):
                spec, record, key = engine.keyed_record(by_topic, msg, "customer_id, else visitor_id")
                if spec is topics.FORGET:
                    had = key_to_attributions.get(key) is not None
                    # a marker holding nothing but when: later records of theirs change nothing. The
                    # attributions already published stay on compacted engage.attributions (README)
                    key_to_attributions[key] = {FORGOTTEN: record["ts"]}
                    await engine.send(*audit(key, STAGE, f"{'deleted' if had else 'no'} attribution state; "
                                                         "kept: the time they were forgotten"))
                    continue
                state = key_to_attributions.get(key) or new_state()
                if FORGOTTEN in state:
                    continue
                changed = fold[spec.name](state, record)
                for attribution in changed:
                    await engine.send(topics.ATTRIBUTIONS, attribution["decision_id"], attribution)
                key_to_attributions[key] = state

    return attribute_outcomes, key_to_attributions
