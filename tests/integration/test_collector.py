"""The browser-event collector on the real broker: a page's search reaches detection and raises its signal."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.integration.conftest import COLLECTOR_ORIGIN as ORIGIN

pytestmark = pytest.mark.integration


def _post(port: int, body: dict, origin: str = ORIGIN) -> tuple[int, dict]:
    return _post_to(port, "/events", body, origin)


def test_a_search_a_page_sends_reaches_detection_and_raises_the_cancel_signal(new_pipeline, reader, collector):
    # Given a worker, and the collector for the shop's pages in a process of its own
    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    port = collector(pipe)
    signals = reader(pipe, "engage.signals", "Signal")
    events = reader(pipe, "engage.events", "Interaction")
    visitor = f"V-web-{uuid.uuid4().hex[:8]}"
    # When the page sends a page view and a search for how to cancel
    body = {"events": [{"event_id": f"{visitor}-1", "visitor_id": visitor, "type": "page_view", "path": "/help"},
                       {"event_id": f"{visitor}-2", "visitor_id": visitor, "type": "search", "path": "/help/search",
                        "query": "cancel my contract"}]}
    assert _post(port, body) == (202, {"accepted": 2})
    # And another site's page tries the same
    assert _post(port, body, origin="https://evil.example")[0] == 403
    # Then both events are on engage.events as web interactions of no customer, once
    found = events.wait_for(lambda e: e["visitor_id"] == visitor, count=2, timeout_s=30)
    assert sorted(e["type"] for e, _ in found) == ["page_view", "search"]
    assert {(e["channel"], e["customer_id"]) for e, _ in found} == {("web", None)}
    # And detection raised the visitor's cancel intent from the search
    [(sig, _)] = signals.wait_for(lambda s: s["visitor_id"] == visitor, timeout_s=60)
    assert sig["signal"] == "cancel_intent" and sig["evidence"][-1]["query"] == "cancel my contract"


class Page:
    """A page's EventSource, read in a thread: the offers pushed to it."""

    def __init__(self, port: int, visitor: str):
        self.offers: list[dict] = []
        req = urllib.request.Request(f"http://127.0.0.1:{port}/messages?visitor_id={visitor}", headers={"Origin": ORIGIN})
        self.resp = urllib.request.urlopen(req, timeout=120)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            for line in self.resp:
                if line.startswith(b"data: "):
                    self.offers.append(json.loads(line[len(b"data: "):]))
        except (OSError, ValueError, AttributeError):  # closed under the reader (http.client drops its file)
            pass

    def wait_offer(self, timeout_s: float) -> dict | None:
        deadline = time.monotonic() + timeout_s
        while not self.offers and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.offers[0] if self.offers else None

    def close(self):
        self.resp.close()


def test_a_visitor_searching_to_cancel_sees_the_offer_in_the_page_and_accepting_it_reaches_the_outcomes(new_pipeline,
                                                                                                       reader, collector):
    # Given a worker, the collector with its web adapter, and an anonymous visitor's page open on the shop
    from tests.integration.test_pipeline import customer_outside_control

    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    port = collector(pipe)
    outcomes = reader(pipe, "engage.outcomes", "Outcome")
    visitor = customer_outside_control("save-offer-web")  # an id outside the offer's control group
    page = Page(port, visitor)
    try:
        # When the page sends a search for how to cancel
        search = {"event_id": f"{visitor}-1", "visitor_id": visitor, "type": "search", "path": "/help/search",
                  "query": "cancel my contract"}
        assert _post(port, search) == (202, {"accepted": 1})
        # Then the page is shown the offer for anonymous visitors, pushed to it
        offer = page.wait_offer(60)
        assert offer is not None, (pipe.workdir / "collector.log").read_text()[-3000:]
        assert (offer["channel"], offer["action_id"]) == ("web_message", "save-offer-web")
        assert offer["message"].startswith("Thinking of leaving?") and "reason" not in offer
        # And when the visitor accepts it, the acceptance reaches engage.outcomes, from the web, for that decision
        report = {"delivery_id": offer["delivery_id"], "visitor_id": visitor, "type": "accepted"}
        assert _post_to(port, "/outcomes", report) == (202, {"accepted": 1})
        [(outcome, _)] = outcomes.wait_for(lambda o: o["delivery_id"] == offer["delivery_id"], timeout_s=30)
        assert (outcome["type"], outcome["source"], outcome["key"]) == ("accepted", "web", visitor)
        # And another visitor cannot answer it
        assert _post_to(port, "/outcomes", {**report, "visitor_id": "someone-else"})[0] == 404
    finally:
        page.close()


def _post_to(port: int, path: str, body: dict, origin: str = ORIGIN) -> tuple[int, dict]:
    """(status, JSON answer) of a POST to the collector."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Origin": origin})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
