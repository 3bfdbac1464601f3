"""In-page offers over the collector's fake producer: pushed to the visitor's open pages only, failed when they have none, answered back once per kind."""
from __future__ import annotations

import asyncio
import json

import pytest

from streams.adapters import kit
from streams.settings import Settings
from streams.web import collector as c
from streams.web import messages
from tests.support import wire
from tests.unit.adapters.test_kit import delivery
from tests.unit.web.test_collector import ORIGIN, Producer


async def _next_offer(resp) -> dict:
    """The next `offer` event of an SSE response."""
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode()
        if line.startswith("data: "):
            return json.loads(line[len("data: "):])


def _scenario(tmp_path, body):
    """Run `body(client, collector)` against the collector's app on a test server."""
    from aiohttp.test_utils import TestClient, TestServer

    col = c.Collector(Settings(data_dir=tmp_path, collector_origins=(ORIGIN,)), producer=Producer())

    async def go():
        async with TestClient(TestServer(c.app(col))) as client:
            return await body(client, col)

    try:
        return asyncio.run(go())
    finally:
        col.close()


def _deliver(col, d: dict):
    """The web adapter's deliver, from a thread of its own as the adapter runs."""
    adapter = messages.WebAdapter(col.pages, frozenset({"web_message", "chat"}))
    return asyncio.get_running_loop().run_in_executor(None, adapter.deliver, d)


def _outcomes(col) -> list[dict]:
    return [wire.decode("Outcome", v) for t, _, v in col.producer.sent if t == "engage.outcomes"]


def test_an_offer_reaches_the_visitors_open_page_which_reports_it_shown_and_accepted(tmp_path):
    async def body(client, col):
        # Given visitor v1 with a page open on the shop
        resp = await client.get("/messages?visitor_id=v1", headers={"Origin": ORIGIN})
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        # When an in-page offer for v1 is delivered
        d = delivery(1, channel="web_message", visitor_id="v1", customer_id=None, key="v1",
                     message="Thinking of leaving? <b>Plans</b> from 5 a month.")
        assert await _deliver(col, d) == []  # the page says whether it was shown
        # Then the page gets the offer: what to show and answer, not the reason or the context for agents
        offer = await _next_offer(resp)
        assert offer == {"delivery_id": "dl-1", "channel": "web_message", "action_id": "retention-mail",
                         "message": "Thinking of leaving? <b>Plans</b> from 5 a month.", "expires_at": d["expires_at"]}
        # And when the page reports it shown, then accepted (and accepted again), each goes out once
        for kind in ("shown", "accepted", "accepted"):
            r = await client.post("/outcomes", json={"delivery_id": "dl-1", "visitor_id": "v1", "type": kind},
                                  headers={"Origin": ORIGIN})
            assert r.status == 202
        resp.close()
        return [(o["delivery_id"], o["type"], o["source"], o["key"], o["decision_id"]) for o in _outcomes(col)]

    assert _scenario(tmp_path, body) == [("dl-1", "shown", "web", "v1", "dc-1"), ("dl-1", "accepted", "web", "v1", "dc-1")]


def test_a_visitor_with_no_page_open_is_gone_and_nobody_else_gets_their_offer(tmp_path):
    async def body(client, col):
        # Given only visitor v2 has a page open
        resp = await client.get("/messages?visitor_id=v2", headers={"Origin": ORIGIN})
        # When an offer for v1 is delivered, then v1 is gone (reported failed by the kit), and v2's page gets nothing
        with pytest.raises(kit.Gone):
            await _deliver(col, delivery(1, channel="web_message", visitor_id="v1", key="v1"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_next_offer(resp), 0.5)
        resp.close()

    _scenario(tmp_path, body)


@pytest.mark.parametrize("report, status", [
    ({"delivery_id": "dl-9", "visitor_id": "v1", "type": "accepted"}, 404),  # never pushed
    ({"delivery_id": "dl-1", "visitor_id": "v2", "type": "accepted"}, 404),  # pushed to another visitor
    ({"delivery_id": "dl-1", "visitor_id": "v1", "type": "purchased"}, 400),
    ({"delivery_id": "dl-1", "visitor_id": "v1", "type": "accepted", "value": 100}, 400),
    ("not an object", 400),
])
def test_an_outcome_for_an_offer_not_shown_to_that_visitor_or_malformed_is_refused(tmp_path, report, status):
    async def body(client, col):
        resp = await client.get("/messages?visitor_id=v1", headers={"Origin": ORIGIN})
        await _deliver(col, delivery(1, channel="web_message", visitor_id="v1", key="v1"))
        await _next_offer(resp)
        r = await client.post("/outcomes", json=report, headers={"Origin": ORIGIN})
        resp.close()
        return r.status, _outcomes(col)

    assert _scenario(tmp_path, body) == (status, [])


def test_pages_per_visitor_and_origins_are_bounded(tmp_path):
    async def body(client, col):
        opened = [await client.get("/messages?visitor_id=v1", headers={"Origin": ORIGIN})
                  for _ in range(messages.STREAMS_PER_VISITOR)]
        assert {r.status for r in opened} == {200}
        beyond = await client.get("/messages?visitor_id=v1", headers={"Origin": ORIGIN})
        elsewhere = await client.get("/messages?visitor_id=v3", headers={"Origin": "https://evil.example"})
        bad_id = await client.get("/messages?visitor_id=", headers={"Origin": ORIGIN})
        for r in opened:
            r.close()
        return beyond.status, elsewhere.status, bad_id.status

    assert _scenario(tmp_path, body) == (429, 403, 400)
