"""`engage profiles load` against a real broker and worker: a CRM export published whole, or not at all."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

from streams.settings import REPO_ROOT
from tests.integration.test_pipeline import customer_outside_control, now_ms

pytestmark = pytest.mark.integration


def engage(pipeline, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=pipeline.env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180)


def test_a_malformed_export_is_reported_line_by_line_and_nothing_of_it_is_published(pipeline, read, tmp_path):
    # Given an export whose second and fourth rows are wrong
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "crm.csv"
    path.write_text("customer_id,clv,timezone\n"
                    f"ok-{tag},10,UTC\n"
                    f"bad-{tag},-3,UTC\n"
                    f"ok2-{tag},11,UTC\n"
                    f"bad2-{tag},12,Atlantis/Capital\n")
    profiles = read("engage.profiles", "CustomerProfile")
    # When it is loaded
    run = engage(pipeline, "profiles", "load", str(path))
    # Then both bad lines are named with their reasons, the command fails, and no row reached the topic
    assert run.returncode == 1, run.stderr
    assert f"{path}:3: clv must be a finite number of at least 0, got -3" in run.stderr
    assert f"{path}:5: timezone 'Atlantis/Capital' is not an IANA time zone" in run.stderr
    assert "2 row(s)" in run.stderr and "nothing was published" in run.stderr
    assert "Traceback" not in run.stderr
    profiles.settle(3)
    assert [p for p, _ in profiles.records if p["customer_id"].endswith(tag)] == []


def test_a_loaded_export_joins_signals_and_a_deletion_in_a_later_file_removes_the_profile(pipeline, produce, read, tmp_path):
    # Given a JSON Lines export of two customers, loaded
    cid, other = customer_outside_control("retention-callback"), f"C-{uuid.uuid4().hex[:8]}"
    first = tmp_path / "crm.jsonl"
    first.write_text(json.dumps({"customer_id": cid, "clv": 4321.0, "segment": "gold", "marketing_consent": True,
                                 "attributes": {"plan": "fibre-1000"}}) + "\n"
                     + json.dumps({"customer_id": other, "clv": 5}) + "\n")
    run = engage(pipeline, "profiles", "load", str(first))
    assert run.returncode == 0, run.stderr
    assert "2 rows (0 deletions), 2 customers" in run.stdout
    pipeline.wait_caught_up("engage.profiles")
    pipeline.wait_caught_up("engage.profiles-by-customer")
    decisions = read("engage.decisions", "Decision")
    # When the customer searches to cancel
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="search", ts=now_ms(), customer_id=cid,
                  path="/help/search", query="cancel my contract")
    # Then the signal carries the loaded profile
    [(d, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid)
    assert d["known"] is True and d["context"]["clv"] == "4321.00" and d["context"]["segment"] == "gold"
    # When a later export deletes the customer
    second = tmp_path / "crm-deletions.csv"
    second.write_text(f"customer_id,_delete\n{cid},true\n")
    assert engage(pipeline, "profiles", "load", str(second)).returncode == 0
    pipeline.wait_caught_up("engage.profiles")
    pipeline.wait_caught_up("engage.profiles-by-customer")
    # Then their next signal (from another device) is enriched with no CRM data
    phone = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{phone}-1", visitor_id=phone, type_="search", ts=now_ms(), customer_id=cid,
                  path="/help/search", query="cancel my contract")
    later = decisions.wait_for(lambda d: d["customer_id"] == cid, count=2)
    assert len(later) == 2 and later[1][0]["known"] is False and "clv" not in later[1][0]["context"]


def test_a_customer_without_a_crm_value_gets_one_estimated_from_their_purchases(pipeline, produce, read):
    # Given a customer CRM knows nothing of, who logs in and buys for 100
    cid = customer_outside_control("retention-callback")
    visitor, t = f"V-{uuid.uuid4().hex[:8]}", now_ms()
    decisions = read("engage.decisions", "Decision")
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="login", ts=t, customer_id=cid, path="/login")
    produce.event(event_id=f"{visitor}-2", visitor_id=visitor, type_="purchase", ts=t + 1000, customer_id=cid,
                  path="/checkout/done", value=100.0)
    pipeline.wait_caught_up("engage.conversions")
    # When they search to cancel
    produce.event(event_id=f"{visitor}-3", visitor_id=visitor, type_="search", ts=t + 2000, customer_id=cid,
                  path="/help/search", query="cancel my contract")
    # Then the decision's context carries the estimate (rules/segments.yaml: 180-day half-life, 3 years)
    # and the segment of a first purchase this month
    [(d, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid)
    assert d["known"] is False and d["context"]["clv_source"] == "estimate"
    assert d["context"]["clv"] == "421.66" and d["context"]["value_segment"] == "new"
