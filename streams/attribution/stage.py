"""Decides how attribution folds a key's decisions, outcomes and conversions (state per key) into Attribution records.

The three input topics are keyed alike (customer_id, else visitor_id) and partitioned alike, so a
key's state lives on one partition. The state is written after the records are acknowledged: a
crash in between replays the input against the old state and sends the very same revisions again,
which the compacted topic and the report collapse to one.
"""
from __future__ import annotations

from streams import topics
from streams.attribution.attribute import Attributor, new_state
from streams.audit import audit
from streams.runtime.stage import Handler, key_of

STAGE = "attribution"
FORGOTTEN = "forgotten"  # the only field of a forgotten customer's state


def handlers(settings, book) -> list[Handler]:
    """`book`: the action rules running now (read per record: they may be republished while the worker runs)."""
    attributor = Attributor(window_ms=settings.attribution_window_ms, goal_of=lambda aid: book.rules().goal_of(aid))
    fold = {topics.DECISIONS.name: attributor.on_decision, topics.OUTCOMES.name: attributor.on_outcome,
            topics.CONVERSIONS.name: attributor.on_conversion}

    def forget(record, request, tables) -> list:
        key = key_of(record, topics.FORGET)
        if request is None:
            return []  # the compacted request itself deleted
        attributions = tables[topics.KEY_TO_ATTRIBUTIONS]
        had = attributions.get(key) is not None
        # a marker holding nothing but when: later records of theirs change nothing. The attributions
        # already published stay on compacted engage.attributions (README)
        attributions[key] = {FORGOTTEN: request["ts"]}
        return [audit(key, STAGE, f"{'deleted' if had else 'no'} attribution state; kept: the time they were forgotten")]

    def folding(spec):
        def handle(record, value, tables) -> list:
            key = key_of(record, spec)
            if value is None:
                raise ValueError(f"a record on {spec.name} cannot be empty")
            attributions = tables[topics.KEY_TO_ATTRIBUTIONS]
            state = attributions.get(key) or new_state()
            if FORGOTTEN in state:
                return []
            changed = fold[spec.name](state, value)
            attributions[key] = state
            return [(topics.ATTRIBUTIONS, a["decision_id"], a) for a in changed]
        return handle

    return [Handler(STAGE, spec, folding(spec)) for spec in (topics.DECISIONS, topics.OUTCOMES, topics.CONVERSIONS)] \
        + [Handler(STAGE, topics.FORGET, forget)]


TABLES = [topics.KEY_TO_ATTRIBUTIONS]
