"""The browser-event collector on the real broker: a page's search reaches detection and raises its signal."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from streams.settings import REPO_ROOT
from tests.integration.conftest import _free_ports

pytestmark = pytest.mark.integration
ORIGIN = "https://shop.example"


def _post(port: int, body: dict, origin: str = ORIGIN) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/events", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Origin": origin})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except urllib.error.URLError:
        return 0, {}


def test_a_search_a_page_sends_reaches_detection_and_raises_the_cancel_signal(new_pipeline, reader):
    # Given a worker, and the collector for the shop's pages in a process of its own
    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    port = _free_ports(1)
    log = open(pipe.workdir / "collector.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "collector"], cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**pipe.env, "ENGAGE_COLLECTOR_PORT": str(port), "ENGAGE_COLLECTOR_ORIGINS": ORIGIN})
    signals = reader(pipe, "engage.signals", "Signal")
    events = reader(pipe, "engage.events", "Interaction")
    visitor = f"V-web-{uuid.uuid4().hex[:8]}"
    try:
        # When the page sends a page view and a search for how to cancel (asking again while it starts)
        body = {"events": [{"event_id": f"{visitor}-1", "visitor_id": visitor, "type": "page_view", "path": "/help"},
                           {"event_id": f"{visitor}-2", "visitor_id": visitor, "type": "search", "path": "/help/search",
                            "query": "cancel my contract"}]}
        deadline, status = time.monotonic() + 30, 0
        while status != 202 and time.monotonic() < deadline:
            status, answer = _post(port, body)
            time.sleep(0.3 if status != 202 else 0)
        assert (status, answer) == (202, {"accepted": 2}), (pipe.workdir / "collector.log").read_text()
        # And another site's page tries the same
        assert _post(port, body, origin="https://evil.example")[0] == 403
        # Then both events are on engage.events as web interactions of no customer, once
        found = events.wait_for(lambda e: e["visitor_id"] == visitor, count=2, timeout_s=30)
        assert sorted(e["type"] for e, _ in found) == ["page_view", "search"]
        assert {(e["channel"], e["customer_id"]) for e, _ in found} == {("web", None)}
        # And detection raised the visitor's cancel intent from the search
        [(sig, _)] = signals.wait_for(lambda s: s["visitor_id"] == visitor, timeout_s=60)
        assert sig["signal"] == "cancel_intent" and sig["evidence"][-1]["query"] == "cancel my contract"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
