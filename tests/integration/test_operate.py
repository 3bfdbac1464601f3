"""A running worker on the broker: /metrics adds up its processes' counts, /health and /ready answer, and /ready finds a stuck partition."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.integration.conftest import Producer_
from tests.integration.test_context import until
from tests.support import wire

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def sample(text: str, name: str, **labels) -> float:
    """The value of metric `name` with (at least) `labels` in a Prometheus text exposition; 0 if absent."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_a_running_worker_counts_what_its_stages_did_and_says_it_is_alive_and_ready(new_pipeline):
    # Given a worker with its web server
    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    port = pipe.http_ports[0]
    producer = Producer_(pipe)
    # When a visitor searches how to cancel, and a record no one can decode arrives
    visitor = f"v-{uuid.uuid4().hex[:8]}"
    producer.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=int(time.time() * 1000),
                   path="/help", query="cancel my contract")
    producer.raw("engage.events", visitor.encode(), b"not avro")

    # Then /metrics shows, added up from the stages' processes: the events consumed, the signal by rule, the
    # decision by outcome, the dead letter by stage and reason, and the hop latencies
    def counted():
        text = get(port, "/metrics")[1].decode()
        # (an output is counted when made; the hop when its batch is acked, a moment later)
        return text if (sample(text, "engage_decisions_total") >= 1
                        and sample(text, "engage_hop_seconds_count", stage="decision", topic="engage.enriched") >= 1
                        and sample(text, "engage_dead_letters_total", stage="detection") >= 1) else None
    text = until(counted, 60)
    assert text, "the worker's metrics never showed the decision and the dead letter"
    assert sample(text, "engage_records_consumed_total", stage="detection", topic="engage.events") >= 2
    assert sample(text, "engage_signals_total", rule="cancel-intent") == 1
    assert sample(text, "engage_dead_letters_total", stage="detection", reason="undecodable") == 1
    assert sample(text, "engage_hop_seconds_count", stage="decision", topic="engage.enriched") >= 1
    assert sample(text, "engage_event_time_lag_seconds_count", output="decision") >= 1
    assert sample(text, "engage_partition_held", stage="detection", topic="engage.events") == 2
    # And it is alive and ready, every stage assigned and restored
    assert get(port, "/health")[0] == 200
    status, body = get(port, "/ready")
    assert status == 200 and json.loads(body) == {"ready": True, "reasons": [], "stages": {
        "detection": True, "data": True, "decision": True, "after-decision": True}}


def test_ready_goes_false_for_a_worker_whose_partition_is_stuck_with_records_to_read(new_pipeline):
    # Given a worker whose detection stops fetching partition 0 once assigned (the stuck consumer), stuck after 6 s
    pipe = new_pipeline(partitions=2)
    pipe.start_worker(env={"ENGAGE_TEST_PAUSE": "detection:0", "ENGAGE_STUCK_AFTER_S": "6"})
    port = pipe.http_ports[0]
    assert until(lambda: get(port, "/ready")[0] == 200, 30), "the worker was never ready"
    # When events arrive on both partitions
    producer = Producer_(pipe)
    now = int(time.time() * 1000)
    for p in range(2):
        visitor = next(f"v{p}-{i}" for i in range(1000) if wire.murmur2_partition(f"v{p}-{i}".encode(), 2) == p)
        producer.event(event_id=f"{visitor}-{uuid.uuid4().hex[:6]}", visitor_id=visitor, type_="page_view", ts=now,
                       path="/")
    # Then /ready answers 503, naming detection's partition 0 of engage.events, while /health still says alive
    def not_ready():
        status, body = get(port, "/ready")
        return json.loads(body) if status == 503 else None
    found = until(not_ready, 60)
    assert found, "/ready never noticed the stuck partition"
    assert any("detection has not moved on engage.events[0]" in r for r in found["reasons"]), found
    assert not any("[1]" in r for r in found["reasons"]), found
    assert get(port, "/health")[0] == 200
    # And the lag of that partition shows on /metrics
    text = get(port, "/metrics")[1].decode()
    assert sample(text, "engage_consumer_lag", stage="detection", topic="engage.events", partition="0") >= 1
