"""Decides how a stage runs on Kafka without Faust: its own consumer group, state per partition, outputs and state acked before commits.

Per batch (what the consumer has waiting, up to ENGAGE_BATCH_MAX), in this order:
  1. `process` works out the outputs, dead letters and each key's last write (a subclass's job);
  2. the outputs are produced and every ack awaited (failed sends are sent again);
  3. the state goes to the changelog partition of its own records, acks awaited;
  4. then into the partition's RocksDB, with the changelog offsets it reaches;
  5. the offsets are committed last, at most once per commit interval (1 s, as Faust; Kafka Streams
     also commits on an interval), and when partitions are revoked or the runner stops.
Steps 3 and 4 of a batch go with step 2 of the next one, in the same round of acks, when the next
is waiting already; meanwhile the batch's state is read from memory (`Runner.hand_over`).
A crash before 3 replays the records against the old state and re-sends the same ids; after 3,
restoring from the changelog gives the new state, and the replayed records are duplicates.

Under ENGAGE_EXACTLY_ONCE, steps 2, 3 and 5 are one Kafka transaction per batch: the outputs, the
changelog records and the batch's input offsets (send_offsets_to_transaction, fenced by the group's
generation, KIP-447), then the RocksDB write. Every reader here is read_committed (librdkafka's
default), so a batch cut short by a crash is never seen, and the next owner of its partitions
processes it again from the offsets the last committed transaction left: no record twice.
The input topics are co-partitioned and taken with the range assignor, so a worker holds the same
partitions of each; an assigned partition's RocksDB first reads what its changelogs have beyond it.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streams import clients, metrics, topics
from streams.deadletter import as_reference, dead_letter, log_dead_letter, log_fault
from streams.runtime.store import Stores, changelog_key, table_key
from streams.settings import Settings

log = logging.getLogger(__name__)
RESTORE_CHUNK = 20_000  # changelog records applied to RocksDB at once while restoring
OBSERVE_S = 2.0  # how often a runner measures its partitions' lag and progress (metrics, /ready)
STANDBY_CHECK_S = 5.0  # how often a runner asks which partitions it keeps warm for another worker
STANDBY_BATCH = 5_000  # changelog records a standby applies per turn of the loop, at most
# a transaction left open by a worker that died is aborted by the coordinator after this long (read_committed
# readers of its partitions wait until then, unless the worker comes back first); Kafka Streams' value too, or the
# session timeout when shorter (see `transaction_timeout_ms`)
TXN_TIMEOUT_MS = 10_000
TXN_CALL_S = 10.0  # each transactional call waits this long before it is asked again


@dataclass(frozen=True)
class Record:
    """What a stage and a dead-letter record read of a Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple = ()
    ts_ms: int = 0  # when the broker appended it (or its producer made it): where a hop's wall time starts


class Stopped(Exception):
    """The runner was asked to stop while a batch was not handed to the broker: nothing of it is committed."""


class Wedged(Exception):
    """The consumer has not been in its group for long while nothing stopped it: librdkafka stuck (see `_on_stats`)."""


class TransactionFailed(Exception):
    """A batch's transaction was refused for good (another worker holds its partitions now, or the producer was
    fenced): what this process holds in memory may be ahead of what is committed, so it starts again."""


@dataclass(frozen=True)
class _Held:
    """A batch whose outputs are acked and whose state is not yet: `state` as sent to the changelogs, `writes`
    (partition, table, key, bytes) by index, `taken` the offsets done once they are acked."""

    number: int
    state: list[tuple]
    writes: list[tuple[int, str, str, bytes | None]]
    taken: dict[tuple[str, int], int]


def _by_partition(writes: list[tuple[int, str, str, bytes | None]]) -> dict[int, list[tuple[str, str, bytes | None]]]:
    out: dict[int, list] = {}
    for p, table, key, value in writes:
        out.setdefault(p, []).append((table, key, value))
    return out


class Runner:
    """A consumer group over co-partitioned `inputs`; tables in `stores`, each with its changelog topic.

    `primary` is the input whose partitions own the stores (all inputs have the same partitions).
    `ran_on_faust`: an input that only this stage read when it ran in the Faust app's group (in an
    earlier release), and that the app no longer reads: the app's commits on it mark an upgrade.
    `client_id`: the consumer's client.id, which describing the group shows beside each member's
    partitions (the decision runner puts its worker's address there, for the context service).
    Subclasses implement `process(records)`, and may hook `_assigned` and `_forgotten`.
    """

    def __init__(self, settings: Settings, codec, stage: str, group: str, inputs: list[str], primary: str,
                 changelog: dict[str, str], stores: Stores, *, ran_on_faust: str | None = None, client_id: str | None = None,
                 consumer=None, producer=None):
        self.settings, self.codec, self.stage, self.group = settings, codec, stage, group
        self.client_id = client_id  # what the group's description names this member by (librdkafka's default if None)
        self.inputs, self.primary, self.changelog, self.stores = inputs, primary, changelog, stores
        self.ran_on_faust = ran_on_faust
        self.stop = threading.Event()
        self.assigned: set[int] = set()  # partitions this worker holds
        self.done: dict[tuple[str, int], int] = {}  # (topic, partition) -> next offset, handed to the broker
        self._held: _Held | None = None  # the last batch, its outputs acked, its state not yet (see hand_over)
        self._batches = 0  # batches held so far (what PartitionDB.hold numbers them by)
        self._consumer, self._producer = consumer, producer
        self._last_commit = 0.0
        self._positions: dict[tuple[str, int], int] = {}  # (topic, partition) -> position at the last observation
        self._counted = metrics.Batch()  # what the batch in hand counts, added once its outputs are acked
        self._read_to: dict[tuple[str, int], int] = {}  # (topic, partition) -> the offset after the last record taken
        self._pause_for_test: set[int] = set()  # partitions to pause once assigned (Settings.test_pause)
        self.standbys: set[int] = set()  # partitions kept warm here, by following their changelogs
        self._standbys_wanted: frozenset[int] = frozenset()  # as the watcher last worked it out
        self._standby_reader = None
        self._out_of_group_since: float | None = None  # when the consumer's group state last left "up"
        # how long the consumer may stay out of its group before the stage starts again with a new one
        self.wedged_after_s = max(30.0, 3 * settings.session_timeout_ms / 1000)

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        """Consume and process until `stop` is set; then commit what is done and leave the group."""
        self.consumer = self._consumer or clients.consumer(
            self.settings, self.group, logger=log, **{
                "partition.assignment.strategy": "range",  # the same partitions of every input
                "session.timeout.ms": self.settings.session_timeout_ms,
                "heartbeat.interval.ms": min(3000, self.settings.session_timeout_ms // 3),
                **({"client.id": self.client_id} if self.client_id else {}),
                "statistics.interval.ms": 5000, "stats_cb": self._on_stats})
        transactional = {"transactional.id": self.transactional_id(),
                         "transaction.timeout.ms": transaction_timeout_ms(self.settings)} if self.settings.exactly_once else {}
        self.producer = self._producer or clients.producer(self.settings, logger=log, **{"linger.ms": 1}, **transactional)
        self.done.clear()
        self._held = None
        self.consumer.subscribe(self.inputs, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        threading.Thread(target=self._watch_progress, name=f"{self.stage}-progress", daemon=True).start()
        if self.settings.standby_replicas and self.changelog:
            threading.Thread(target=self._watch_standbys, name=f"{self.stage}-standbys", daemon=True).start()
        next_positions = 0.0
        try:
            if self.settings.exactly_once:
                # fences an earlier producer of this id (this worker before a crash) and aborts what it left open;
                # before the first poll, so before the consumer joins its group
                retrying(lambda: self.producer.init_transactions(TXN_CALL_S), self.stop, self.stage, "init_transactions")
            while not self.stop.is_set():
                records = self._take()
                if records:
                    self.process(records)
                else:
                    self.release_held()  # nothing more waiting: the last batch's state goes alone
                self.idle(time.time())
                now = time.monotonic()
                if now >= next_positions:
                    next_positions = now + OBSERVE_S
                    self._note_positions()
                self._commit_due(now)  # the last batch before a quiet spell
                self._pause_for_tests()
                self._keep_standbys()
        except Stopped:
            log.info("%s: stopped with a batch not handed to the broker; it is read again next time", self.stage)
        except TransactionFailed as exc:
            log.error("%s: %s; the stage starts again from what is committed", self.stage, exc)
            self._close()
            raise
        except Wedged:
            # closing would wait on the stuck coordinator for good: the process ends and its supervisor starts
            # the stage again (streams/runtime/process.py); what was not committed is read again, to the same ids
            self.producer.flush(10)
            raise
        except BaseException:
            self._close()
            raise
        self._close()

    def transactional_id(self) -> str:
        """`<group>-<id of this worker's state folder>`: the same when the stage starts again on the same folder, so
        its new producer fences the old one and aborts what it left open (else readers wait TXN_TIMEOUT_MS)."""
        path = Path(self.stores.root) / "transactional.id"
        try:
            ident = path.read_text().strip()
        except FileNotFoundError:
            ident = ""
        if not ident:
            ident = uuid.uuid4().hex[:16]  # two workers never share a state folder (RocksDB's lock)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ident)
        return f"{self.group}-{ident}"

    def _close(self) -> None:
        try:
            self.consumer.close()  # revokes: what is done is committed
        finally:
            if self._standby_reader is not None:
                self._standby_reader.close()
            self.stores.close_all()
            self.producer.flush(10)

    def _on_stats(self, text: str) -> None:
        """librdkafka's statistics, every 5 s: if the consumer has been out of its group (coordinator state not
        "up") for `wedged_after_s` while the stage runs, raise Wedged. After the broker was frozen for 20 s
        (`make chaos`), one consumer in a few stayed in query-coord/wait-coord for good ("no broker available
        for coordinator query", librdkafka 2.16.0; cf. confluentinc/librdkafka#3082, #3847) while its
        process's other clients went on: the stage held nothing and read nothing, and only /ready said so."""
        import json

        state = (json.loads(text).get("cgrp") or {}).get("state", "up")
        now = time.monotonic()
        if state == "up" or self.stop.is_set():
            self._out_of_group_since = None
            return
        if self._out_of_group_since is None:
            self._out_of_group_since = now
        elif now - self._out_of_group_since >= self.wedged_after_s:
            raise Wedged(f"{self.stage}: the consumer has been out of its group (state {state}) for "
                         f"{now - self._out_of_group_since:.0f} s; the stage starts again with a new one")

    def process(self, records: list[Record]) -> None:
        raise NotImplementedError

    def idle(self, now: float) -> None:
        """Called on every turn of the loop, with or without records (e.g. for ticks)."""

    def _take(self) -> list[Record]:
        """What the consumer has waiting, up to ENGAGE_BATCH_MAX; if nothing, wait up to 100 ms for one."""
        most = self.settings.batch_max
        msgs = self.consumer.consume(most, 0)
        if not msgs:
            if self._held is not None:
                return []  # the held state goes first (see run)
            first = self.consumer.poll(0.1)
            if first is None:
                return []
            msgs = [first] + (self.consumer.consume(most - 1, 0) if most > 1 else [])
        records = []
        for m in msgs:
            if m.error():
                log.warning("%s: consumer error: %s", self.stage, m.error())
                continue
            records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers() or (),
                                  m.timestamp()[1]))
        counts: dict[str, int] = {}
        for r in records:
            counts[r.topic] = counts.get(r.topic, 0) + 1
            self._read_to[(r.topic, r.partition)] = r.offset + 1  # for the progress watcher
        for topic, n in counts.items():
            metrics.m().consumed.labels(self.stage, metrics.logical(topic, self.settings.prefixes)).inc(n)
        return records

    def hand_over(self, records: list[Record], sends: list[tuple], writes: list[tuple[int, str, str, bytes | None]]) -> None:
        """Steps 2 to 5 for a batch: `sends` (see `_deliver`), then `writes` (partition, table, key, bytes).

        At least once, the steps are pipelined over two batches: a batch's outputs go with the previous batch's
        changelog records, in one round of acks (the previous batch's outputs are acked already, so its state
        still reaches the changelog only after them). Its own state is held meanwhile, read from memory
        (`PartitionDB.hold`), and goes with the next batch's outputs, or alone when nothing more is waiting
        (`release_held`); its offsets are done once its state is acked. One round of acks a batch instead of
        two when batches come back to back: on a backlog, detection 11,612 -> 12,912 events/s and 103 -> 90 µs of
        CPU per event (medians of four interleaved pairs, 2026-12-02). At 1,000 events/s offered a stage mostly
        waits for its next batch, and makes as many produce requests as before (~2,350 a second, all stages)."""
        state = [(self.changelog[table], p, changelog_key(key), value) for p, table, key, value in writes]
        if self.settings.exactly_once:
            taken = self._positions_after(records)
            offsets = self._transact(sends + state, taken)[len(sends):]
            self._apply(writes, offsets, None)
            self.done.update(taken)
        else:
            taken = {(r.topic, r.partition): r.offset + 1 for r in records}  # records come in offset order
            held, self._held = self._held, None
            with self._dropped_if_failed(held):
                offsets = self._deliver(sends + (held.state if held else []))[len(sends):]
            if held:
                self._apply(held.writes, offsets, held.number)
                self.done.update(held.taken)
            if writes:
                self._batches += 1
                for p, part_writes in _by_partition(writes).items():
                    self.stores.open(p).hold(part_writes, self._batches)
                self._held = _Held(self._batches, state, writes, taken)
            else:
                self.done.update(taken)
        self._count_handed(records, sends)
        self._commit_due(time.monotonic())

    def release_held(self, keep: set[int] | None = None) -> None:
        """The held batch's state to the changelog, acks awaited, then to RocksDB; its offsets done. `keep`: only the
        writes and offsets of these partitions (the others were lost: another worker may write their changelogs)."""
        held, self._held = self._held, None
        if held is None:
            return
        if keep is not None:
            mine = [i for i, w in enumerate(held.writes) if w[0] in keep]
            held = _Held(held.number, [held.state[i] for i in mine], [held.writes[i] for i in mine],
                         {tp: o for tp, o in held.taken.items() if tp[1] in keep})
        with self._dropped_if_failed(held):
            offsets = self._deliver(held.state)
        self._apply(held.writes, offsets, held.number)
        self.done.update(held.taken)

    @contextmanager
    def _dropped_if_failed(self, held: _Held | None):
        """If handing `held` over fails (Stopped), its writes are no longer read: its records are read again, and
        nothing built on state that never reached the changelog may be handed over after it."""
        try:
            yield
        except BaseException:
            if held is not None:
                for p in {w[0] for w in held.writes}:
                    if p in self.stores.dbs:
                        self.stores.dbs[p].discard(held.number)
            raise

    def _apply(self, writes: list[tuple], offsets: list[int], number: int | None) -> None:
        """`writes` into their partitions' RocksDB, with the changelog offsets (`offsets`, theirs by index) they reach."""
        reached: dict[int, dict[str, int]] = {}
        for (p, table, _, _), offset in zip(writes, offsets):
            reached.setdefault(p, {})[table] = max(offset + 1, reached.get(p, {}).get(table, 0))
        for p, part_writes in _by_partition(writes).items():
            self.stores.open(p).write(part_writes, reached[p], number)

    def _positions_after(self, records: list[Record]) -> dict[tuple[str, int], int]:
        """Where the batch leaves each partition it read: after its last record, and past the transaction markers
        and aborted records that follow it (the consumer's position): a group committed at the last record + 1
        would never reach the end of a topic written in transactions (its last offset is a marker)."""
        from confluent_kafka import TopicPartition

        after: dict[tuple[str, int], int] = {}
        for r in records:
            after[(r.topic, r.partition)] = r.offset + 1
        for tp in self.consumer.position([TopicPartition(t, p) for t, p in after]):
            if tp.offset > after[(tp.topic, tp.partition)]:
                after[(tp.topic, tp.partition)] = tp.offset
        return after

    def _note_positions(self) -> None:
        """Every OBSERVE_S, from the loop: the consumer's position on each held partition. For the lag (a topic written
        in transactions ends with a marker no record reaches), and under exactly-once, a position moved on past
        markers or aborted records alone is committed (nothing else would)."""
        from confluent_kafka import TopicPartition

        held = [TopicPartition(t, p) for t in self.inputs for p in sorted(self.assigned)]
        if not held:
            return
        moved = {}
        for tp in self.consumer.position(held):
            where = (tp.topic, tp.partition)
            if tp.offset >= 0 and tp.offset > self._read_to.get(where, -1):
                self._read_to[where] = tp.offset
                if self.settings.exactly_once and tp.offset > self.done.get(where, -1):
                    moved[where] = tp.offset
        if moved:
            self._transact([], moved)
            self.done.update(moved)

    def send_aside(self, items: list[tuple], wait: bool = True) -> None:
        """Records sent outside a batch (ticks, sweeps: the stage's own inputs, no state): acked before this returns
        if `wait`; under exactly-once, in a transaction of their own."""
        if self.settings.exactly_once:
            self._transact(items, {})
        elif wait:
            self._deliver(items)
        else:
            _produce(self.producer, items, range(len(items)), [None] * len(items), {})
            self.producer.poll(0)

    def _count_handed(self, records: list[Record], sends: list[tuple]) -> None:
        prefix, now, counted = self.settings.prefixes, time.time(), self._counted
        for item in sends:
            counted.inc(metrics.m().produced, (self.stage, metrics.logical(item[0], prefix)))
        hop = metrics.m().hop
        for r in records:
            if r.ts_ms > 0:
                counted.observe(hop, (self.stage, metrics.logical(r.topic, prefix)), max(0.0, now - r.ts_ms / 1000))
        counted.flush()

    def output(self, spec: topics.TopicSpec, key: str, record: dict | None, headers: dict | None = None) -> tuple:
        """An output as `_deliver` takes it: the record encoded for its topic (None: a tombstone)."""
        topic = self.settings.topic(spec.name)
        value = None if record is None else self.codec.encode(topic, spec.schema, record)
        metrics.count_output(self._counted, spec.name, record, time.time())
        return (topic, None, key.encode(), value, None, [(k, v.encode()) for k, v in (headers or {}).items()])

    def _commit_due(self, now: float) -> None:
        """Commit what is done once per commit interval (`Settings.commit_interval_s`), as Faust does.

        Every offset in `done` has its outputs and state acked already, so a later commit only means
        more to read again after a crash, never a loss. A commit per batch was an OffsetCommit (and a
        write to __consumer_offsets) per batch, some hundreds a second at 1,000 events/s offered.
        """
        if self.done and now - self._last_commit >= self.settings.commit_interval_s:
            self._last_commit = now
            self._commit(asynchronous=True)

    def _pause_for_tests(self) -> None:
        if self._pause_for_test:
            from confluent_kafka import TopicPartition

            self.consumer.pause([TopicPartition(t, p) for t in self.inputs for p in self._pause_for_test])
            self._pause_for_test = set()

    def _watch_progress(self) -> None:
        """In a thread, every OBSERVE_S: each held input partition's lag, and when it last moved on or had nothing
        to read (what /ready calls stuck when it stops while there is something to read). A thread of its own
        and an admin client of its own: a request on the consumer's connection waits behind its fetch (half a
        second each, measured: a pass over 60 partitions asked one at a time held the data stage's loop 30 s)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(clients.librdkafka_config(self.settings))
        while not self.stop.wait(OBSERVE_S):
            try:
                self._observe(admin, time.monotonic())
            except Exception as exc:  # noqa: BLE001 - the broker away, a rebalance: measured again next time
                log.debug("%s: lag not measured: %s", self.stage, exc)

    def _observe(self, admin, now: float) -> None:
        """One pass: how far the loop has read each held partition (it notes that itself: the consumer's own
        calls from another thread wait for its fetches), the partitions' ends asked of the broker in one
        request; a partition never read from (an idle topic) is where its group committed, else at its start."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        held = [TopicPartition(t, p) for t in self.inputs for p in sorted(self.assigned)]
        if not held:
            return
        ends = {(tp.topic, tp.partition): f.result().offset
                for tp, f in admin.list_offsets({tp: OffsetSpec.latest() for tp in held}, request_timeout=5).items()}
        read_to = dict(self._read_to)
        unread = [tp for tp in held if (tp.topic, tp.partition) not in read_to
                  and (tp.topic, tp.partition) not in self._positions]
        if unread:
            found = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(self.group, unread)])
            committed = {(c.topic, c.partition): c.offset for c in found[self.group].result().topic_partitions}
            fresh = [tp for tp in unread if committed.get((tp.topic, tp.partition), -1) < 0]
            starts = admin.list_offsets({tp: OffsetSpec.earliest() for tp in fresh}, request_timeout=5) if fresh else {}
            for where, offset in committed.items():
                if offset >= 0:
                    self._positions[where] = offset
            for tp, f in starts.items():
                self._positions[(tp.topic, tp.partition)] = f.result().offset
        wall, prefix = time.time(), self.settings.prefixes
        for tp in held:
            where = (tp.topic, tp.partition)
            before = self._positions.get(where, -1)
            at = read_to.get(where, before)
            high = ends.get(where, -1)
            lag = max(0, high - at) if high >= 0 and at >= 0 else 0
            labels = (self.stage, metrics.logical(tp.topic, prefix), str(tp.partition))
            metrics.m().lag.labels(*labels).set(lag)
            if lag == 0 or at != before:
                metrics.m().progress.labels(*labels).set(wall)
            self._positions[where] = at

    def _dead_letter(self, record: Record, exc: Exception, fault: bool, stage: str | None = None) -> tuple:
        return dead_letter_item(self.settings, self.codec, stage or self.stage, record, exc, fault)

    # -- handing records to the broker -------------------------------------------------------------
    def _deliver(self, items: list[tuple]) -> list[int]:
        """Produce `items` and wait for every ack (see `deliver`); returns each record's offset."""
        return deliver(self.producer, items, self.stop, self.codec, self.stage)

    def _transact(self, items: list[tuple], offsets: dict[tuple[str, int], int]) -> list[int]:
        """`items` and the consumer's `offsets` in one transaction (see `transact`); each item's offset."""
        return transact(self.producer, items, offsets, self.consumer.consumer_group_metadata, self.stop, self.codec,
                        self.stage)

    def _commit(self, asynchronous: bool, partitions: set[tuple[str, int]] | None = None) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if self.settings.exactly_once:
            return  # each batch's offsets were committed with its transaction

        done = [TopicPartition(t, p, o) for (t, p), o in self.done.items() if partitions is None or (t, p) in partitions]
        if not done:
            return
        try:
            self.consumer.commit(offsets=done, asynchronous=asynchronous)
        except KafkaException as exc:
            # not committed (e.g. the group is rebalancing): the records are read again, to the same ids
            log.warning("%s: commit failed: %s", self.stage, exc)

    # -- partitions coming and going ---------------------------------------------------------------
    def _committed(self, consumer, partitions, timeout_s: float = 60.0) -> list:
        """The group's committed offsets, asked again while the coordinator moves or wakes up: right after the
        broker was frozen (`make chaos`) the first ask failed with NOT_COORDINATOR, and the exception, raised in
        the assignment callback, ended the stage's process (started again, but a crash for a passing state)."""
        from confluent_kafka import KafkaException

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return consumer.committed(partitions, timeout=max(1.0, min(30.0, deadline - time.monotonic())))
            except KafkaException as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s: asking for the committed offsets again: %s", self.stage, exc)
                time.sleep(0.5)

    def _on_assign(self, consumer, partitions) -> None:
        mine = sorted(tp.partition for tp in partitions if tp.topic == self.primary)
        started = time.monotonic()
        metrics.m().stage_ready.labels(self.stage).set(0)
        self._stop_standby(set(mine))  # kept warm until now: restoring reads only what came since
        committed: dict[tuple[str, int], int] = {}
        if partitions:
            # before restoring: under exactly-once the committed offsets are asked for as stable (read_committed),
            # so they wait for a transaction still open (a former owner frozen, not yet fenced); read after the
            # restore, they could count a batch committed in between whose state the restore stopped short of
            committed = {(tp.topic, tp.partition): tp.offset for tp in self._committed(consumer, partitions)}
            if self._resume_where_faust_stopped(partitions, committed):
                consumer.assign(partitions)  # with the offsets set (the client's own assign would drop them)
        restored = self.restore(mine)
        metrics.m().restored.labels(self.stage).inc(restored)
        self.assigned = set(mine)
        self._mark_held(partitions, 1)
        self._pause_for_test = {p for p in mine if f"{self.stage}:{p}" in self.settings.test_pause}
        metrics.m().stage_ready.labels(self.stage).set(1)
        self._assigned(mine, committed)
        log.info("%s: assigned partitions %s; %d changelog records restored in %.1f s", self.stage, mine, restored,
                 time.monotonic() - started)

    def _assigned(self, mine: list[int], committed: dict[tuple[str, int], int]) -> None:
        """Hook: partitions `mine` were assigned, resuming at `committed` ((topic, partition) -> offset, -1 if none)."""

    def _resume_where_faust_stopped(self, partitions, committed: dict) -> bool:
        """Partitions this group never took up resume where the Faust app's group committed, on an upgrade.

        Releases before this one ran the stage as a Faust agent, in the app's own group: a worker
        upgraded in place goes on from there instead of reading every stored record again. It is an
        upgrade only if the app's group committed on `ran_on_faust`, which this release's app never
        reads: the app still reads some of the other inputs (the decisions, for the journey), and on
        a new installation its commits there are no sign of anything this stage has done.

        Only once per partition: the partitions taken over are those whose `ran_on_faust` this group
        never committed, and their offsets are committed at once, that one included. Otherwise an
        input this group never commits (nothing has come on it yet) would take the app's offset at
        every rebalance, skipping records the app has read since and this stage has not. The offsets
        are set on the assigned partitions; True if any was.
        """
        from confluent_kafka import KafkaException, TopicPartition

        if self.ran_on_faust is None:
            return False
        fresh = {tp.partition for tp in partitions
                 if tp.topic == self.ran_on_faust and committed.get((tp.topic, tp.partition), -1) < 0}
        new = [tp for tp in partitions if tp.partition in fresh and committed.get((tp.topic, tp.partition), -1) < 0]
        if not new:
            return False
        faust_group = clients.consumer(self.settings, self.settings.app_id, log_level=None)  # never joins it
        try:
            marks = faust_group.committed([TopicPartition(self.ran_on_faust, p)
                                           for p in range(self.settings.partitions)], timeout=30)
            if not any(tp.offset >= 0 for tp in marks):
                return False
            earlier = faust_group.committed([TopicPartition(tp.topic, tp.partition) for tp in new], timeout=30)
        finally:
            faust_group.close()
        by_tp = {(tp.topic, tp.partition): tp.offset for tp in earlier if tp.offset >= 0}
        for tp in new:
            offset = by_tp.get((tp.topic, tp.partition))
            if offset is not None:
                tp.offset = offset
                committed[(tp.topic, tp.partition)] = offset
        # the mark that these partitions were taken up: `ran_on_faust` committed where it was, else at its
        # start (where the group reads from anyway)
        taken = [TopicPartition(tp.topic, tp.partition, by_tp.get((tp.topic, tp.partition), 0)) for tp in new
                 if (tp.topic, tp.partition) in by_tp or tp.topic == self.ran_on_faust]
        try:
            self.consumer.commit(offsets=taken, asynchronous=False)
        except KafkaException as exc:  # taken over again at the next assignment
            log.warning("%s: could not commit the offsets taken over: %s", self.stage, exc)
        if by_tp:
            log.warning("%s: %d partitions resume where the app's group (an earlier release) committed",
                        self.stage, len(by_tp))
        return bool(by_tp)

    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self.release_held()  # still this worker's: the held state and its offsets go before the commit
        except Stopped:
            log.info("%s: stopped before the last batch's state was acked; it is read again next time", self.stage)
        self._commit(asynchronous=False, partitions=gone)
        self._forget(gone)

    def _on_lost(self, consumer, partitions) -> None:
        # another worker may own these already: nothing is committed, the state is read afresh
        lost = {(tp.topic, tp.partition) for tp in partitions}
        kept = self.assigned - {p for t, p in lost if t == self.primary}
        try:
            self.release_held(keep=kept)  # of the partitions still held; the lost ones' changelogs are not ours
        except Stopped:
            pass
        self._forget(lost)

    def _mark_held(self, partitions, held: int) -> None:
        now, prefix = time.time(), self.settings.prefixes
        for tp in partitions:
            labels = (self.stage, metrics.logical(tp.topic, prefix), str(tp.partition))
            metrics.m().held.labels(*labels).set(held)
            metrics.m().progress.labels(*labels).set(now)
            metrics.m().lag.labels(*labels).set(0)

    def _forget(self, gone: set[tuple[str, int]]) -> None:
        # another worker may own these partitions next and change their state
        from confluent_kafka import TopicPartition

        self._mark_held([TopicPartition(t, p) for t, p in gone], 0)
        for key in gone:
            self._positions.pop(key, None)
            self._read_to.pop(key, None)
        mine = {p for t, p in gone if t == self.primary}
        self._forgotten(mine)
        for p in mine:
            self.stores.close(p)
        self.assigned -= mine
        for key in gone:
            self.done.pop(key, None)

    def _forgotten(self, partitions: set[int]) -> None:
        """Hook: `partitions` were revoked or lost; what is kept of them in memory must go."""

    # -- standby replicas ----------------------------------------------------------------------------
    def standby_partitions(self, owners: dict[int, str], me: str, replicas: int) -> set[int]:
        """The partitions this member keeps warm: with the members in order, partition p, held by member k,
        is kept by members k+1 .. k+replicas (never by its holder). `owners`: partition -> member id."""
        members = sorted(set(owners.values()) | {me})
        if len(members) < 2:
            return set()
        mine = members.index(me)
        out = set()
        for p, owner in owners.items():
            k = members.index(owner)
            if owner != me and any((k + r) % len(members) == mine for r in range(1, replicas + 1)):
                out.add(p)
        return out

    def _watch_standbys(self) -> None:
        """In a thread: every STANDBY_CHECK_S, which partitions of the primary input the group's other members
        hold, hence which this one keeps warm (handed to the loop, which alone touches the stores)."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(clients.librdkafka_config(self.settings))
        while not self.stop.wait(STANDBY_CHECK_S):
            try:
                me = self.consumer.memberid()
                group = admin.describe_consumer_groups([self.group])[self.group].result(10)
                owners = {tp.partition: member.member_id for member in group.members
                          for tp in member.assignment.topic_partitions if tp.topic == self.primary}
                if me:
                    self._standbys_wanted = frozenset(
                        self.standby_partitions(owners, me, self.settings.standby_replicas))
            except Exception as exc:  # noqa: BLE001 - the group is rebalancing, the broker away: asked again
                log.debug("%s: standbys not worked out: %s", self.stage, exc)

    def _keep_standbys(self) -> None:
        """Follow the wanted standbys' changelogs into their RocksDB, STANDBY_BATCH records a turn at most."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        wanted = set(self._standbys_wanted) - self.assigned
        if wanted != self.standbys:
            self._stop_standby(self.standbys - wanted)
            new = wanted - self.standbys
            if new:
                if self._standby_reader is None:
                    self._standby_reader = clients.consumer(
                        self.settings, clients.throwaway_group(f"{self.group}-standby"), logger=log)
                starts = []
                for p in sorted(new):
                    db = self.stores.open(p)
                    for table, topic in self.changelog.items():
                        start = db.offset(table)
                        starts.append(TopicPartition(topic, p, start if start > 0 else OFFSET_BEGINNING))
                self._standby_reader.incremental_assign(starts)
                self.standbys |= new
                metrics.m().standbys.labels(self.stage).set(len(self.standbys))
                log.info("%s: keeping partitions %s warm for another worker", self.stage, sorted(new))
        if not self.standbys:
            return
        table_of = {topic: table for table, topic in self.changelog.items()}
        pending: dict[int, list] = {}
        reached: dict[int, dict[str, int]] = {}
        for m in self._standby_reader.consume(STANDBY_BATCH, 0):
            if m.error() or m.partition() not in self.standbys:
                continue
            p, table = m.partition(), table_of[m.topic()]
            pending.setdefault(p, []).append((table, table_key(m.key()), m.value()))
            reached.setdefault(p, {})[table] = m.offset() + 1
        for p, writes in pending.items():
            self.stores.open(p).write(writes, reached[p])

    def _stop_standby(self, partitions: set[int]) -> None:
        """No longer follow `partitions` as standbys (they became this worker's, or another's standbys)."""
        from confluent_kafka import TopicPartition

        gone = partitions & self.standbys
        if not gone:
            return
        self._standby_reader.incremental_unassign([TopicPartition(topic, p) for p in gone
                                                   for topic in self.changelog.values()])
        self.standbys -= gone
        metrics.m().standbys.labels(self.stage).set(len(self.standbys))
        for p in gone - self.assigned:
            self.stores.close(p)

    def restore(self, partitions: list[int]) -> int:
        """Bring each partition's RocksDB up to its changelogs' end; returns the records applied."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        if not partitions or not self.changelog:
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
                    # a changelog is younger than this copy (the topic was made again): all tables start over
                    log.warning("%s: local state of partition %d is ahead of its changelog; read again", self.stage, p)
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


def transaction_timeout_ms(settings: Settings) -> int:
    """TXN_TIMEOUT_MS, or the session timeout if shorter: a dead worker's partitions move to another after the session
    timeout, and its open transactions are aborted by then, so the new owner's readers wait for nothing more
    (`make chaos`, 6 s sessions: with 10 s, recovery from a kill took 10-19 s; the figures are in the README)."""
    return min(TXN_TIMEOUT_MS, settings.session_timeout_ms)


def dead_letter_item(settings: Settings, codec, stage: str, record: Record, exc: Exception, fault: bool) -> tuple:
    """The dead letter of `record` as `deliver` takes it: bad input (`exc` says why) or a fault of ours (logged
    without the record)."""
    metrics.m().dead_letters.labels(stage, metrics.reason_class(exc, fault)).inc()
    reason = log_fault(stage, record, exc) if fault else exc
    dead = dead_letter(stage, record.topic, record.partition, record.offset, record.key, record.value, reason)
    if not fault:
        log_dead_letter(dead)
    topic = settings.topic(topics.DEADLETTER.name)
    return topic, None, dead["key"], codec.encode(topic, topics.DEADLETTER.schema, dead), dead


def deliver(producer, items: list[tuple], stop: threading.Event, codec, who: str) -> list[int]:
    """Produce (topic, partition or None, key, value[, dead-letter record[, headers]]) and wait for every ack.

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
        _produce(producer, items, pending, offsets, errors)
        while producer.flush(1.0) > 0:
            if stop.is_set():
                raise Stopped()
        pending = [i for i in pending if offsets[i] is None]
        if pending:
            log.error("%s: %d of %d sends failed, sending them again: %s", who, len(pending), len(items),
                      next(iter(errors.values()), "no ack"))
            _dead_letters_as_references(items, errors, codec)
            if stop.wait(pause):
                raise Stopped()
            pause = min(pause * 2, 5.0)
    return offsets  # type: ignore[return-value]


def _produce(producer, items: list[tuple], which, offsets: list, errors: dict) -> None:
    """Hand items `which` to the producer; their acks fill `offsets` (or `errors`) by index."""
    for i in which:
        topic, partition, key, value = items[i][:4]
        kwargs = {} if partition is None else {"partition": partition}
        if len(items[i]) > 5 and items[i][5]:
            kwargs["headers"] = items[i][5]

        def acked(err, msg, i=i):
            if err is None:
                offsets[i] = msg.offset()
            else:
                errors[i] = err

        clients.produce_when_room(producer, topic, value=value, key=key, on_delivery=acked, **kwargs)


def _size_refusals() -> frozenset:
    from confluent_kafka import KafkaError

    return frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE})


def _dead_letters_as_references(items: list[tuple], errors: dict, codec) -> None:
    """A dead letter the broker refused as too large for the topic is sent again as a reference to its record (not
    one that failed otherwise: the broker away, or purged with an aborted transaction, goes again whole)."""
    too_large = _size_refusals()
    for i, err in errors.items():
        if getattr(err, "code", lambda: None)() not in too_large:
            continue
        dead = items[i][4] if len(items[i]) > 4 else None
        if dead and not dead["truncated"]:
            ref = as_reference(dead)
            items[i] = (*items[i][:3], codec.encode(items[i][0], topics.DEADLETTER.schema, ref), ref)


def retrying(call, stop: threading.Event, who: str, what: str):
    """`call()`, again while it fails with a retriable error (the broker away, its coordinator moving), pausing more
    each time; Stopped if asked to stop meanwhile."""
    from confluent_kafka import KafkaException

    pause = 0.2
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not exc.args[0].retriable():
                raise
            log.warning("%s: %s asked again: %s", who, what, exc.args[0].str())
        if stop.wait(pause):
            raise Stopped()
        pause = min(pause * 2, 5.0)


def _fenced_codes() -> frozenset:
    from confluent_kafka import KafkaError

    # the group moved on (a rebalance this worker has not joined yet) or another producer took this id: sending
    # the same batch again cannot pass, and the partitions may be another worker's by now
    return frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.FENCED_INSTANCE_ID,
                      KafkaError.REBALANCE_IN_PROGRESS, KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                      KafkaError.INVALID_PRODUCER_EPOCH})


def _abort_now(producer) -> None:
    """Abort the open transaction if the producer still can, at once: what it holds is then dropped now, not after the
    transaction timeout (the next owner's readers wait for it); a fenced or failed producer cannot, and is left."""
    from confluent_kafka import KafkaException

    try:
        producer.abort_transaction(1.0)
    except KafkaException:
        pass


def transact(producer, items: list[tuple], offsets: dict[tuple[str, int], int], group_metadata, stop: threading.Event,
             codec, who: str) -> list[int]:
    """Produce `items` (as `deliver` takes them) and commit the consumer's `offsets` ((topic, partition) -> next
    offset; `group_metadata()` gives the consumer's group and generation) in one transaction; returns when it is
    committed, with each item's offset.

    A transaction that must be aborted (a send refused, the broker away longer than TXN_TIMEOUT_MS) is aborted and
    the same items go again in a new one, with a growing pause; a dead letter refused for its size goes as a
    reference. TransactionFailed if the group has moved on or the producer is fenced or failed for good; Stopped if
    asked to stop meanwhile (what was open is aborted, or by the coordinator after TXN_TIMEOUT_MS).
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    fenced = _fenced_codes()
    pause = 0.1
    while True:
        acked: list[int | None] = [None] * len(items)
        errors: dict[int, object] = {}
        try:
            producer.begin_transaction()
            _produce(producer, items, range(len(items)), acked, errors)
            if offsets:
                taken = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                retrying(lambda: producer.send_offsets_to_transaction(taken, group_metadata(), TXN_CALL_S), stop, who,
                         "send_offsets_to_transaction")
            retrying(lambda: producer.commit_transaction(TXN_CALL_S), stop, who, "commit_transaction")
            metrics.m().transactions.labels(who, "committed").inc()
            return acked  # type: ignore[return-value]
        except Stopped:
            _abort_now(producer)
            raise
        except KafkaException as exc:
            err = exc.args[0]
            # a send of this transaction already failed, so it takes no more records (librdkafka's _STATE on
            # produce): it must be aborted, as the failed send's own error would have said at the commit
            cut_short = err.code() == KafkaError._STATE and not err.fatal()
            if not cut_short and (err.fatal() or err.code() in fenced or not err.txn_requires_abort()):
                metrics.m().transactions.labels(who, "refused").inc()
                _abort_now(producer)
                raise TransactionFailed(f"transaction refused ({err.str()})") from None
            metrics.m().transactions.labels(who, "aborted").inc()
            log.error("%s: a transaction of %d records was aborted, sending them again: %s", who, len(items),
                      next(iter(errors.values()), err.str()))
            try:
                retrying(lambda: producer.abort_transaction(TXN_CALL_S), stop, who, "abort_transaction")
            except KafkaException as failed:  # e.g. fenced: the coordinator ended the transaction itself (timed out)
                metrics.m().transactions.labels(who, "refused").inc()
                raise TransactionFailed(f"transaction not aborted ({failed.args[0].str()})") from None
        producer.poll(0)  # the delivery reports of the failed sends, if not served yet (which one was too large)
        _dead_letters_as_references(items, errors, codec)
        if stop.wait(pause):
            raise Stopped()
        pause = min(pause * 2, 5.0)
