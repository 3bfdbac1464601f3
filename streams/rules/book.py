"""Decides which rule set (detection, actions) runs now: a published version replaces it only if it compiles.

Every worker follows the compacted `engage.rules` topic from its beginning (one partition, so
versions arrive in order). A version that fails validation is refused with its file, line and
reason, and the running version stays.
"""
from __future__ import annotations

import logging
import threading

from streams import clients, topics
from streams.rules import registry
from streams.rules.loader import RuleError
from streams.settings import Settings

log = logging.getLogger(__name__)


class RuleBook:
    """The running version of one rule set (named like its file: detection, actions)."""

    def __init__(self, rules):
        self.current = rules
        self.refused: list[tuple[str, str]] = []  # (version, reason)
        self.applied: list[str] = [rules.version]

    def rules(self):
        return self.current

    def offer(self, record: dict) -> bool:
        """Switch to the published rule set in `record` if it is this one's and valid."""
        name = self.current.name
        if record["name"] != name or record.get("kind", registry.KIND) != name or name not in registry.COMPILERS:
            return False
        if record["version"] == self.current.version:
            return False
        try:
            rules = registry.COMPILERS[name](record["source"], f"engage.rules:{name}@{record['version']}", name=name)
        except RuleError as exc:
            self.refused.append((record["version"], str(exc)))
            log.error("refused %s rules version %s, still running %s: %s", name, record["version"],
                      self.current.version, exc)
            return False
        self.current = rules  # one reference swap: the agents read it once per record
        self.applied.append(rules.version)
        log.warning("%s rules switched to version %s", name, rules.version)
        return True


def follow(settings: Settings, books: list[RuleBook], codec, stop: threading.Event, start: int) -> None:
    """Offer every version on engage.rules from offset `start` on to `books`, until `stop` is set."""
    from confluent_kafka import TopicPartition

    name = settings.topic(topics.RULES.name)
    # librdkafka's own log lines go through logging (and its rate limit) instead of straight to stderr
    consumer = clients.consumer(settings, clients.throwaway_group(f"{settings.app_id}-rules"), logger=log)
    try:
        consumer.assign([TopicPartition(name, 0, start)])
        while not stop.is_set():
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            if msg.value() is None:
                continue
            try:
                record = codec.decode(name, topics.RULES.schema, msg.value())
            except ValueError as exc:
                log.error("engage.rules offset %d is not a RuleSet, ignored: %s", msg.offset(), exc)
                continue
            for book in books:
                book.offer(record)
    finally:
        consumer.close()


def start_following(settings: Settings, books: list[RuleBook], codec) -> threading.Event:
    """Catch up with every published version now, then follow new ones in a background thread."""
    from confluent_kafka import OFFSET_BEGINNING

    versions = registry.history(settings)
    for published in versions:
        for book in books:
            book.offer(published.record)
    start = versions[-1].offset + 1 if versions else OFFSET_BEGINNING
    stop = threading.Event()
    threading.Thread(target=follow, args=(settings, books, codec, stop, start), name="rules-follower", daemon=True).start()
    return stop
