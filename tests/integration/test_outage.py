"""A broker outage: the worker waits, logs a bounded number of lines about it, and carries on afterwards.

Runs on a broker of its own (stopped and started again mid-test), so no other test sees the outage.
"""
from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.conftest import Producer_, Reader, _free_ports, make_pipeline

pytestmark = pytest.mark.integration
OUTAGE_S = 25


@pytest.fixture
def own_broker(kafka, tmp_path):
    if kafka.sasl_env is None:
        pytest.skip("needs the local broker, to stop and start one of its own")
    from streams.tools import localkafka

    broker = localkafka.LocalBroker(port=_free_ports(2), data_dir=tmp_path / "kafka")
    localkafka.up(broker)
    yield broker
    localkafka.down(broker)


def test_a_broker_outage_is_logged_in_a_few_lines_and_the_worker_carries_on(own_broker, tmp_path):
    from streams.tools import localkafka

    # Given a worker that has decided a visitor's cancel search
    pipe = make_pipeline(own_broker.bootstrap, tmp_path / "p")
    pipe.workdir.mkdir(parents=True, exist_ok=True)
    pipe.start_worker()
    try:
        produce = Producer_(pipe)
        first = f"V-{uuid.uuid4().hex[:8]}"
        produce.event(event_id=f"{first}-1", visitor_id=first, type_="search", ts=int(time.time() * 1000), query="cancel")
        decisions = Reader(pipe, "engage.decisions", "Decision")
        assert decisions.wait_for(lambda d: d["visitor_id"] == first)
        decisions.close()
        before = len(pipe.logs().splitlines())
        # When the broker is down for OUTAGE_S seconds, then back
        localkafka.down(own_broker)
        time.sleep(OUTAGE_S)
        during = pipe.logs().splitlines()[before:]
        localkafka.up(own_broker)
        # Then the worker logged the outage in a bounded number of lines (each kind of error at most once
        # per interval, with a count), not one per retry
        assert len(during) <= 120, f"{len(during)} lines in a {OUTAGE_S} s outage, e.g.:\n" + "\n".join(during[:40])
        # And it carries on: a visitor's search after the outage is decided
        later = f"V-{uuid.uuid4().hex[:8]}"
        Producer_(pipe).event(event_id=f"{later}-1", visitor_id=later, type_="search", ts=int(time.time() * 1000),
                              query="cancel")
        decisions = Reader(pipe, "engage.decisions", "Decision")
        try:
            assert decisions.wait_for(lambda d: d["visitor_id"] == later, timeout_s=120), pipe.logs()[-3000:]
        finally:
            decisions.close()
        assert pipe.workers[0].poll() is None
    finally:
        pipe.stop()
