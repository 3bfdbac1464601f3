"""Replay and shadow over a running pipeline: known journeys give a known diff, and a shadow's decisions never reach engage.delivery."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from confluent_kafka.admin import AdminClient

from streams.delivery.render import delivery_id
from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.rules import compile_detection
from streams.settings import REPO_ROOT
from tests.integration.conftest import Reader
from tests.integration.journeys import stream_of_journeys

pytestmark = pytest.mark.integration

LIVE_RULES = (REPO_ROOT / "rules" / "detection.yaml").read_text()
# The candidate: no signal for failed logins any more, and a roaming search counts as a wish to leave.
CANDIDATE_RULES = LIVE_RULES.replace("  - id: login-trouble\n", "  - id: login-trouble-off\n").replace(
    "      count: {event: login_failed, at_least: 2, within: 5m}", "      count: {event: login_failed, at_least: 9, within: 5m}"
) + """
  - id: roaming-leaver
    description: Searched for roaming (a candidate rule)
    when:
      event: search
      where: 'query ~ "\\\\broaming\\\\b"'
    signal: cancel_intent
    priority: 85
"""


def implied(events: list[dict], text: str) -> list[dict]:
    rules = compile_detection(text, "candidate.yaml")
    detector = Detector(lambda: rules)
    tx = Tx({}, {})
    return [s for ev in events for s in detector.on_event(tx, 0, ev).signals] + detector.on_tick(tx, 0, 86_400_000)


def engage(pipe, *args: str, env: dict | None = None, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env={**pipe.env, **(env or {})}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


def decided(pipe, signals: list[dict], timeout_s: float = 90) -> list[dict]:
    """The live pipeline's decisions, once every implied signal has one and it has committed them all."""
    decisions = Reader(pipe, "engage.decisions", "Decision")
    try:
        wanted = {s["signal_id"] for s in signals}
        decisions.wait_for(lambda d: False, timeout_s=0.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not wanted <= {d["signal_id"] for d, _ in decisions.records}:
            decisions.wait_for(lambda d: False, timeout_s=1)
        pipe.wait_caught_up("engage.decisions")
        return [d for d, _ in decisions.records]
    finally:
        decisions.close()


def test_replay_of_known_journeys_gives_the_known_diff(new_pipeline, tmp_path):
    # Given a live pipeline that has decided on 40 visitors' journeys (failed logins, then a search:
    # "cancel my plan", "roaming" or "terminate")
    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    stream = stream_of_journeys(pipe, seed=11, n_visitors=40)
    stream.produce.events(stream.events)
    live = decided(pipe, stream.signals)
    window = ["--from", _iso(stream.events[0]["ts"] - 1000), "--to", _iso(stream.events[-1]["ts"] + 1000)]
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE_RULES)

    # When the same window is replayed with the live rules
    same = engage(pipe, "replay", *window, "--json", env={"ENGAGE_EXPLORE": "off"})
    # Then it finds and decides exactly what the live pipeline did
    assert same.returncode == 0, same.stderr[-3000:]
    report = json.loads(same.stdout)
    assert report["signals"] == {"live": len(stream.signals), "candidate": len(stream.signals), "added": 0, "removed": 0}
    assert report["decisions"]["same"] == len({d["decision_id"] for d in live}) and report["decisions"]["flipped"] == 0
    assert report["value"]["net"] == 0
    assert "100%" in same.stderr, "a progress line should reach the end"

    # When it is replayed with the candidate rules
    out = tmp_path / "diff.json"
    run = engage(pipe, "replay", *window, "--rules", str(candidate), "--out", str(out), env={"ENGAGE_EXPLORE": "off"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())
    # Then the signals added and removed per rule are those the two rule sets imply for these journeys
    before, after = implied(stream.events, LIVE_RULES), implied(stream.events, CANDIDATE_RULES)
    rules = {r["rule_id"]: r for r in report["rules"]}
    removed = [s for s in before if s["rule_id"] == "login-trouble"]
    added = [s for s in after if s["rule_id"] == "roaming-leaver"]
    assert removed and added, "the journeys should exercise both changes"
    assert (rules["login-trouble"]["removed"], rules["login-trouble"]["candidate"]) == (len(removed), 0)
    assert (rules["roaming-leaver"]["added"], rules["roaming-leaver"]["live"]) == (len(added), 0)
    assert rules["cancel-intent"]["added"] == rules["cancel-intent"]["removed"] == 0
    # And the decisions on removed signals are gone, those on added ones new, and any flip is a visitor's
    # other decision whose contact history the change altered
    live_by_signal = {d["signal_id"]: d for d in live}
    assert report["decisions"]["removed"] == len({s["signal_id"] for s in removed} & set(live_by_signal))
    assert report["decisions"]["added"] == len(added)
    touched = {s["visitor_id"] for s in removed + added}
    for ex in report["examples"]["flipped"]:
        assert ex["visitor_id"] in touched
    assert report["value"]["net"] == pytest.approx(report["value"]["gained"] - report["value"]["lost"], abs=1e-3)
    assert "login-trouble" in run.stdout and "expected incremental value" in run.stdout

    # When a candidate file has a mistake
    bad = tmp_path / "bad.yaml"
    bad.write_text(CANDIDATE_RULES.replace("    signal: cancel_intent\n    priority: 85", "    signal: cancel_intent\n    priority: high"))
    refused = engage(pipe, "replay", *window, "--rules", str(bad))
    # Then it is refused in one line naming the file, the line and the reason, before anything runs
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"engage: {bad}:93: rule 'roaming-leaver': priority must be a whole number from 0 to 100, got 'high'")
    # And the replay left nothing behind
    names = AdminClient(pipe.client_conf).list_topics(timeout=10).topics
    assert not [t for t in names if ".replay-" in t or "-replay-" in t]


def _iso(ms: int) -> str:
    from streams.replay.diff import iso

    return iso(ms)


def test_shadow_rules_decide_on_live_traffic_and_never_reach_delivery(new_pipeline, tmp_path):
    import dataclasses
    import os
    import signal

    from streams.replay.run import shadow_settings

    # Given a live pipeline, and a shadow running the candidate rules beside it
    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(CANDIDATE_RULES)
    env = {**pipe.env, "ENGAGE_DATA_DIR": str(pipe.workdir / "state")}
    log = open(pipe.workdir / "shadow.log", "ab")
    shadow = subprocess.Popen([sys.executable, "-m", "streams.cli", "replay", "--shadow", "--rules", str(candidate)],
                              env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    shadow_pipe = dataclasses.replace(pipe, settings=shadow_settings(pipe.settings), workers=[], http_ports=[])
    try:
        shadow_pipe.wait_until_assigned(shadow)
        # When live traffic comes: 40 visitors' journeys
        stream = stream_of_journeys(pipe, seed=12, n_visitors=40)
        stream.produce.events(stream.events)
        live = {d["decision_id"]: d for d in decided(pipe, stream.signals)}
        expected = implied(stream.events, CANDIDATE_RULES)
        theirs = {d["decision_id"]: d for d in decided(shadow_pipe, expected)}
        # Then the shadow decided on what the candidate rules find in it, under its own topics
        assert {d["signal_id"] for d in theirs.values()} == {s["signal_id"] for s in expected}
        only_shadow = {i for i, d in theirs.items() if i not in live and d["outcome"] == "act"}
        assert only_shadow, "the candidate rule should make offers the live rules do not"
        shadow_deliveries = Reader(shadow_pipe, "engage.delivery", "Delivery")
        shadow_deliveries.wait_for(lambda d: d["decision_id"] in only_shadow, count=len(only_shadow), timeout_s=60)
        shadow_deliveries.close()
        # And none of its decisions reaches engage.delivery, where the adapters read: only the live ones do
        deliveries = Reader(pipe, "engage.delivery", "Delivery")
        deliveries.settle(3)
        delivered = {d["delivery_id"] for d, _ in deliveries.records}
        deliveries.close()
        assert not delivered & {delivery_id(i) for i in only_shadow}
        assert delivered == {delivery_id(i) for i, d in live.items() if d["outcome"] == "act"}

        # When the diff is asked for on demand
        window = ["--from", _iso(stream.events[0]["ts"] - 1000), "--to", _iso(stream.events[-1]["ts"] + 1000)]
        got = engage(pipe, "replay", "--shadow", "--diff", *window, "--json", env=env)
        # Then it says what the candidate rules would change
        assert got.returncode == 0, got.stderr[-3000:]
        report = json.loads(got.stdout)
        rules = {r["rule_id"]: r for r in report["rules"]}
        assert rules["roaming-leaver"]["added"] == len([s for s in expected if s["rule_id"] == "roaming-leaver"])
        assert rules["login-trouble"]["removed"] == len([s for s in stream.signals if s["rule_id"] == "login-trouble"])
    finally:
        if shadow.poll() is None:
            os.killpg(shadow.pid, signal.SIGTERM)
            shadow.wait(60)
    # When the shadow is cleaned up, its topics go and the live ones stay
    cleaned = engage(pipe, "replay", "--shadow", "--clean", env=env)
    assert cleaned.returncode == 0, cleaned.stderr[-3000:]
    names = AdminClient(pipe.client_conf).list_topics(timeout=10).topics
    assert not [t for t in names if t.startswith(shadow_pipe.settings.topic_prefix)]
    assert pipe.topic("engage.events") in names and pipe.topic("engage.delivery") in names
