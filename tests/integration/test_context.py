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
    status, body, _ = get_answered(port, path, token)
    return status, body


def get_answered(port: int, path: str, token: str | None = CONTEXT_TOKEN) -> tuple[int, dict, str]:
    """(status, JSON body, the worker whose tables answered)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("X-Engage-Answered-By", "")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}"), ""
    except urllib.error.URLError:  # not listening yet (a worker starting): no answer, asked again by `until`
        return 0, {}, ""


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
    assert get(port, "/customers/C1%0A%1B%5B31m/context")[0] == 400  # control characters, percent-encoded
    assert get(port, "/visitors/%00/context")[0] == 400
    # And a client flooding the service is held back (20 a second, bursts of 40), the others not
    flood = [get(port, f"/customers/{cid}/context", token="guess")[0] for _ in range(60)]
    assert 429 in flood and set(flood) <= {401, 429}


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
    owners = set()
    for cid in customers:
        answers = [until(lambda port=port: (lambda r: r if r[0] == 200 and r[1]["journey"] and r[1]["contacts"]
                                            else None)(get_answered(port, f"/customers/{cid}/context")))
                   for port in pipe.http_ports]
        # Then both answer, with the same customer, profile and journey, from the tables of the same worker:
        # the one holding the key answered itself, the other passed the request on to it
        assert all(a and a[0] == 200 for a in answers), answers
        (_, a, by_a), (_, b, by_b) = answers
        assert by_a == by_b != "" and a["customer_id"] == b["customer_id"] == cid and a["profile"] == b["profile"]
        assert a["journey"] == b["journey"] and any(s["kind"] == "signal" for s in a["journey"])
        # and the same offers so far, read where the decision stage's own group holds the customer: that
        # worker alone answers for its ledger, and with counts only, not the decisions it keeps
        assert a["contacts"] == b["contacts"] and "offers_today" in a["contacts"], (a, b)
        ledgers = [get_answered(port, f"/customers/{cid}/contacts") for port in pipe.http_ports]
        assert sorted(status for status, _, _ in ledgers) == [200, 503], ledgers
        assert [body["contacts"] for status, body, _ in ledgers if status == 200] == [a["contacts"]]
        owners.add(by_a)
    # And each worker held some of the customers (one per partition)
    assert len(owners) == 2


def test_forget_removes_the_customer_everywhere_stops_offers_and_a_restart_brings_nothing_back(new_pipeline, read):
    import subprocess
    import sys

    from streams.settings import REPO_ROOT
    from tests.integration.conftest import Producer_

    # Given a customer with a profile, a linked phone, a journey and an offer, on a worker of their own
    pipe = new_pipeline(partitions=2)
    worker = pipe.start_worker()
    produce = Producer_(pipe)
    decisions, audit = read("engage.decisions", "Decision", on=pipe), read("engage.audit", "AuditRecord", on=pipe)
    cid, phone = browse_then_call(pipe, produce, decisions)
    kept, _ = browse_then_call(pipe, produce, decisions)  # another customer, not forgotten
    port = pipe.http_ports[0]
    assert until(lambda: get(port, f"/customers/{cid}/context")[1].get("journey"))
    # When the customer is forgotten
    run = subprocess.run([sys.executable, "-m", "streams.cli", "forget", cid, "--by", "dpo", "--reason", "ticket 7"],
                         env=pipe.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "1 identity link(s) deleted" in run.stdout
    # Then every stage records what it deleted
    found = audit.wait_for(lambda r: r["customer_id"] == cid, count=4)
    assert {r["stage"] for r, _ in found} == {"cli", "data", "decision", "attribution"}
    # And nothing is known of them any more, by id or by their phone number
    def forgotten(p: int) -> bool:
        _, body = get(p, f"/customers/{cid}/context")
        _, by_phone = get(p, f"/visitors/{quote(phone, safe='')}/context")
        return body == {"customer_id": cid, "forgotten": True} and by_phone.get("customer_id") is None
    assert until(lambda: forgotten(port))
    # And a new search to cancel gets no decision
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=now_ms(), customer_id=cid,
                  path="/help/search", query="cancel my contract")
    decisions.settle(8)
    assert len([d for d, _ in decisions.records if d["customer_id"] == cid]) == 1  # only the one before
    # When the worker is replaced by one with an empty folder, which restores every table from the changelogs
    pipe.kill(worker)
    pipe.start_worker(state_dir="state-empty")
    # Then the other customer's state is back (the tables were restored), and nothing of the forgotten one
    new_port = pipe.http_ports[-1]
    assert until(lambda: (lambda b: b.get("profile") and b.get("journey"))(get(new_port, f"/customers/{kept}/context")[1]),
                 timeout_s=60)
    assert forgotten(new_port)


def test_a_duplicate_merged_by_crm_brings_its_journey_and_offers_and_its_later_signals_follow(pipeline, produce, read):
    import subprocess
    import sys

    from streams.settings import REPO_ROOT

    # Given a customer who searched to cancel on the web and got an offer, and the customer CRM finds
    # they duplicate (nothing of theirs on this channel yet)
    decisions, audit = read("engage.decisions", "Decision"), read("engage.audit", "AuditRecord")
    dup, _ = browse_then_call(pipeline, produce, decisions)
    [(offer, _)] = decisions.wait_for(lambda d: d["customer_id"] == dup)
    assert offer["outcome"] == "act"
    keep = customer_outside_control("retention-callback")
    produce.profile(keep, clv=2100.0, display_name="Ada")
    pipeline.wait_caught_up("engage.profiles-by-customer")
    port = pipeline.http_ports[0]
    # When CRM merges the duplicate into the customer
    run = subprocess.run([sys.executable, "-m", "streams.cli", "merge", dup, keep, "--by", "crm-dedupe", "--reason",
                          "same e-mail"], env=pipeline.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    # Then the command and the data stage record it
    found = audit.wait_for(lambda r: r["customer_id"] == dup and r["action"] == "merge", count=2)
    assert {r["stage"] for r, _ in found} == {"cli", "data"}
    # And the duplicate's context points to the customer, whose context now holds the web journey and the offer
    assert until(lambda: get(port, f"/customers/{dup}/context")[1] == {"customer_id": dup, "merged_into": keep})

    def merged_in():
        body = get(port, f"/customers/{keep}/context")[1]
        texts = [s["text"] for s in body.get("journey", [])]
        return body if "'cancel my contract'" in texts and (body.get("contacts") or {}).get("offers_today") == 1 else None
    body = until(merged_in)
    assert body and any(s["kind"] == "offer" for s in body["journey"])
    # When the duplicate's browser searches to cancel again, still logged in under the old id
    browser = offer["visitor_id"]
    produce.event(event_id=f"{browser}-9", visitor_id=browser, type_="search", ts=now_ms(), customer_id=dup,
                  path="/help/search", query="how do I cancel")
    # Then the decision is the customer's, and their caps count the duplicate's offer of a moment ago
    [(d, meta)] = decisions.wait_for(lambda d: d["signal"] == "cancel_intent" and d["customer_id"] == keep)
    assert meta["key"] == keep.encode() and d["known"] is True
    assert d["outcome"] == "suppressed" and d["gate"] == "min_gap", d["reason"]
