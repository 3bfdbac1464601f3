"""Decides how detection runs on Kafka: its own consumer group over events and ticks, state per partition, commits last.

Detection reads every event; the later stages read only the signals (about 1 in 15 events). So it
runs on confluent-kafka directly, not on Faust's per-message machinery. Measured by `make bench`
(50,000 events of 5,000 visitors on 8 partitions, 2026-11-30): the Faust agent, in batches, took
396 µs of CPU per event and drained 2,523 events/s; a minimal batched Faust agent doing far less
work drained 4,210/s. The detection itself (decoding, rules, state encoding) costs ~35 µs per event.
On this runner the same bench (2026-12-01) drained 6,890 events/s (median of three; 13,459/s on the
larger restore backlog), beside the batched Faust anchor's 3,711/s in the same run.

Per batch (what the consumer has waiting, up to ENGAGE_BATCH_MAX), in this order:
  1. run_batch: signals, conversions and dead letters out, each key's state written once (a Tx);
  2. the outputs are produced and every ack awaited (failed sends are sent again);
  3. the state goes to the changelog partition of its own events, acks awaited;
  4. then into the partition's RocksDB, with the changelog offsets it reaches;
  5. the offsets are committed last, at most once per commit interval (1 s, as Faust; Kafka Streams
     also commits on an interval), and when partitions are revoked or the runner stops.
Steps 3 and 4 go with the next batch's step 2 when it is waiting already (streams/runtime/runner.py).
A crash before 3 replays the events against the old state and re-sends the same signal ids; after
3, restoring from the changelog gives the new state, and the replayed events are duplicates.
Partitions are taken with the range assignor, so a worker holds the same partitions of events
and ticks; an assigned partition's RocksDB first reads what its changelog has beyond it.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from streams import topics
from streams.detection.batch import EVENT, TICK, run_batch
from streams.detection.detector import Detector
from streams.detection.idle import IdlePartitions
from streams.detection.partition import INDEX, VISITORS, Tx
from streams.detection.store import Stores
from streams.detection.visitor import InvalidEvent
from streams.runtime.runner import Record, Runner
from streams.settings import Settings

log = logging.getLogger(__name__)
STAGE = "detection"


def check_event(record: Record, ev: dict) -> None:
    # the event's own contract is checked by Detector.on_event, before it changes anything
    if record.key is None or record.key.decode("utf-8", "replace") != ev["visitor_id"]:
        raise InvalidEvent("the record key must be the visitor_id")


def detection_group(settings: Settings) -> str:
    """Detection's consumer group: its own, beside the Faust app's (named by the app id)."""
    return f"{settings.app_id}-detection"


class DetectionRunner(Runner):
    """Detection over engage.events and engage.detection-ticks, in consumer group `<app id>-detection`."""

    def __init__(self, settings: Settings, codec, rules, *, consumer=None, producer=None):
        self.detector = Detector(rules, lateness_ms=settings.allowed_lateness_ms, ttl_ms=settings.visitor_ttl_ms,
                                 max_ahead_ms=settings.max_event_ahead_ms, max_age_ms=settings.max_event_age_ms)
        self.events = settings.topic(topics.EVENTS.name)
        self.ticks = settings.topic(topics.DETECTION_TICKS.name)
        super().__init__(settings, codec, STAGE, detection_group(settings), [self.events, self.ticks], self.events,
                         {VISITORS: topics.changelog(settings.app_id, topics.VISITOR_TO_STATE),
                          INDEX: topics.changelog(settings.app_id, topics.PARTITION_TO_TIMERS)},
                         Stores(Path(settings.data_dir) / "detection"), ran_on_faust=self.events,
                         consumer=consumer, producer=producer)
        self.idle_partitions = IdlePartitions(settings.idle_tick_ms / 1000.0)
        self.position: dict[int, int] = {}  # event partition -> next offset to process (committed, or done)
        self._next_tick = 0.0

    def process(self, records: list[Record]) -> None:
        """One batch: detect, send outputs, write state, commit (see the module's docstring)."""
        now = time.time()
        for r in records:
            if r.topic == self.events and self.idle_partitions.saw_event(r.partition, now):
                log.info("detection: first event of %s[%d] at offset %d", r.topic, r.partition, r.offset)
        stores = self.stores
        batch = run_batch(self.detector, self._new_tx, records, self._read,
                          enter=lambda i: stores.enter(records[i].partition))
        sends = [self.output(spec, key, record) for spec, key, record in batch.outputs]
        sends += [self._dead_letter(records[i], exc, fault) for i, exc, fault in batch.rejected]
        stores.collected = []
        batch.tx.apply(enter=stores.enter)
        writes, stores.collected = stores.collected, []
        self.hand_over(records, sends, writes)
        for r in records:
            if r.topic == self.events:
                self.position[r.partition] = r.offset + 1

    def _new_tx(self) -> Tx:
        return Tx(self.stores.view(VISITORS), self.stores.view(INDEX))

    def _read(self, record: Record) -> tuple[str, dict]:
        if record.topic == self.ticks:
            return TICK, self.codec.decode(self.ticks, topics.DETECTION_TICKS.schema, record.value)
        ev = self.codec.decode(self.events, topics.EVENTS.schema, record.value)
        check_event(record, ev)
        return EVENT, ev

    # -- partitions coming and going ---------------------------------------------------------------
    def _assigned(self, mine: list[int], committed: dict[tuple[str, int], int]) -> None:
        # where each partition resumes: the idle check compares it with the high watermark
        self.position = {p: o for (t, p), o in committed.items() if t == self.events and o >= 0}
        self.idle_partitions.assigned(mine, time.time())

    def _forgotten(self, partitions: set[int]) -> None:
        # another worker may own these partitions next and change their state and timers
        self.detector.forget_partitions()
        self.idle_partitions.revoked(partitions)
        for p in partitions:
            self.position.pop(p, None)

    # -- idle partitions' clocks --------------------------------------------------------------------
    def idle(self, now: float) -> None:
        """Move the clock of partitions that have nothing to read, so their deadlines still fire."""
        if now < self._next_tick:
            return
        self._next_tick = now + self.idle_partitions.idle_after_s
        ticks = []
        for p in sorted(self.assigned):
            idle_ms = self.idle_partitions.idle_ms(p, now)
            if idle_ms is None or not self._caught_up(p):
                continue
            # Nothing to read and nothing came for a while: the partition's clock moves on from its
            # latest event time at the wall clock's pace. (Not to the wall clock itself: a producer
            # replaying history that pauses would otherwise fire its pending deadlines early.)
            tick = {"partition": p, "wall_ts": int(now * 1000), "idle_ms": idle_ms,
                    "watermark_ts": self.detector.max_ts.get(p, 0) + idle_ms}
            ticks.append((self.ticks, p, None, self.codec.encode(self.ticks, topics.DETECTION_TICKS.schema, tick)))
        if ticks:
            self.send_aside(ticks, wait=False)  # a tick lost is made again at the next turn

    def _caught_up(self, p: int) -> bool:
        """Whether this worker has read every event of partition `p` there is.

        From the high watermark the client keeps from its fetches, without a request to the broker: a
        request per partition per tick, made while a backlog was read, took 70% of the loop's time.
        """
        from confluent_kafka import KafkaException, TopicPartition

        tp = TopicPartition(self.events, p)
        try:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            if high is None or high < 0:  # nothing fetched yet for it: ask the broker
                low, high = self.consumer.get_watermark_offsets(tp, timeout=1.0, cached=False)
        except KafkaException:
            return False
        position = self.position.get(p)
        if position is None:
            return high <= max(low, 0)  # nothing read nor committed: caught up only if there is nothing
        return position >= high
