"""The context service on real workers: an agent taking a call sees the web journey of seconds ago, from any worker."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote

import pytest

from tests.integration.conftest import CONTEXT_TOKEN
from tests.integration.test_pipeline import customer_outside_control, now_ms
from tests.support import wire

pytestmark = pytest.mark.integration


def get(port: int, path: str, token: str | None = CONTEXT_TOKEN) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def until(fn, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def browse_then_call(pipeline, produce, decisions) -> tuple[str, str]:
    """A known customer searches to cancel on the web; CRM links their phone number. (customer, number)"""
    cid = customer_outside_control("retention-callback")
    produce.profile(cid, clv=2100.0, display_name="Ada")
    browser, phone = f"V-{uuid.uuid4().hex[:8]}", f"tel:+3120{uuid.uuid4().int % 10**7:07d}"
    t = now_ms()
    produce.event(event_id=f"{browser}-1", visitor_id=browser, type_="login", ts=t, customer_id=cid, path="/login")
    produce.event(event_id=f"{browser}-2", visitor_id=browser, type_="search", ts=t + 1000, customer_id=cid,
                  path="/help/search", query="cancel my contract")
    link = {"link_id": f"crm-{phone}", "ts": t, "visitor_id": phone, "customer_id": cid, "source": "crm"}
    produce.raw("engage.identity", phone.encode(), wire.encode("IdentityLink", link))
    decisions.wait_for(lambda d: d["customer_id"] == cid)
    pipeline.wait_caught_up("engage.identity-by-visitor")
    return cid, phone


def test_an_agent_taking_a_call_sees_the_web_journey_of_seconds_ago(pipeline, produce, read):
    # Given a customer who searched to cancel on the web, and whose phone number CRM links to them
    decisions = read("engage.decisions", "Decision")
    cid, phone = browse_then_call(pipeline, produce, decisions)
    port = pipeline.http_ports[0]
    # When their call comes in and the agent's desktop asks for the caller's context
    status, body = until(lambda: (lambda r: r if r[0] == 200 and r[1].get("customer")
                                  and r[1]["customer"]["journey"] else None)(
        get(port, f"/visitors/{quote(phone, safe='')}/context")))
    # Then it names the customer, their value and segment, and the web journey with the offer made
    assert status == 200 and body["customer_id"] == cid and body["linked_by"] == "crm"
    customer = body["customer"]
    assert customer["profile"]["display_name"] == "Ada" and customer["value"]["clv"] == 2100.0
    assert customer["value"]["segment"] == "high-value" and customer["value"]["clv_source"] == "crm"
    kinds = [(s["kind"], s["text"]) for s in customer["journey"]]
    assert ("search", "'cancel my contract'") in kinds and any(k == "signal" for k, _ in kinds)
    assert until(lambda: any(s["kind"] == "offer" for s in get(port, f"/customers/{cid}/context")[1]["journey"]))
    # And without the token, or with a wrong one, nothing is told; a hostile id is refused
    assert get(port, f"/customers/{cid}/context", token=None)[0] == 401
    assert get(port, f"/customers/{cid}/context", token="guess")[0] == 401
    assert get(port, f"/customers/{'x' * 300}/context")[0] == 400


def test_any_worker_answers_for_a_key_the_other_one_holds(new_pipeline, read):
    # Given two workers sharing 4 partitions, and customers whose keys land on both
    from tests.integration.conftest import Producer_

    pipe = new_pipeline(partitions=4)
    pipe.start_worker(state_dir="state-a")
    pipe.start_worker(state_dir="state-b", members=2)
    produce = Producer_(pipe)
    decisions = read("engage.decisions", "Decision", on=pipe)
    by_partition: dict[int, str] = {}
    while len(by_partition) < 4:  # one customer on each partition: each worker holds some of them
        cid = customer_outside_control("retention-callback")
        by_partition.setdefault(wire.murmur2_partition(cid.encode(), 4), cid)
    customers = list(by_partition.values())
    for cid in customers:
        produce.profile(cid, clv=900.0)
        visitor = f"V-{uuid.uuid4().hex[:8]}"
        produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=now_ms(), customer_id=cid,
                      path="/help/search", query="cancel my contract")
    for cid in customers:
        decisions.wait_for(lambda d, cid=cid: d["customer_id"] == cid)
    # When each customer's context is asked of each worker
    for cid in customers:
        answers = [until(lambda port=port: (lambda r: r if r[0] == 200 and r[1]["journey"] else None)(
            get(port, f"/customers/{cid}/context"))) for port in pipe.http_ports]
        # Then both answer, with the same customer, profile and journey (one of them from the other's tables)
        assert all(a and a[0] == 200 for a in answers), answers
        (_, a), (_, b) = answers
        assert a["customer_id"] == b["customer_id"] == cid and a["profile"] == b["profile"]
        assert a["journey"] == b["journey"] and any(s["kind"] == "signal" for s in a["journey"])
