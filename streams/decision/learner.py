"""Decides what the uplift learner keeps of each attribution: a label per decision until its window closes, then evidence per partition.

It reads engage.attributions (keyed by decision id) and keeps, per partition, the labels not learned
yet and the evidence learned so far; once the partition's clock passes a label's window, the label
is learned and the partition's evidence published to engage.models (compacted; every worker merges
the partitions' evidence into one model, streams/decision/models.py).
"""
from __future__ import annotations

from streams import topics
from streams.decision.learn import due, label_of, learn, new_partition_state, step_to
from streams.decision.uplift import evidence_record
from streams.runtime.stage import Handler

STAGE = "learning"
TABLES = [topics.DECISION_TO_LABEL, topics.PARTITION_TO_EVIDENCE]


def learn_uplift(record, attribution: dict | None, tables) -> list:
    if attribution is None:
        return []  # a compacted attribution deleted: nothing to learn from it
    labels, evidence = tables[topics.DECISION_TO_LABEL], tables[topics.PARTITION_TO_EVIDENCE]
    partition, did = record.partition, attribution["decision_id"]
    label = label_of(attribution, partition)
    if label is not None:
        labels[did] = label  # the latest revision's label wins
    elif did in labels:
        del labels[did]  # e.g. now incomplete
    state = evidence.get(str(partition)) or new_partition_state()
    if not step_to(state, attribution["decision_ts"]):
        return []
    ready = due(state, labels.items(), partition)
    learn(state, ready)
    for done, _ in ready:
        del labels[done]
    evidence[str(partition)] = state
    # The evidence is sent before the state is written (the runner's order): a crash in between replays
    # this record against the old state and sends the very same evidence again (the topic keeps the latest).
    return [(topics.MODELS, str(partition), evidence_record(partition, state["labels"], state["clock"], state["ev"]))] \
        if ready else []


def handlers() -> list[Handler]:
    return [Handler(STAGE, topics.ATTRIBUTIONS, learn_uplift)]
