"""Reading a one-partition topic right after it was created: retriable errors are waited out, others named."""
from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streams.clients import ReadError, watermarks as _watermarks


class Consumer:
    """Answers get_watermark_offsets with the given errors first, then the watermarks."""

    def __init__(self, *errors):
        self.errors, self.calls = list(errors), 0

    def get_watermark_offsets(self, tp, timeout):
        self.calls += 1
        if self.errors:
            raise KafkaException(self.errors.pop(0))
        return 0, 3


def test_a_partition_without_a_leader_yet_is_waited_for():
    # Given a topic created a moment ago: its partition has no leader for the first two requests (which
    # librdkafka reports as not retriable)
    no_leader = KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION, retriable=False)
    consumer = Consumer(no_leader, no_leader)
    # When the worker reads the rule history's watermarks; Then it gets them once the leader is there
    assert _watermarks(consumer, TopicPartition("engage.rules", 0), time.monotonic() + 5) == (0, 3)
    assert consumer.calls == 3


def test_an_error_that_will_not_pass_is_a_registry_error_naming_the_topic():
    # Given a broker that refuses access to the topic
    consumer = Consumer(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    # When the watermarks are read; Then a ReadError (one line in the CLI) names the topic, at once
    with pytest.raises(ReadError, match="cannot read engage.rules: "):
        _watermarks(consumer, TopicPartition("engage.rules", 0), time.monotonic() + 5)
    assert consumer.calls == 1
