"""The detection runner over a fake consumer and producer: what it sends, in which order, and when it commits."""
from __future__ import annotations

import json
import threading
import time

import pytest

from streams import clients, topics
from streams.detection import detector as detector_module
from streams.detection.partition import INDEX, VISITORS
from streams.detection.rules import load_detection
from streams.detection.runner import DetectionRunner
from streams.runtime.runner import Record, Stopped
from streams.detection.store import PartitionDB
from streams.settings import REPO_ROOT, Settings
from tests.support import wire
from tests.support.runners import FakeConsumer, FakeProducer, Message, handed

T0 = int(time.time() * 1000) - 60_000  # a minute ago: within the accepted event times
RULES = load_detection(REPO_ROOT / "rules" / "detection.yaml")


def _runner(tmp_path, failures: int = 0) -> DetectionRunner:
    settings = Settings(data_dir=tmp_path / "state")
    runner = DetectionRunner(settings, clients.codec(settings), lambda: RULES)
    runner.log = []
    runner.consumer, runner.producer = FakeConsumer(runner.log), FakeProducer(runner.log, failures)
    runner.stores.open(0)
    runner.stores.open(1)
    return runner


def _event(i: int, type_: str, visitor: str = "v1", partition: int = 0, key: str | None = None, **kw) -> Record:
    value = wire.encode("Interaction", wire.interaction(event_id=f"e{i}", visitor_id=visitor, type_=type_,
                                                        ts=T0 + i * 1000, **kw))
    return Record("engage.events", partition, i, (key or visitor).encode(), value)


def _sent(runner, spec) -> list[tuple[bytes, dict]]:
    name = runner.settings.topic(spec.name)
    return [(key, wire.decode(spec.schema, value)) for topic, _, key, value in runner.producer.sent if topic == name]


def _changelog(runner, table) -> list[tuple[int, str, bytes | None]]:
    name = runner.changelog[table]
    return [(p, json.loads(key), value) for topic, p, key, value in runner.producer.sent if topic == name]


def test_a_cancel_search_becomes_a_signal_then_state_then_a_commit(tmp_path):
    # Given the runner with the default rules
    runner = _runner(tmp_path)
    # When a visitor searches for how to cancel
    handed(runner, [_event(5, "search", query="cancel my contract", path="/help/search")])
    # Then one signal, keyed by the visitor, with the event as evidence and the rule set's version
    [(key, signal)] = _sent(runner, topics.SIGNALS)
    assert key == b"v1" and signal["rule_id"] == "cancel-intent" and signal["evidence"][0]["event_id"] == "e5"
    assert signal["ruleset_version"] == RULES.version
    # And the visitor's state went to its partition of the changelog and into RocksDB, at the offset reached
    [(p, visitor, state)] = _changelog(runner, VISITORS)
    assert (p, visitor) == (0, "v1") and runner.stores.dbs[0].get(VISITORS, "v1") == state
    assert runner.stores.dbs[0].offset(VISITORS) == 1
    # And the signal was acked before the state was sent, and the offset committed after both
    kinds = [what if what == "commit" else topic for what, topic in runner.log]
    assert kinds.index(runner.settings.topic("engage.signals")) < kinds.index(runner.changelog[VISITORS]) \
        < kinds.index("commit")
    assert runner.consumer.commits == [{("engage.events", 0): 6}]


def test_each_key_is_written_once_per_batch_into_its_own_partition(tmp_path):
    runner = _runner(tmp_path)
    # When a batch holds three events of v1 (partition 0) and one of v2 (partition 1)
    handed(runner, [_event(1, "page_view", path="/a"), _event(2, "page_view", visitor="v2", partition=1, path="/a"),
                    _event(3, "page_view", path="/b"), _event(4, "page_view", path="/c")])
    # Then each visitor's state is written once, on its own partition
    assert sorted((p, v) for p, v, _ in _changelog(runner, VISITORS)) == [(0, "v1"), (1, "v2")]
    assert runner.stores.dbs[1].get(VISITORS, "v2") is not None and runner.stores.dbs[0].get(VISITORS, "v2") is None
    assert all(int(key.split(":")[0]) == p for p, key, _ in _changelog(runner, INDEX))
    assert runner.consumer.commits == [{("engage.events", 0): 5, ("engage.events", 1): 3}]


def test_garbage_and_a_wrong_key_are_dead_lettered_and_the_next_event_is_processed(tmp_path):
    runner = _runner(tmp_path)
    # When garbage, then an event under another visitor's key, then a valid event arrive in one batch
    handed(runner, [Record("engage.events", 0, 1, b"v1", b"\x00garbage"),
                    _event(2, "search", key="someone-else", query="cancel"), _event(3, "search", query="cancel")])
    # Then both bad records are dead-lettered with their reason, and the valid one still raised its signal
    dead = _sent(runner, topics.DEADLETTER)
    assert [d["stage"] for _, d in dead] == ["detection", "detection"]
    assert "the record key must be the visitor_id" in dead[1][1]["error"]
    [(_, signal)] = _sent(runner, topics.SIGNALS)
    assert signal["evidence"][0]["event_id"] == "e3"
    assert runner.consumer.commits == [{("engage.events", 0): 4}]


def test_a_fault_mid_event_dead_letters_it_alone_and_forgets_the_cached_clocks(tmp_path, monkeypatch):
    # Given a rule engine with a fault on one visitor's events
    real_detect = detector_module.detect

    def faulty(state, ev, rules):
        if ev["visitor_id"] == "v-boom":
            raise RuntimeError("bug")
        return real_detect(state, ev, rules)

    monkeypatch.setattr(detector_module, "detect", faulty)
    runner = _runner(tmp_path)
    # When that visitor's event comes between two others in a batch
    handed(runner, [_event(1, "search", query="cancel"), _event(2, "search", visitor="v-boom", query="cancel"),
                    _event(3, "page_view", visitor="v3", path="/x")])
    # Then it is dead-lettered as a fault, its visitor has no state, and the others are processed
    [(_, dead)] = _sent(runner, topics.DEADLETTER)
    assert dead["error"] == "fault in detection: RuntimeError: bug"
    assert runner.stores.dbs[0].get(VISITORS, "v-boom") is None
    assert {v for _, v, _ in _changelog(runner, VISITORS)} == {"v1", "v3"}
    assert [s["visitor_id"] for _, s in _sent(runner, topics.SIGNALS)] == ["v1"]


def test_sends_the_broker_fails_are_sent_again_and_nothing_is_committed_before(tmp_path):
    # Given a broker that fails the first send
    runner = _runner(tmp_path, failures=1)
    handed(runner, [_event(1, "search", query="cancel")])
    # Then the signal is sent again, once, and the offset committed after it was taken
    assert len(_sent(runner, topics.SIGNALS)) == 1
    assert runner.consumer.commits == [{("engage.events", 0): 2}]


def test_a_batchs_state_goes_with_the_next_batchs_outputs_and_is_read_from_memory_meanwhile(tmp_path):
    from streams.detection.encoding import decode
    from streams.detection.state import SEEN

    runner = _runner(tmp_path)
    db = runner.stores.dbs[0]
    # Given a batch handed over while more was waiting: its outputs acked, its state held, not yet on the changelog
    runner.process([_event(1, "page_view", path="/help")])
    assert _changelog(runner, VISITORS) == [] and db.db.get(b"vv1") is None and runner.done == {}
    assert list(decode(db.get(VISITORS, "v1"))[SEEN]) == ["e1"]  # read from memory
    # When the next batch comes: the same visitor searches how to cancel
    runner.process([_event(2, "search", query="cancel my contract", path="/help/search")])
    # Then its signal and the first batch's state went in one round of acks, the signal first
    signals, changelog = runner.settings.topic("engage.signals"), runner.changelog[VISITORS]
    [second] = [r for r in runner.producer.rounds if signals in r]
    assert changelog in second and second.index(signals) < second.index(changelog)
    # And the first batch's state is in RocksDB and its offset done; the second's, read with the first's, is held
    [(_, _, first)] = _changelog(runner, VISITORS)
    assert db.db.get(b"vv1") == first and runner.done == {("engage.events", 0): 2}
    assert list(decode(db.get(VISITORS, "v1"))[SEEN]) == ["e1", "e2"] and db.db.get(b"vv1") != db.get(VISITORS, "v1")
    # And when nothing more is waiting, the held state goes alone, then into RocksDB, and its offset is done
    runner.release_held()
    assert len(_changelog(runner, VISITORS)) == 2 and db.db.get(b"vv1") == db.get(VISITORS, "v1")
    assert db.unacked == {} and runner.done == {("engage.events", 0): 3}


def test_a_revoke_hands_over_the_held_state_before_committing(tmp_path):
    from confluent_kafka import TopicPartition

    runner = _runner(tmp_path)
    runner.assigned = {0}
    runner.process([_event(1, "page_view", path="/a")])
    # When the partition is revoked while the batch's state is held
    runner._on_revoke(runner.consumer, [TopicPartition("engage.events", 0), TopicPartition("engage.detection-ticks", 0)])
    # Then the state was acked on the changelog before the batch's offset was committed
    kinds = [what if what == "commit" else topic for what, topic in runner.log]
    assert kinds.index(runner.changelog[VISITORS]) < kinds.index("commit")
    assert runner.consumer.commits == [{("engage.events", 0): 2}]


def test_lost_partitions_held_state_is_not_sent_and_the_others_is(tmp_path):
    from confluent_kafka import TopicPartition

    runner = _runner(tmp_path)
    runner.assigned = {0, 1}
    # Given a batch of both partitions whose state is held
    runner.process([_event(1, "page_view", path="/a"), _event(2, "page_view", visitor="v2", partition=1, path="/a")])
    # When partition 1 is lost (another worker may write its changelog already)
    runner._on_lost(runner.consumer, [TopicPartition("engage.events", 1), TopicPartition("engage.detection-ticks", 1)])
    # Then only partition 0's state went to the changelog, and only its offset is done
    assert [(p, v) for p, v, _ in _changelog(runner, VISITORS)] == [(0, "v1")]
    assert runner.done == {("engage.events", 0): 2}


def test_a_held_state_the_broker_never_took_is_not_read_any_more(tmp_path):
    runner = _runner(tmp_path)
    # Given a batch whose state is held, then a broker that fails every send, and a stop asked for meanwhile
    runner.process([_event(1, "page_view", path="/a")])
    runner.producer.failures = 10**6
    threading.Timer(0.3, runner.stop.set).start()
    # When the held state is handed over
    with pytest.raises(Stopped):
        runner.release_held()
    # Then it is no longer read, nor in RocksDB, and its offset is not done: the event is read again next time
    db = runner.stores.dbs[0]
    assert db.get(VISITORS, "v1") is None and db.unacked == {} and runner.done == {}


def test_a_stop_while_the_broker_is_down_commits_nothing_and_writes_no_state(tmp_path):
    # Given a broker that fails every send, and a stop asked for meanwhile
    runner = _runner(tmp_path, failures=10**6)
    threading.Timer(0.3, runner.stop.set).start()
    # When a batch is processed
    with pytest.raises(Stopped):
        runner.process([_event(1, "search", query="cancel")])
    # Then no offset is committed and no state written: the events are read again next time
    assert runner.consumer.commits == [] and runner.stores.dbs[0].get(VISITORS, "v1") is None


def test_a_partition_db_keeps_writes_and_offsets_together_and_survives_a_reopen(tmp_path):
    db = PartitionDB(tmp_path / "p0")
    db.write([(VISITORS, "v1", b"\x81\xa1a\x01"), (INDEX, "0:clock", b"\x80")], {VISITORS: 7, INDEX: 3})
    db.write([(VISITORS, "v1", None)], {VISITORS: 8})
    db.close()
    db = PartitionDB(tmp_path / "p0")
    assert db.get(VISITORS, "v1") is None and db.get(INDEX, "0:clock") == b"\x80"
    assert (db.offset(VISITORS), db.offset(INDEX)) == (8, 3)


class WatermarkConsumer(FakeConsumer):
    """Knows each partition's high watermark from its fetches (cached) and counts requests to the broker."""

    def __init__(self, log: list, cached: dict, broker: dict):
        super().__init__(log)
        self.cached, self.broker, self.requests = cached, broker, 0

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        if cached:
            return 0, self.cached.get(tp.partition, -1001)
        self.requests += 1
        return 0, self.broker[tp.partition]


def test_an_idle_partition_read_to_its_end_gets_a_tick_and_one_still_behind_does_not_cost_a_request(tmp_path):
    # Given partitions 0 and 1, idle for 5 s, 0 read to its end and 1 with events not read yet (a backlog), and
    # partition 2 with no fetch yet
    runner = _runner(tmp_path)
    runner.consumer = WatermarkConsumer(runner.log, cached={0: 10, 1: 500}, broker={2: 0})
    runner.assigned = {0, 1, 2}
    runner.position = {0: 10, 1: 20}
    runner.idle_partitions.assigned([0, 1, 2], now=100.0)
    # When the idle check runs
    runner.idle(105.0)
    # Then partition 0 and the empty partition 2 get a tick; only partition 2, which no fetch told about, cost a request
    ticks = [(p, wire.decode("Tick", v)) for t, p, _, v, _ in runner.producer.queue]
    assert [p for p, _ in ticks] == [0, 2] and ticks[0][1]["idle_ms"] == 5000
    assert runner.consumer.requests == 1


def test_changelog_keys_are_written_and_read_as_faust_tables_of_earlier_releases_wrote_them():
    from faust.serializers import codecs

    from streams.runtime.store import changelog_key, table_key

    # Faust's str-keyed tables wrote JSON keys; values were raw bytes in both
    for key in ["v1", "0:clock", "é-visitor", "3:q12"]:
        assert changelog_key(key) == codecs.dumps("json", key) and table_key(codecs.dumps("json", key)) == key


class FakeChangelogReader:
    """A consumer over in-memory changelogs: {(topic, partition): [(key, value), ...]}, offsets from 0."""

    def __init__(self, logs: dict):
        self.logs, self.at = logs, {}

    def assign(self, tps):
        from confluent_kafka import OFFSET_BEGINNING

        self.at = {(tp.topic, tp.partition): 0 if tp.offset == OFFSET_BEGINNING else tp.offset for tp in tps}

    def consume(self, n, timeout):
        out = []
        for (topic, p), start in self.at.items():
            for offset, (key, value) in enumerate(self.logs[(topic, p)][start:], start):
                out.append(Message(topic, p, offset, key, value))
            self.at[(topic, p)] = len(self.logs[(topic, p)])
        return out

    def position(self, tps):
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition, self.at[(tp.topic, tp.partition)]) for tp in tps]

    def close(self):
        pass


def test_a_copy_ahead_of_one_changelog_is_read_again_whole_from_both(tmp_path, monkeypatch):
    from streams.runtime import runner as runner_module
    from streams.runtime.store import changelog_key

    # Given partition 0's RocksDB at offsets 1 (visitors) and 50 (timers), with a visitor of its own, and
    # changelogs since: the visitors' one holds 2 records, the timers' one, made again, only 5
    runner = _runner(tmp_path)
    runner.stores.open(0).write([(VISITORS, "stale", b"\x80")], {VISITORS: 1, INDEX: 50})
    logs = {(runner.changelog[VISITORS], 0): [(changelog_key(f"v{i}"), b"\x81\xa1a\x01") for i in range(2)],
            (runner.changelog[INDEX], 0): [(changelog_key(f"0:b{i}"), b"\x90") for i in range(5)]}
    monkeypatch.setattr(runner_module.clients, "consumer", lambda *a, **kw: FakeChangelogReader(logs))
    monkeypatch.setattr(runner_module.clients, "watermarks", lambda reader, tp, deadline: (0, len(logs[(tp.topic, tp.partition)])))
    # When the partition is restored
    applied = runner.restore([0])
    # Then the copy is dropped and both changelogs are read from their start, the visitors' one too
    db = runner.stores.dbs[0]
    assert applied == 7 and db.get(VISITORS, "stale") is None and db.get(VISITORS, "v0") is not None
    assert db.get(INDEX, "0:b0") == b"\x90" and (db.offset(VISITORS), db.offset(INDEX)) == (2, 5)


def test_batches_within_the_commit_interval_are_committed_together_once_it_has_passed(tmp_path, monkeypatch):
    # Given a runner that committed its first batch at t=100 s (commit interval 1 s)
    clock = [100.0]
    monkeypatch.setattr("streams.runtime.runner.time.monotonic", lambda: clock[0])
    runner = _runner(tmp_path)
    handed(runner, [_event(1, "page_view", path="/a")])
    # When two more batches come within the interval
    clock[0] = 100.4
    handed(runner, [_event(2, "page_view", path="/b")])
    handed(runner, [_event(3, "page_view", visitor="v2", partition=1, path="/a")])
    # Then nothing more is committed yet
    assert runner.consumer.commits == [{("engage.events", 0): 2}]
    # And once the interval has passed, with no new batch, both partitions' progress is committed at once
    clock[0] = 101.1
    runner._commit_due(clock[0])
    assert runner.consumer.commits[-1] == {("engage.events", 0): 3, ("engage.events", 1): 4}
