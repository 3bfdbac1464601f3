"""The browser-event collector over a fake producer: typed and bounded events, allowed origins, rates, 202 only once the broker has them."""
from __future__ import annotations

import asyncio
import json
import threading

import pytest

from streams.settings import Settings
from streams.web import collector as c
from tests.support import wire

ORIGIN = "https://shop.example"


class Producer:
    """Acks what it was given at its next poll (the collector's poller thread), or fails it when told."""

    def __init__(self, fail: bool = False):
        self.fail, self.sent, self.queue, self.lock = fail, [], [], threading.Lock()

    def produce(self, topic, key=None, value=None, on_delivery=None):
        with self.lock:
            self.queue.append((topic, key, value, on_delivery))

    def poll(self, timeout):
        with self.lock:
            queue, self.queue = self.queue, []
        for topic, key, value, cb in queue:
            if not self.fail:
                self.sent.append((topic, key, value))
            cb("broker down" if self.fail else None, None)
        threading.Event().wait(0.005)
        return 0

    def flush(self, timeout=None):
        return 0


def _post(collector, body, origin=ORIGIN, method="POST", remote="10.0.0.1"):
    """(status, JSON answer, headers) of one request to the collector's app."""
    from aiohttp.test_utils import TestClient, TestServer

    async def go():
        async with TestClient(TestServer(c.app(collector))) as client:
            headers = {"Content-Type": "application/json", "X-Forwarded-For": remote}
            if origin:
                headers["Origin"] = origin
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            resp = await client.request(method, "/events", data=data, headers=headers)
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None), dict(resp.headers)

    return asyncio.run(go())


@pytest.fixture
def collector(tmp_path):
    made = []

    def make(fail: bool = False, clock=None):
        kw = {"clock": clock} if clock else {}
        col = c.Collector(Settings(data_dir=tmp_path, collector_origins=(ORIGIN,)), producer=Producer(fail), **kw)
        made.append(col)
        return col

    yield make
    for col in made:
        col.close()


def _event(i: int = 1, **over) -> dict:
    return {"event_id": f"e{i}", "visitor_id": "v-1", "type": "search", "path": "/help", "query": "cancel", **over}


def test_a_pages_events_are_stored_as_web_interactions_keyed_by_visitor_and_answered_202(collector):
    # Given a collector for the shop's origin
    col = collector()
    # When the shop's page sends two events, one claiming to be customer C1, with a date of its own
    status, answer, headers = _post(col, {"events": [_event(1), _event(2, type="page_view", path="/plans")]})
    # Then both are accepted (202) once the broker has them, with the CORS header for the shop
    assert (status, answer) == (202, {"accepted": 2}) and headers["Access-Control-Allow-Origin"] == ORIGIN
    # And each went to engage.events keyed by the visitor, as a web Interaction with no customer, dated on arrival
    [(topic, key, value), _] = col.producer.sent
    event = wire.decode("Interaction", value)
    assert topic == "engage.events" and key == b"v-1"
    assert (event["event_id"], event["channel"], event["customer_id"], event["query"]) == ("e1", "web", None, "cancel")
    assert abs(event["ts"] - __import__("time").time() * 1000) < 60_000


@pytest.mark.parametrize("body, status, reason", [
    (b"{not json", 400, "not JSON"),
    (b"x" * (c.MAX_BODY_BYTES + 1), 413, "at most"),
    ({"events": []}, 400, "list of 1 to 50"),
    ({"events": [_event(i) for i in range(51)]}, 400, "list of 1 to 50"),
    (_event(customer_id="C1"), 400, "unknown field 'customer_id'"),
    (_event(ts=1), 400, "unknown field 'ts'"),
    (_event(type="Search<script>"), 400, "type is lower-case letters"),
    (_event(event_id=7), 400, "event_id must be a string"),
    (_event(visitor_id="v\n1"), 400, "visitor_id must not hold control characters"),
    (_event(visitor_id="v" * 129), 400, "visitor_id must be a string of 1 to 128"),
    (_event(value="12"), 400, "value must be a finite number"),
    (_event(value=True), 400, "value must be a finite number"),
    (b'{"event_id": "e1", "visitor_id": "v", "type": "search", "value": NaN}', 400, "finite number"),
    (_event(attributes={"a": 1}), 400, "attribute names"),
    (_event(attributes={f"k{i}": "v" for i in range(17)}), 400, "at most 16"),
    ({"events": [_event(1), _event(2, query=["x"])]}, 400, "event 1: query must be a string"),
])
def test_hostile_or_malformed_bodies_are_refused_and_nothing_is_stored(collector, body, status, reason):
    col = collector()
    got, answer, _ = _post(col, body)
    assert got == status and reason in answer["error"]
    assert col.producer.sent == []


def test_script_in_a_field_is_kept_as_text(collector):
    col = collector()
    status, _, _ = _post(col, _event(query="<script>alert(1)</script>"))
    assert status == 202 and wire.decode("Interaction", col.producer.sent[0][2])["query"] == "<script>alert(1)</script>"


def test_another_origin_is_refused_and_its_preflight_gets_no_allowance(collector):
    col = collector()
    status, answer, headers = _post(col, _event(), origin="https://evil.example")
    assert status == 403 and "origin" in answer["error"] and "Access-Control-Allow-Origin" not in headers
    status, _, headers = _post(col, b"", origin="https://evil.example", method="OPTIONS")
    assert status == 403 and "Access-Control-Allow-Origin" not in headers
    status, _, headers = _post(col, b"", method="OPTIONS")
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert col.producer.sent == []


def test_a_flood_from_one_visitor_is_refused_beyond_its_rate(collector):
    # Given a stopped clock: no token comes back during the test
    col = collector(clock=lambda: 0.0)
    burst = int(2 * c.VISITOR_RATE)
    # When one visitor sends one event more than its burst, one request at a time
    statuses = [_post(col, _event(i))[0] for i in range(burst + 1)]
    # Then the burst is accepted and the one beyond it refused with 429
    assert statuses == [202] * burst + [429]
    assert len(col.producer.sent) == burst


def test_events_the_broker_does_not_take_are_answered_503_to_be_sent_again(collector):
    col = collector(fail=True)
    status, answer, _ = _post(col, _event())
    assert status == 503 and "send them again" in answer["error"]


def test_the_collector_counts_its_answers_by_path_and_status_on_metrics(collector):
    # Given a collector, When a page sends an event and a body too large
    from aiohttp.test_utils import TestClient, TestServer

    col = collector()

    async def go():
        async with TestClient(TestServer(c.app(col))) as client:
            await client.post("/events", json=_event(901), headers={"Origin": ORIGIN})
            await client.post("/events", data=b"x" * (c.MAX_BODY_BYTES + 1), headers={"Origin": ORIGIN})
            resp = await client.get("/metrics")
            return resp.status, await resp.text()

    status, text = asyncio.run(go())
    # Then /metrics counts one 202 and one 413 on /events
    assert status == 200
    assert 'engage_collector_requests_total{path="/events",status="202"}' in text
    assert 'engage_collector_requests_total{path="/events",status="413"}' in text
