"""A stage that starts while the broker is away waits for it, instead of failing and being started again and again."""
import logging

import pytest

from streams.admin import CredentialsRefused, KafkaUnavailable
from streams.runtime.process import wait_for_kafka
from streams.settings import Settings


def test_a_stage_started_during_an_outage_waits_for_the_broker_and_says_so(caplog):
    # Given a broker that answers only at the third try (each try waits up to 30 s)
    tries = []

    def wait(settings, timeout_s):
        tries.append(timeout_s)
        if len(tries) < 3:
            raise KafkaUnavailable("no Kafka broker answered at 127.0.0.1:9092 within 30s")

    # When the stage starts
    with caplog.at_level(logging.WARNING, logger="streams.runtime.process"):
        wait_for_kafka(Settings(), wait=wait)
    # Then it waited through the outage, saying so once per try, and that it goes on
    assert len(tries) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("waiting for Kafka before starting: no Kafka broker answered at 127.0.0.1:9092 within 30s") == 2
    assert lines[-1] == "Kafka answers again: starting"


def test_refused_credentials_end_the_start_at_once():
    # Given brokers that refuse the stage's user, When it starts, Then it fails at once (waiting cannot help)
    def wait(settings, timeout_s):
        raise CredentialsRefused("the brokers at 127.0.0.1:9092 refused user 'engage'")

    with pytest.raises(CredentialsRefused):
        wait_for_kafka(Settings(), wait=wait)
