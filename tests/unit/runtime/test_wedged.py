"""A stage whose consumer stays out of its group (librdkafka stuck on its coordinator) starts again."""
import json

import pytest

from streams.runtime import runner as runner_module
from streams.runtime.runner import Wedged
from tests.support.runners import after_decision


def stats(state: str) -> str:
    return json.dumps({"name": "rdkafka#consumer-1", "cgrp": {"state": state, "stateage": 1, "join_state": "steady"}})


def test_a_consumer_out_of_its_group_for_three_session_timeouts_is_wedged(tmp_path, monkeypatch):
    # Given a stage whose sessions time out after 10 s (so it is wedged after 30 s out of its group)
    runner = after_decision(tmp_path, session_timeout_ms=10_000)
    assert runner.wedged_after_s == 30.0
    now = [1000.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: now[0])
    # When librdkafka reports it looking for its coordinator, again and again
    runner._on_stats(stats("up"))
    runner._on_stats(stats("query-coord"))
    now[0] += 20
    runner._on_stats(stats("wait-coord"))  # 20 s out: librdkafka may still find its way back
    # and it gets back in: the count starts again
    now[0] += 5
    runner._on_stats(stats("up"))
    now[0] += 5
    runner._on_stats(stats("wait-coord"))
    now[0] += 29
    runner._on_stats(stats("wait-coord"))
    # Then only 30 s out of the group in one spell is taken for stuck
    now[0] += 1
    with pytest.raises(Wedged, match="out of its group \\(state wait-coord\\) for 30 s"):
        runner._on_stats(stats("wait-coord"))


def test_a_stopping_stage_is_never_taken_for_wedged(tmp_path, monkeypatch):
    # Given a stage told to stop, whose consumer is leaving its group
    runner = after_decision(tmp_path)
    now = [0.0]
    monkeypatch.setattr(runner_module.time, "monotonic", lambda: now[0])
    runner.stop.set()
    # When it stays out of the group for long, Then nothing is raised (it is closing)
    for _ in range(10):
        runner._on_stats(stats("wait-coord"))
        now[0] += 60


def test_the_committed_offsets_are_asked_again_while_the_coordinator_moves(tmp_path, monkeypatch):
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    # Given a consumer whose first ask fails as it did right after the broker was frozen
    answers = [KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)), [TopicPartition("t", 0, 42)]]

    class Consumer:
        def committed(self, partitions, timeout):
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    runner = after_decision(tmp_path)
    monkeypatch.setattr(runner_module.time, "sleep", lambda s: None)
    # When the runner asks for the committed offsets on an assignment
    got = runner._committed(Consumer(), [TopicPartition("t", 0)])
    # Then it asks again instead of failing the stage's process
    assert [(tp.topic, tp.partition, tp.offset) for tp in got] == [("t", 0, 42)] and answers == []
