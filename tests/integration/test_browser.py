"""A visitor in a real browser (Debian's Chromium, headless): the shop's tag sends the search, the offer appears in the page, accepting it reaches engage.outcomes."""
from __future__ import annotations

import time

import pytest


pytestmark = pytest.mark.integration
CHROMIUM = "/usr/bin/chromium"
# headless, as root, on a machine with no way out: no background traffic to Google's hosts
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield b
        finally:
            b.close()


def test_a_visitor_searching_to_cancel_sees_the_invitation_accepts_it_and_the_outcome_is_recorded(new_pipeline, reader,
                                                                                                   browser, collector):
    # Given a worker, the collector serving the demo shop with the tag, and a visitor whose (random) id is
    # outside the offer's control group
    from tests.integration.test_pipeline import customer_outside_control

    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    port = collector(pipe)
    outcomes = reader(pipe, "engage.outcomes", "Outcome")
    events = reader(pipe, "engage.events", "Interaction")
    visitor = customer_outside_control("save-offer-web")  # as the tag's id, as if the browser had drawn it
    page = browser.new_page()
    page.add_init_script(f"localStorage.setItem('engage_vid', '{visitor}')")
    try:
        page.goto(f"http://127.0.0.1:{port}/shop/help.html")
        # When the visitor searches the help pages for how to cancel
        page.fill("#q", "cancel my contract")
        page.click("#go")
        # Then the page view and the search reach engage.events from the tag, as this visitor's
        found = events.wait_for(lambda e: e["visitor_id"] == visitor, count=2, timeout_s=30)
        assert {e["type"] for e, _ in found} >= {"page_view", "search"}
        # And the offer for visitors thinking of leaving appears in the page, as text
        box = page.wait_for_selector("[data-engage-offer]", timeout=60_000)
        assert box.inner_text().startswith("Thinking of leaving?")
        page.screenshot(path=str(pipe.workdir / "offer.png"))
        # And when the visitor accepts it, the box goes and shown then accepted reach engage.outcomes
        page.click("[data-engage-answer=accepted]")
        page.wait_for_selector("[data-engage-offer]", state="detached", timeout=10_000)
        got = outcomes.wait_for(lambda o: o["visitor_id"] == visitor, count=2, timeout_s=30)
        assert sorted((o["type"], o["source"]) for o, _ in got) == [("accepted", "web"), ("shown", "web")]
        # And a message carrying markup (a template fed a hostile name) is shown as text and runs nothing
        from tests.integration.test_adapters import _delivery, _put

        hostile = {**_delivery("web_message", int(time.time() * 1000)), "key": visitor, "visitor_id": visitor,
                   "customer_id": None, "message": '<img src=x onerror="window.pwned=1">Hi <b>there</b>'}
        _put(pipe, hostile)
        box = page.wait_for_selector(f"[data-engage-offer='{hostile['delivery_id']}']", timeout=30_000)
        assert box.inner_text().startswith('<img src=x onerror="window.pwned=1">Hi <b>there</b>')
        assert page.evaluate("window.pwned") is None and page.query_selector("[data-engage-offer] img") is None
    finally:
        page.close()
