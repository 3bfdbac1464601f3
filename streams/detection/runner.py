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
A crash before 3 replays the events against the old state and re-sends the same signal ids; after
3, restoring from the changelog gives the new state, and the replayed events are duplicates.
Partitions are taken with the range assignor, so a worker holds the same partitions of events
and ticks; an assigned partition's RocksDB first reads what its changelog has beyond it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from streams import clients, topics
from streams.deadletter import as_reference, dead_letter, log_dead_letter, log_fault
from streams.detection.batch import EVENT, TICK, run_batch
from streams.detection.detector import Detector
from streams.detection.idle import IdlePartitions
from streams.detection.partition import INDEX, VISITORS, Tx
from streams.detection.store import Stores, changelog_key, table_key
from streams.detection.visitor import InvalidEvent
from streams.settings import Settings

log = logging.getLogger(__name__)
STAGE = "detection"
RESTORE_CHUNK = 20_000  # changelog records applied to RocksDB at once while restoring


@dataclass(frozen=True)
class Record:
    """What detection and a dead-letter record read of a Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Stopped(Exception):
    """The runner was asked to stop while a batch was not handed to the broker: nothing of it is committed."""


def check_event(record: Record, ev: dict) -> None:
    # the event's own contract is checked by Detector.on_event, before it changes anything
    if record.key is None or record.key.decode("utf-8", "replace") != ev["visitor_id"]:
        raise InvalidEvent("the record key must be the visitor_id")


def detection_group(settings: Settings) -> str:
    """Detection's consumer group: its own, beside the Faust app's (named by the app id)."""
    return f"{settings.app_id}-detection"


class DetectionRunner:
    """Detection over engage.events and engage.detection-ticks, in consumer group `<app id>-detection`."""

    def __init__(self, settings: Settings, codec, rules, *, consumer=None, producer=None):
        self.settings, self.codec = settings, codec
        self.detector = Detector(rules, lateness_ms=settings.allowed_lateness_ms, ttl_ms=settings.visitor_ttl_ms,
                                 max_ahead_ms=settings.max_event_ahead_ms, max_age_ms=settings.max_event_age_ms)
        self.group = detection_group(settings)
        self.events = settings.topic(topics.EVENTS.name)
        self.ticks = settings.topic(topics.DETECTION_TICKS.name)
        self.changelog = {VISITORS: topics.changelog(settings.app_id, topics.VISITOR_TO_STATE),
                          INDEX: topics.changelog(settings.app_id, topics.PARTITION_TO_TIMERS)}
        self.stores = Stores(Path(settings.data_dir) / "detection")
        self.idle = IdlePartitions(settings.idle_tick_ms / 1000.0)
        self.stop = threading.Event()
        self.assigned: set[int] = set()  # event partitions this worker holds
        self.done: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset, handed to the broker
        self.position: dict[int, int] = {}  # event partition -> next offset to process (committed, or done)
        self._consumer, self._producer = consumer, producer
        self._next_tick = 0.0
        self._last_commit = 0.0

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Consume and detect until `stop` is set; then commit what is done and leave the group."""
        self.consumer = self._consumer or clients.consumer(
            self.settings, self.group, logger=log, **{
                "partition.assignment.strategy": "range",  # the same partitions of events and ticks
                "session.timeout.ms": self.settings.session_timeout_ms,
                "heartbeat.interval.ms": min(3000, self.settings.session_timeout_ms // 3)})
        self.producer = self._producer or clients.producer(self.settings, logger=log, **{"linger.ms": 1})
        self.done.clear()
        self.consumer.subscribe([self.events, self.ticks], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        try:
            while not self.stop.is_set():
                records = self._take()
                if records:
                    self.process(records)
                self._tick_idle(time.time())
                self._commit_due(time.monotonic())  # the last batch before a quiet spell
        except Stopped:
            log.info("detection: stopped with a batch not handed to the broker; it is read again next time")
        finally:
            try:
                self.consumer.close()  # revokes: what is done is committed
            finally:
                self.stores.close_all()
                self.producer.flush(10)

    def _take(self) -> list[Record]:
        """What the consumer has waiting, up to ENGAGE_BATCH_MAX; if nothing, wait up to 100 ms for one."""
        most = self.settings.batch_max
        msgs = self.consumer.consume(most, 0)
        if not msgs:
            first = self.consumer.poll(0.1)
            if first is None:
                return []
            msgs = [first] + (self.consumer.consume(most - 1, 0) if most > 1 else [])
        records = []
        for m in msgs:
            if m.error():
                log.warning("detection: consumer error: %s", m.error())
                continue
            records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value()))
        return records

    def process(self, records: list[Record]) -> None:
        """One batch: detect, send outputs, write state, commit (see the module's docstring)."""
        now = time.time()
        for r in records:
            if r.topic == self.events and self.idle.saw_event(r.partition, now):
                log.info("detection: first event of %s[%d] at offset %d", r.topic, r.partition, r.offset)
        stores = self.stores
        batch = run_batch(self.detector, self._new_tx, records, self._read,
                          enter=lambda i: stores.enter(records[i].partition))
        sends = [(self.settings.topic(spec.name), None, key.encode(), self.codec.encode(
            self.settings.topic(spec.name), spec.schema, record)) for spec, key, record in batch.outputs]
        sends += [self._dead_letter(records[i], exc, fault) for i, exc, fault in batch.rejected]
        self._deliver(sends)
        stores.collected = []
        batch.tx.apply(enter=stores.enter)
        writes = stores.collected
        offsets = self._deliver([(self.changelog[table], p, changelog_key(key), value)
                                 for p, table, key, value in writes])
        by_partition: dict[int, list] = {}
        reached: dict[int, dict[str, int]] = {}
        for (p, table, key, value), offset in zip(writes, offsets):
            by_partition.setdefault(p, []).append((table, key, value))
            reached.setdefault(p, {})[table] = max(offset + 1, reached.get(p, {}).get(table, 0))
        for p, part_writes in by_partition.items():
            stores.open(p).write(part_writes, reached[p])
        for r in records:
            self.done[(r.topic, r.partition)] = r.offset + 1
            if r.topic == self.events:
                self.position[r.partition] = r.offset + 1
        self._commit_due(time.monotonic())

    def _commit_due(self, now: float) -> None:
        """Commit what is done once per commit interval (`Settings.commit_interval_s`), as Faust does.

        Every offset in `done` has its outputs and state acked already, so a later commit only means
        more to read again after a crash, never a loss. A commit per batch was an OffsetCommit (and a
        write to __consumer_offsets) per batch, some hundreds a second at 1,000 events/s offered.
        """
        if now - self._last_commit >= self.settings.commit_interval_s:
            self._last_commit = now
            self._commit(asynchronous=True)

    def _new_tx(self) -> Tx:
        return Tx(self.stores.view(VISITORS), self.stores.view(INDEX))

    def _read(self, record: Record) -> tuple[str, dict]:
        if record.topic == self.ticks:
            return TICK, self.codec.decode(self.ticks, topics.DETECTION_TICKS.schema, record.value)
        ev = self.codec.decode(self.events, topics.EVENTS.schema, record.value)
        check_event(record, ev)
        return EVENT, ev

    def _dead_letter(self, record: Record, exc: Exception, fault: bool) -> tuple:
        reason = log_fault(STAGE, record, exc) if fault else exc
        dead = dead_letter(STAGE, record.topic, record.partition, record.offset, record.key, record.value, reason)
        if not fault:
            log_dead_letter(dead)
        topic = self.settings.topic(topics.DEADLETTER.name)
        return topic, None, dead["key"], self.codec.encode(topic, topics.DEADLETTER.schema, dead), dead

    # -- handing records to the broker -------------------------------------------------------------
    def _deliver(self, items: list[tuple]) -> list[int]:
        """Produce (topic, partition or None, key, value[, dead-letter record]) and wait for every ack.

        A send the broker refuses is sent again, with a growing pause, until it is taken: the batch
        is committed only after this returns. A dead letter refused (too large for the topic) is
        sent again as a reference. Returns each record's offset.
        """
        offsets: list[int | None] = [None] * len(items)
        errors: dict[int, object] = {}
        pending = list(range(len(items)))
        pause = 0.1
        while pending:
            errors.clear()
            for i in pending:
                topic, partition, key, value = items[i][:4]
                kwargs = {} if partition is None else {"partition": partition}

                def acked(err, msg, i=i):
                    if err is None:
                        offsets[i] = msg.offset()
                    else:
                        errors[i] = err

                while True:
                    try:
                        self.producer.produce(topic, value=value, key=key, on_delivery=acked, **kwargs)
                        break
                    except BufferError:  # the client's queue is full: let it drain
                        self.producer.poll(0.05)
            while self.producer.flush(1.0) > 0:
                if self.stop.is_set():
                    raise Stopped()
            pending = [i for i in pending if offsets[i] is None]
            if pending:
                log.error("detection: %d of %d sends failed, sending them again: %s", len(pending), len(items),
                          next(iter(errors.values()), "no ack"))
                for i in pending:
                    if len(items[i]) > 4 and not items[i][4]["truncated"]:
                        ref = as_reference(items[i][4])
                        items[i] = (*items[i][:3], self.codec.encode(items[i][0], topics.DEADLETTER.schema, ref), ref)
                if self.stop.wait(pause):
                    raise Stopped()
                pause = min(pause * 2, 5.0)
        return offsets  # type: ignore[return-value]

    def _commit(self, asynchronous: bool, partitions: set[tuple[str, int]] | None = None) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        done = [TopicPartition(t, p, o) for (t, p), o in self.done.items() if partitions is None or (t, p) in partitions]
        if not done:
            return
        try:
            self.consumer.commit(offsets=done, asynchronous=asynchronous)
        except KafkaException as exc:
            # not committed (e.g. the group is rebalancing): the events are read again, to the same ids
            log.warning("detection: commit failed: %s", exc)

    # -- partitions coming and going ---------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        mine = sorted(tp.partition for tp in partitions if tp.topic == self.events)
        started = time.monotonic()
        restored = self.restore(mine)
        self.position = {}
        if partitions:
            committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=30)}
            if self._resume_where_faust_stopped(partitions, committed):
                consumer.assign(partitions)  # with the offsets set (the client's own assign would drop them)
            # where each partition resumes: the idle check compares it with the high watermark
            self.position = {p: o for (t, p), o in committed.items() if t == self.events and o >= 0}
        self.assigned = set(mine)
        self.idle.assigned(mine, time.time())
        log.info("detection: assigned partitions %s; %d changelog records restored in %.1f s", mine, restored,
                 time.monotonic() - started)

    def _resume_where_faust_stopped(self, partitions, committed: dict) -> bool:
        """Partitions this group never committed resume where the Faust app's group did, if it did.

        Releases before this one ran detection as a Faust agent, in the app's own group: a worker
        upgraded in place goes on from there instead of reading every stored event again (events
        older than ENGAGE_MAX_EVENT_AGE would all be dead-lettered). The offsets are set on the
        assigned partitions; True if any was.
        """
        from confluent_kafka import TopicPartition

        new = [tp for tp in partitions if committed.get((tp.topic, tp.partition), -1) < 0]
        if not new:
            return False
        faust_group = clients.consumer(self.settings, self.settings.app_id, log_level=None)  # never joins it
        try:
            earlier = faust_group.committed([TopicPartition(tp.topic, tp.partition) for tp in new], timeout=30)
        finally:
            faust_group.close()
        by_tp = {(tp.topic, tp.partition): tp.offset for tp in earlier if tp.offset >= 0}
        for tp in new:
            offset = by_tp.get((tp.topic, tp.partition))
            if offset is not None:
                tp.offset = offset
                committed[(tp.topic, tp.partition)] = offset
        if by_tp:
            log.warning("detection: %d partitions resume where the app's group (detection of an earlier release) "
                        "committed", len(by_tp))
        return bool(by_tp)

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._commit(asynchronous=False, partitions=gone)
        self._forget(gone)

    def _on_lost(self, consumer, partitions) -> None:
        # another worker may own these already: nothing is committed, the state is read afresh
        self._forget({(tp.topic, tp.partition) for tp in partitions})

    def _forget(self, gone: set[tuple[str, int]]) -> None:
        # another worker may own these partitions next and change their state and timers
        events = {p for t, p in gone if t == self.events}
        self.detector.forget_partitions()
        self.idle.revoked(events)
        for p in events:
            self.stores.close(p)
            self.position.pop(p, None)
        self.assigned -= events
        for key in gone:
            self.done.pop(key, None)

    def restore(self, partitions: list[int]) -> int:
        """Bring each partition's RocksDB up to its changelogs' end; returns the records applied."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        if not partitions:
            return 0
        reader = clients.consumer(self.settings, clients.throwaway_group(f"{self.group}-restore"), logger=log,
                                  **{"fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 10_485_760})
        try:
            wanted: dict[tuple[str, int], int] = {}  # (changelog, partition) -> its end offset
            starts = []
            for p in partitions:
                db = self.stores.open(p)
                marks = {table: clients.watermarks(reader, TopicPartition(topic, p), time.monotonic() + 30)
                         for table, topic in self.changelog.items()}
                if any(db.offset(table) > high for table, (_, high) in marks.items()):
                    # a changelog is younger than this copy (the topic was made again): both tables start over
                    log.warning("detection: local state of partition %d is ahead of its changelog; read again", p)
                    self.stores.wipe(p)
                    db = self.stores.open(p)
                for table, (low, high) in marks.items():
                    start = db.offset(table)
                    if start < high:
                        topic = self.changelog[table]
                        wanted[(topic, p)] = high
                        starts.append(TopicPartition(topic, p, start if start > low else OFFSET_BEGINNING))
            table_of = {topic: table for table, topic in self.changelog.items()}
            applied = 0
            if wanted:
                reader.assign(starts)
                pending: dict[int, list] = {}
                reached: dict[int, dict[str, int]] = {}
                while wanted:
                    if self.stop.is_set():
                        raise Stopped()
                    for m in reader.consume(10_000, 1.0):
                        if m.error():
                            continue
                        topic, p = m.topic(), m.partition()
                        pending.setdefault(p, []).append((table_of[topic], table_key(m.key()), m.value()))
                        reached.setdefault(p, {})[table_of[topic]] = m.offset() + 1
                        applied += 1
                        if m.offset() + 1 >= wanted.get((topic, p), 0):
                            wanted.pop((topic, p), None)
                    # the end may be a record compaction removed: the reader's position says it was passed
                    if wanted:
                        for tp in reader.position([TopicPartition(t, p) for t, p in wanted]):
                            if tp.offset >= 0 and tp.offset >= wanted[(tp.topic, tp.partition)]:
                                wanted.pop((tp.topic, tp.partition), None)
                    if sum(map(len, pending.values())) >= RESTORE_CHUNK or not wanted:
                        for p, writes in pending.items():
                            self.stores.open(p).write(writes, reached[p])
                        pending.clear()
            return applied
        finally:
            reader.close()

    # -- idle partitions' clocks --------------------------------------------------------------------
    def _tick_idle(self, now: float) -> None:
        """Move the clock of partitions that have nothing to read, so their deadlines still fire."""
        if now < self._next_tick:
            return
        self._next_tick = now + self.idle.idle_after_s
        for p in sorted(self.assigned):
            idle_ms = self.idle.idle_ms(p, now)
            if idle_ms is None or not self._caught_up(p):
                continue
            # Nothing to read and nothing came for a while: the partition's clock moves on from its
            # latest event time at the wall clock's pace. (Not to the wall clock itself: a producer
            # replaying history that pauses would otherwise fire its pending deadlines early.)
            tick = {"partition": p, "wall_ts": int(now * 1000), "idle_ms": idle_ms,
                    "watermark_ts": self.detector.max_ts.get(p, 0) + idle_ms}
            self.producer.produce(self.ticks, value=self.codec.encode(self.ticks, topics.DETECTION_TICKS.schema, tick),
                                  partition=p)
        self.producer.poll(0)

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
