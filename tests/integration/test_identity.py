"""Identity on a real broker: a CRM link makes an anonymous device's signals its customer's, and a tombstone undoes it."""
from __future__ import annotations

import uuid

import pytest

from tests.integration.test_pipeline import customer_outside_control, now_ms
from tests.support import wire

pytestmark = pytest.mark.integration


def test_a_crm_link_makes_an_app_installs_signals_the_customers_and_a_tombstone_unlinks_it(pipeline, produce, read):
    # Given a customer with a profile, and CRM's link of their app install, put by a producer on the
    # other partition than murmur2 gives (the engine re-keys it)
    cid = customer_outside_control("retention-callback")
    produce.profile(cid, clv=777.0)
    install = f"app-{uuid.uuid4().hex[:8]}"
    elsewhere = (wire.murmur2_partition(install.encode(), pipeline.settings.partitions) + 1) % pipeline.settings.partitions
    link = {"link_id": f"crm-{install}", "ts": now_ms(), "visitor_id": install, "customer_id": cid, "source": "crm"}
    produce.p.produce(pipeline.topic("engage.identity"), key=install.encode(), value=wire.encode("IdentityLink", link),
                      partition=elsewhere)
    assert produce.p.flush(30) == 0
    pipeline.wait_caught_up("engage.identity")
    pipeline.wait_caught_up("engage.identity-by-visitor")
    decisions = read("engage.decisions", "Decision")
    # When the app, anonymous (no customer_id on its events), searches to cancel
    produce.event(event_id=f"{install}-1", visitor_id=install, type_="search", ts=now_ms(),
                  path="/help/search", query="cancel my contract")
    # Then the signal is the customer's, keyed by them and joined with their profile
    [(d, meta)] = decisions.wait_for(lambda d: d["visitor_id"] == install)
    assert meta["key"] == cid.encode() and d["key"] == cid and d["customer_id"] == cid
    assert d["known"] is True and d["context"]["clv"] == "777.00"
    # When CRM unlinks the install (a tombstone: it was a shared tablet) and it searches to cancel again
    produce.raw("engage.identity", install.encode(), None)
    pipeline.wait_caught_up("engage.identity")
    pipeline.wait_caught_up("engage.identity-by-visitor")
    produce.event(event_id=f"{install}-2", visitor_id=install, type_="search", ts=now_ms(),
                  path="/help/search", query="how do I cancel")
    # Then that signal is anonymous again
    found = decisions.wait_for(lambda d: d["visitor_id"] == install, count=2)
    assert len(found) == 2
    anon, meta = found[1]
    assert anon["customer_id"] is None and anon["known"] is False and meta["key"] == install.encode()


def test_the_journey_follows_the_customer_from_anonymous_browsing_to_a_call_from_their_number(pipeline, produce, read):
    # Given a visitor who searches to cancel before logging in, then logs in as a customer
    cid = customer_outside_control("retention-callback")
    produce.profile(cid, clv=1500.0)
    browser, phone = f"V-{uuid.uuid4().hex[:8]}", f"tel:+3120{uuid.uuid4().int % 10**7:07d}"
    decisions = read("engage.decisions", "Decision")
    t = now_ms()
    produce.event(event_id=f"{browser}-1", visitor_id=browser, type_="search", ts=t, path="/help/search",
                  query="cancel my contract")
    decisions.wait_for(lambda d: d["visitor_id"] == browser)
    produce.event(event_id=f"{browser}-2", visitor_id=browser, type_="login", ts=t + 1000, customer_id=cid,
                  path="/login")
    produce.event(event_id=f"{browser}-3", visitor_id=browser, type_="search", ts=t + 2000, customer_id=cid,
                  path="/help/search", query="terminate contract early")
    decisions.wait_for(lambda d: d["customer_id"] == cid)
    # And CRM links their phone number, from which they then call
    link = {"link_id": f"crm-{phone}", "ts": now_ms(), "visitor_id": phone, "customer_id": cid, "source": "crm"}
    produce.raw("engage.identity", phone.encode(), wire.encode("IdentityLink", link))
    pipeline.wait_caught_up("engage.identity-by-visitor")
    produce.event(event_id=f"{phone}-1", visitor_id=phone, type_="call", ts=t + 3000, path="/ivr/cancellations")
    pipeline.wait_caught_up("engage.conversions")
    pipeline.wait_caught_up("engage.journey-moves")
    # When the customer searches to cancel once more
    produce.event(event_id=f"{browser}-4", visitor_id=browser, type_="search", ts=t + 4000, customer_id=cid,
                  path="/help/search", query="cancel now")
    # Then the decision's context shows the agent the journey across devices and channels: the search
    # before the login, the search after it, and the call from the linked number
    found = decisions.wait_for(lambda d: d["customer_id"] == cid, count=2)
    journey = found[-1][0]["context"]["journey"]
    assert "search 'cancel my contract'" in journey and "search 'terminate contract early'" in journey
    assert "call /ivr/cancellations" in journey


def test_failed_logins_on_two_devices_of_one_customer_count_together(pipeline, produce, read):
    # Given a customer who has logged in on their phone app and on their laptop before
    cid = customer_outside_control("login-help")
    produce.profile(cid, clv=1500.0)
    phone, laptop = f"app-{uuid.uuid4().hex[:8]}", f"V-{uuid.uuid4().hex[:8]}"
    t = now_ms()
    for device in (phone, laptop):
        produce.event(event_id=f"{device}-in", visitor_id=device, type_="login", ts=t - 60_000, customer_id=cid,
                      path="/account/login")
    decisions = read("engage.decisions", "Decision")
    # When they fail to log in twice on the phone and once on the laptop, within minutes (signed out: no customer_id)
    for n, (device, at) in enumerate(((phone, t), (phone, t + 30_000), (laptop, t + 90_000))):
        produce.event(event_id=f"{device}-lf{n}", visitor_id=device, type_="login_failed", ts=at, path="/account/login")
    # Then the customer rule raises one login_trouble signal for the customer, with the three failures as
    # evidence, and the decision stage decides on it under the customer's key
    [(d, meta)] = decisions.wait_for(lambda d: d["signal_id"].startswith("customer:failed-logins-across-devices:"))
    assert meta["key"] == cid.encode() and d["customer_id"] == cid and d["signal"] == "login_trouble"
    assert d["rules_fired"] == ["failed-logins-across-devices"]
    # (the phone's two failures also raised detection's own login-trouble signal, on that device)
    assert decisions.wait_for(lambda d: d["customer_id"] == cid and d["rules_fired"] == ["login-trouble"])
