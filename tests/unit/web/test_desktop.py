"""The agent desktop: what an agent sees of an offer, its state from the outcomes, and the token in front of it."""
from __future__ import annotations

import asyncio
import json

from streams.delivery.render import to_delivery
from streams.settings import Settings
from streams.web import desktop
from tests.support.stage import T0, decision

JOURNEY = ("2023-11-14 21:50 web search 'cancel my contract'\n"
           "2023-11-14 21:51 web_message offer save-offer on web_message\n"
           "2023-11-14 21:51 web_message outcome declined save-offer on web_message\n"
           "2023-11-14 22:10 voice call billing")


def delivery(signal_id: str = "s1", ts: int = T0, **context) -> dict:
    d = decision(signal_id, ts=ts, channel="chat")
    d["context"].update({"why": "Searched for how to cancel or leave", "evidence": "search 'cancel'", "known": "yes",
                         "clv": "3121.13", "segment": "platinum", "journey": JOURNEY, **context})
    return to_delivery(d)


def test_an_offer_shows_its_reason_value_journey_and_what_was_offered_before():
    # Given a chat offer for a known customer with a journey across web, offers and a call
    card = desktop.card_of(delivery())
    # Then the agent sees why, the customer's value, every step, and the earlier offer with how it went
    assert card["reason"].startswith("Searched for how to cancel or leave")
    assert card["value"] == {"clv": "3121.13", "segment": "platinum"} and card["customer_name"] == "Sara"
    assert card["journey"] == JOURNEY.split("\n")
    assert card["offered_before"] == JOURNEY.split("\n")[1:3]


def test_an_offers_state_moves_forward_with_its_outcomes_even_those_that_came_first():
    # Given a board, an outcome that arrives before its offer, and one after
    now = [T0 / 1000]
    board = desktop.Board(clock=lambda: now[0])
    first, second = delivery("s1"), delivery("s2", ts=T0 + 1000)
    board.note({"type": "accepted", "delivery_id": first["delivery_id"]})
    board.add(first)
    board.add(second)
    board.note({"type": "shown", "delivery_id": second["delivery_id"]})
    # Then the accepted offer comes first, and a late `shown` never takes an acceptance back
    board.note({"type": "shown", "delivery_id": first["delivery_id"]})
    assert [(o["delivery_id"], o["state"]) for o in board.offers()] == [
        (first["delivery_id"], "accepted"), (second["delivery_id"], "shown")]
    # And once its moment has passed, an offer no one answered shows as expired, last
    now[0] = (T0 + 3_600_000) / 1000
    assert [o["state"] for o in board.offers()] == ["accepted", "expired"]


def test_the_board_keeps_at_most_its_bound_of_offers(monkeypatch):
    monkeypatch.setattr(desktop, "MAX_CARDS", 3)
    board = desktop.Board(clock=lambda: T0 / 1000)
    for i in range(5):
        board.add(delivery(f"s{i}", ts=T0 + i))
    assert len(board.offers()) == 3 and board.offers()[0]["ts"] == T0 + 4


def test_the_adapter_takes_only_the_channels_an_agent_takes_up_and_reports_nothing_itself():
    board = desktop.Board(clock=lambda: T0 / 1000)
    adapter = desktop.DesktopAdapter(board)
    assert adapter.channels == frozenset({"chat", "voice_callback", "click_to_call"})
    assert adapter.deliver(delivery()) == [] and len(board.offers()) == 1


def _get(board, path, token=None, settings=None):
    from aiohttp.test_utils import TestClient, TestServer

    settings = settings or Settings(desktop_token="s3cret")

    async def go():
        async with TestClient(TestServer(desktop.app(settings, board))) as client:
            headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
            resp = await client.get(path, headers=headers)
            return resp.status, await resp.read(), dict(resp.headers)

    return asyncio.run(go())


def test_offers_are_given_only_for_the_token_and_the_page_allows_no_script_but_its_own():
    board = desktop.Board(clock=lambda: T0 / 1000)
    board.add(delivery())
    # Given no token, a wrong one, and the right one
    assert _get(board, "/desktop/offers")[0] == 401
    assert _get(board, "/desktop/offers", token="guess")[0] == 401
    status, body, headers = _get(board, "/desktop/offers", token="s3cret")
    assert status == 200 and json.loads(body)["offers"][0]["reason"].startswith("Searched")
    assert headers["Cache-Control"] == "no-store"
    # And a desktop with no token configured gives offers to no one
    assert _get(board, "/desktop/offers", token="", settings=Settings(desktop_token=""))[0] == 401
    # And the page holds no data, and no inline script may run in it
    status, body, headers = _get(board, "/desktop/")
    assert status == 200 and b"Sara" not in body and b"<script>" not in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    # And the page's script writes text, never HTML
    script = _get(board, "/desktop/desktop.js")[1].decode()
    assert "innerHTML" not in script and "textContent" in script
