"""The stage runner over fake clients: a failing record leaves no write behind, tables see the batch's writes, upgrades resume."""
from __future__ import annotations

import json

from confluent_kafka import TopicPartition

from streams.runtime.values import decode
from streams import clients, topics
from streams.runtime import runner as runner_module
from streams.runtime.runner import Record
from streams.runtime.stage import Handler, StageRunner
from streams.settings import Settings
from tests.support import wire
from tests.support.runners import FakeConsumer, FakeProducer, handed
from tests.support.stage import T0

TABLE = topics.KEY_TO_ATTRIBUTIONS


def _runner(tmp_path, handle, ran_on_faust=None) -> StageRunner:
    settings = Settings(data_dir=tmp_path / "state")
    runner = StageRunner(settings, clients.codec(settings), "test-stage", [Handler("counting", topics.OUTCOMES, handle)],
                         [TABLE], ran_on_faust=ran_on_faust)
    runner.log = []
    runner.consumer, runner.producer = FakeConsumer(runner.log), FakeProducer(runner.log)
    return runner


def _outcome(i: int, type_: str = "shown") -> Record:
    value = wire.encode("Outcome", {"outcome_id": f"o{i}", "delivery_id": "d1", "decision_id": "dec1", "key": "C1",
                                    "ts": T0 + i, "type": type_, "channel": "chat", "action_id": "retention-chat",
                                    "value": None, "detail": None})
    return Record("engage.outcomes", 0, i, b"C1", value)


def _counting(record, outcome, tables):
    counts = tables[TABLE]
    n = (counts.get("C1") or {"n": 0})["n"] + 1
    counts["C1"] = {"n": n}
    if outcome["type"] == "declined":
        raise RuntimeError("a fault of ours, after a write")
    return []


def test_a_record_that_fails_after_writing_leaves_the_state_as_it_found_it(tmp_path):
    # Given a handler that counts outcomes per key, and fails on a decline after counting it
    runner = _runner(tmp_path, _counting)
    # When a batch has a shown, a decline and another shown
    handed(runner, [_outcome(0), _outcome(1, "declined"), _outcome(2)])
    # Then the decline is dead-lettered by the handler's stage, and only the two others are counted, once
    [dead] = [wire.decode("DeadLetter", v) for t, _, _, v in runner.producer.sent if t == "engage.deadletter"]
    assert dead["stage"] == "counting" and dead["offset"] == 1
    changelog = [(json.loads(k), decode(v)) for t, _, k, v in runner.producer.sent if t == runner.changelog[TABLE]]
    assert changelog == [("C1", {"n": 2})]
    assert decode(runner.stores.dbs[0].get(TABLE, "C1")) == {"n": 2}
    assert runner.consumer.commits == [{("engage.outcomes", 0): 3}]


def _writing_c_and_deleting_a(seen: list, look):
    """A handler: a shown outcome writes c and deletes a; any other adds `look(table)` to `seen`."""
    def handle(record, outcome, tables):
        t = tables[TABLE]
        if outcome["type"] == "shown":
            t["c"] = {"n": 3}
            del t["a"]
        else:
            seen.append(look(t))
        return []
    return handle


def test_a_tables_items_are_the_stored_ones_with_the_batchs_writes_and_deletions(tmp_path):
    # Given stored keys a and b
    seen = []
    runner = _runner(tmp_path, _writing_c_and_deleting_a(seen, lambda t: sorted(t.items())))
    runner.stores.open(0).write([(TABLE, "a", b'{"n":1}'), (TABLE, "b", b'{"n":2}')], {})
    # When one record writes c and deletes a, and the next of the batch lists the table
    handed(runner, [_outcome(0, "shown"), _outcome(1, "accepted")])
    # Then it sees b and c, not a
    assert seen == [[("b", {"n": 2}), ("c", {"n": 3})]]
    assert runner.stores.dbs[0].get(TABLE, "a") is None


def test_the_next_batch_sees_a_held_batchs_writes_and_deletions(tmp_path):
    # Given stored keys a and b, and a batch that wrote c and deleted a, its state held (more was waiting)
    seen = []
    runner = _runner(tmp_path, _writing_c_and_deleting_a(seen, lambda t: (sorted(t.items()), t.get("a"), t.get("c"))))
    runner.stores.open(0).write([(TABLE, "a", b'{"n":1}'), (TABLE, "b", b'{"n":2}')], {})
    runner.process([_outcome(0, "shown")])
    # When the next batch lists and reads the table before the first one's state is acked
    runner.process([_outcome(1, "accepted")])
    # Then it sees b and c, not a, as the first batch left them
    assert seen == [([("b", {"n": 2}), ("c", {"n": 3})], None, {"n": 3})]


class _AppGroup:
    """The Faust app's group's commits, as a consumer that never joins reads them."""

    def __init__(self, commits: dict):
        self.commits = commits

    def committed(self, tps, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self.commits.get((tp.topic, tp.partition), -1001)) for tp in tps]

    def close(self):
        pass


def test_an_upgrade_is_told_by_the_apps_commits_on_a_topic_only_the_stage_read(tmp_path, monkeypatch):
    # Given a runner whose group never committed, and an app group that committed outcomes (read by the app
    # of this release too) but never the attributions (read by this stage alone in earlier releases)
    runner = _runner(tmp_path, _counting, ran_on_faust=topics.ATTRIBUTIONS)
    app = _AppGroup({("engage.outcomes", 0): 40})
    monkeypatch.setattr(runner_module.clients, "consumer", lambda *a, **kw: app)
    assigned = [TopicPartition("engage.attributions", 0), TopicPartition("engage.outcomes", 0)]
    committed = {("engage.attributions", 0): -1001, ("engage.outcomes", 0): -1001}
    # When its partitions are assigned: Then it starts from its own position, not the app's (a new installation)
    assert not runner._resume_where_faust_stopped(assigned, committed) and assigned[1].offset == -1001
    assert runner.consumer.commits == []
    # And when the app's group had committed the attributions (an earlier release ran the stage), it resumes there
    app.commits[("engage.attributions", 3)] = 7
    assert runner._resume_where_faust_stopped(assigned, committed) and assigned[1].offset == 40


def test_partitions_are_taken_over_from_the_app_once_and_the_offsets_taken_are_committed(tmp_path, monkeypatch):
    # Given an upgrade: the app's group committed the attributions and the outcomes, never the forget requests
    runner = _runner(tmp_path, _counting, ran_on_faust=topics.ATTRIBUTIONS)
    app = _AppGroup({("engage.attributions", 0): 7, ("engage.outcomes", 0): 40})
    monkeypatch.setattr(runner_module.clients, "consumer", lambda *a, **kw: app)
    inputs = ("engage.attributions", "engage.outcomes", "engage.forget")
    assigned = [TopicPartition(t, 0) for t in inputs]
    # When partition 0 is first assigned to the runner's group, which never committed
    assert runner._resume_where_faust_stopped(assigned, {(t, 0): -1001 for t in inputs})
    # Then the offsets taken over are committed at once, so that the group has its own from now on
    assert runner.consumer.commits == [{("engage.attributions", 0): 7, ("engage.outcomes", 0): 40}]
    # And when the app reads on (a forget request comes and the app commits past it) and partition 0 is
    # assigned again before the runner committed anything on the forget requests
    app.commits[("engage.forget", 0)] = 1
    again = [TopicPartition(t, 0) for t in inputs]
    committed = {("engage.attributions", 0): 7, ("engage.outcomes", 0): 40, ("engage.forget", 0): -1001}
    # Then nothing is taken over: the forget request is read from the group's own position
    assert not runner._resume_where_faust_stopped(again, committed)
    assert again[2].offset == -1001 and len(runner.consumer.commits) == 1


def test_an_upgraded_partition_the_app_never_read_is_marked_taken_at_its_start(tmp_path, monkeypatch):
    # Given an upgrade where the app's group committed the attributions on partition 3 only
    runner = _runner(tmp_path, _counting, ran_on_faust=topics.ATTRIBUTIONS)
    app = _AppGroup({("engage.attributions", 3): 7})
    monkeypatch.setattr(runner_module.clients, "consumer", lambda *a, **kw: app)
    assigned = [TopicPartition("engage.attributions", 0), TopicPartition("engage.outcomes", 0)]
    # When partition 0 is assigned: nothing to resume from, but the group marks it taken at the start
    assert not runner._resume_where_faust_stopped(assigned, {(tp.topic, 0): -1001 for tp in assigned})
    assert runner.consumer.commits == [{("engage.attributions", 0): 0}]


def test_each_partition_is_kept_warm_by_the_next_members_and_never_by_its_holder():
    from streams.runtime.runner import Runner

    pick = Runner.standby_partitions
    owners = {0: "a", 1: "a", 2: "b", 3: "b", 4: "c", 5: "c"}
    # Given three members and one replica: each keeps the partitions of the member before it, in order
    assert pick(None, owners, "a", 1) == {4, 5} and pick(None, owners, "b", 1) == {0, 1} and pick(None, owners, "c", 1) == {2, 3}
    # And with two replicas, every partition it does not hold
    assert pick(None, owners, "a", 2) == {2, 3, 4, 5}
    # And alone, or with more replicas than other members, nothing more than the others' partitions
    assert pick(None, {0: "a"}, "a", 1) == set() and pick(None, owners, "a", 5) == {2, 3, 4, 5}
