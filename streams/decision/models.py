"""Decides which uplift model a worker decides with: the merge of the latest evidence of every learner partition on engage.models.

Every worker follows the compacted, one-partition engage.models topic from its beginning in a
background thread, keeps the latest record of each learner partition, and swaps in the merged
model (one reference swap; the decision agent reads it once per signal). The model is the same
on every worker that has read the same records, whatever worker learned them: evidence adds up.
"""
from __future__ import annotations

import logging
import threading

from streams import clients, topics
from streams.decision.uplift import Model, merge
from streams.settings import Settings

log = logging.getLogger(__name__)


class ModelBook:
    def __init__(self):
        self.model = Model()
        self.records: dict[int, dict] = {}  # learner partition -> its latest ModelEvidence

    def offer(self, records: list[dict]) -> bool:
        """Take newer evidence of some partitions; True when the model changed."""
        changed = False
        for rec in records:
            old = self.records.get(rec["partition"])
            if old is None or rec["labels"] > old["labels"]:  # a partition's evidence only grows
                self.records[rec["partition"]] = rec
                changed = True
        if changed:
            model = merge(self.records)
            if model.version != self.model.version:
                self.model = model
                log.info("uplift model %s (%d outcomes learned)", model.version, model.labels)
                return True
        return False


def follow(settings: Settings, book: ModelBook, codec, stop: threading.Event, ready: threading.Event) -> None:
    """Offer every record on engage.models to `book` until `stop` is set; `ready` once caught up with the end."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    name = settings.topic(topics.MODELS.name)
    consumer = clients.consumer(settings, clients.throwaway_group(f"{settings.app_id}-models"), logger=log)
    try:
        consumer.assign([TopicPartition(name, 0, OFFSET_BEGINNING)])
        while not stop.is_set():
            batch = []
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() or msg.value() is None:
                    continue
                try:
                    batch.append(codec.decode(name, topics.MODELS.schema, msg.value()))
                except ValueError as exc:
                    log.error("engage.models offset %d is not ModelEvidence, ignored: %s", msg.offset(), exc)
            if batch:
                book.offer(batch)
            elif not ready.is_set():
                ready.set()  # nothing more within half a second: caught up
    finally:
        consumer.close()


def start_following(settings: Settings, book: ModelBook, codec, catch_up_s: float = 30.0) -> threading.Event:
    """Follow engage.models in a background thread; wait (up to `catch_up_s`) until what is there now is read."""
    stop, ready = threading.Event(), threading.Event()
    threading.Thread(target=follow, args=(settings, book, codec, stop, ready), name="models-follower",
                     daemon=True).start()
    if not ready.wait(catch_up_s):
        log.warning("engage.models not read to its end within %.0f s: deciding with model %s meanwhile", catch_up_s,
                    book.model.version)
    return stop
