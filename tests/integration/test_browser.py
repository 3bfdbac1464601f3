"""A visitor in a real browser (Debian's Chromium, headless): the shop's tag sends the search, the offer appears in the page, accepting it reaches engage.outcomes."""
from __future__ import annotations

import json
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


def test_the_tag_sends_marked_clicks_cart_and_form_events_and_form_struggle_brings_help_into_the_page(
        new_pipeline, reader, browser, collector):
    # Given a worker, the collector serving the demo shop, and a visitor outside the help offer's control group
    from tests.integration.test_pipeline import customer_outside_control

    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    port = collector(pipe)
    events = reader(pipe, "engage.events", "Interaction")
    visitor = customer_outside_control("help-finder")
    page = browser.new_page()
    page.add_init_script(f"localStorage.setItem('engage_vid', '{visitor}')")
    try:
        # When they compare plans, add Fibre to the cart and go to the checkout
        page.goto(f"http://127.0.0.1:{port}/shop/plans.html")
        page.wait_for_function("window.engage !== undefined")
        page.click("#compare")
        page.click("#add-fibre")
        page.click("#to-checkout")
        page.wait_for_selector("#order")
        # And type their name, then try to order three times with a bad e-mail address
        page.fill("#name", "Sara Secret")
        page.click("#order")                    # no e-mail at all
        page.fill("#email", "not-an-email")
        page.click("#order")
        page.fill("#email", "still wrong")
        page.click("#order")
        # Then help is offered in the page (three form errors within two minutes: form_struggle)
        box = page.wait_for_selector("[data-engage-offer]", timeout=60_000)
        assert box.inner_text().startswith("Not finding what you need?")
        # And when they get the address right and order, Then every step reached engage.events as theirs
        page.fill("#email", "sara@example.com")
        page.click("#order")
        found = events.wait_for(lambda e: e["visitor_id"] == visitor and e["type"] == "form_submit", timeout_s=30)
        assert found
        mine = [e for e, _ in events.records if e["visitor_id"] == visitor]
        kinds = [e["type"] for e in mine]
        assert kinds.count("page_view") == 2 and kinds.count("form_error") == 3 and kinds.count("form_start") == 1
        click = next(e for e in mine if e["type"] == "click")
        assert click["attributes"] == {"name": "compare-plans"} and click["path"] == "/shop/plans.html"
        cart = next(e for e in mine if e["type"] == "add_to_cart")
        assert cart["value"] == 40.0
        assert {e["attributes"]["field"] for e in mine if e["type"] == "form_error"} == {"email"}
        assert all(e["attributes"].get("form") == "checkout" for e in mine if e["type"].startswith("form_"))
        # And nothing they typed left the page
        typed = ("Sara Secret", "not-an-email", "still wrong", "sara@example.com")
        assert not any(t in json.dumps(e) for e in mine for t in typed)
    finally:
        page.close()

def _rendered(page, selector: str) -> bool:
    """Is `selector`'s text drawn in a screenshot of the page? Its area is captured, then again with its text
    made transparent: the two images differ only if the text was drawn there, inside the viewport."""
    box = page.locator(selector).bounding_box()
    view = page.viewport_size
    if not box or box["width"] < 1 or box["height"] < 1 or box["y"] + box["height"] > view["height"]:
        return False
    clip = {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}
    shown = page.screenshot(clip=clip)
    page.locator(selector).evaluate("e => e.style.color = 'transparent'")
    try:
        hidden = page.screenshot(clip=clip)
    finally:
        page.locator(selector).evaluate("e => e.style.color = ''")
    return shown != hidden


def test_an_agent_sees_the_accepted_chat_with_its_reason_journey_and_value_on_the_desktop(new_pipeline, browser,
                                                                                          desktop):
    # Given the agent desktop, and a chat offer for a known customer whose journey crossed the web and a call,
    # with a name that carries markup
    from tests.integration.conftest import DESKTOP_TOKEN
    from tests.integration.test_adapters import _delivery, _put

    pipe = new_pipeline(partitions=2)
    port = desktop(pipe)
    now = int(time.time() * 1000)
    journey = ("2026-12-02 09:12 web search 'cancel my contract'\n"
               "2026-12-02 09:13 web_message offer save-offer-web on web_message\n"
               "2026-12-02 09:13 web_message outcome declined save-offer-web on web_message\n"
               "2026-12-02 09:40 voice call billing")
    offer = {**_delivery("chat", now), "skill": "retention", "action_id": "retention-chat",
             "reason": "Searched for how to cancel or leave: Invite to chat with a retention agent by chat "
                       "(expected incremental value 412.50).",
             "message": "Hi Sara, can we help?",
             "context": {"customer_name": "<b>Sara</b>", "clv": "3121.13", "segment": "platinum", "known": "yes",
                         "why": "Searched for how to cancel or leave", "evidence": "search 'cancel my contract'",
                         "journey": journey}}
    other = {**_delivery("email", now)}  # not an agent's: never on the desktop
    _put(pipe, offer, other)
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    try:
        # When an agent opens the desktop with a wrong token, Then nothing is shown but the refusal
        page.goto(f"http://127.0.0.1:{port}/desktop/#token=wrong")
        page.wait_for_selector("text=That token was refused.", timeout=15_000)
        assert page.query_selector("article.offer") is None
        # When the visitor accepts the chat in their page, and the agent opens the desktop with the token
        from confluent_kafka import Producer
        from streams.adapters.kit import outcome_for
        from tests.support import wire

        producer = Producer(pipe.client_conf)
        producer.produce(pipe.topic("engage.outcomes"), key=offer["key"].encode(),
                         value=wire.encode("Outcome", {**outcome_for(offer, "accepted", now + 5_000, "web")}))
        assert producer.flush(30) == 0
        page.goto(f"http://127.0.0.1:{port}/desktop/#token={DESKTOP_TOKEN}")
        card = page.wait_for_selector(f"article.offer.accepted[data-delivery-id='{offer['delivery_id']}']",
                                      timeout=30_000)
        # Then the offer is shown accepted, with its reason, the customer's value, the journey across channels
        # and the earlier offer with how it went; the markup in the name is text
        assert card.query_selector(".reason").inner_text() == offer["reason"]
        assert card.query_selector(".value").inner_text() == "clv 3121.13 · segment platinum"
        assert card.query_selector(".who").inner_text().startswith("<b>Sara</b>")
        assert [li.inner_text() for li in card.query_selector_all(".journey li")] == journey.split("\n")
        assert [li.inner_text() for li in card.query_selector_all(".before li")] == journey.split("\n")[1:3]
        assert len(page.query_selector_all("article.offer")) == 1  # the e-mail is no agent's
        # And the screenshot shows the reason and the journey (each drawn inside the captured page)
        page.screenshot(path=str(pipe.workdir / "desktop.png"), full_page=True)
        selector = f"article[data-delivery-id='{offer['delivery_id']}']"
        assert _rendered(page, f"{selector} .reason") and _rendered(page, f"{selector} .journey")
        # And the token is gone from the address bar
        assert "token" not in page.url
    finally:
        page.close()
