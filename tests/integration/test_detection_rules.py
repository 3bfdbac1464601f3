"""Detection on a real broker: hot reload of published rule sets, replay giving identical signals, backtest."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Producer

from streams.rules import registry
from streams.settings import REPO_ROOT
from tests.integration.conftest import Producer_, Reader
from tests.support import wire

pytestmark = pytest.mark.integration

DEFAULT = (REPO_ROOT / "rules" / "detection.yaml").read_text()
CANCEL_WHERE = next(line.split("where: ", 1)[1] for line in DEFAULT.splitlines() if "query ~" in line)
# v2: cancel-intent is gone, refund-intent is new, login-trouble is unchanged (its state must survive)
V2 = DEFAULT.replace("id: cancel-intent", "id: refund-intent").replace(
    CANCEL_WHERE, """'query ~ "refund"'""").replace(
    "signal: cancel_intent", "signal: refund_intent")
BROKEN = DEFAULT.replace("'query ~ ", "'query.__class__ or query ~ ", 1)


def now_ms() -> int:
    return int(time.time() * 1000)


class Visitors:
    def __init__(self, produce: Producer_):
        self.produce = produce

    def search(self, query: str, visitor: str | None = None) -> str:
        visitor = visitor or f"V-{uuid.uuid4().hex[:8]}"
        self.produce.event(event_id=f"{visitor}-{uuid.uuid4().hex[:6]}", visitor_id=visitor, type_="search", ts=now_ms(),
                           path="/help/search", query=query)
        return visitor

    def failed_login(self, visitor: str) -> None:
        self.produce.event(event_id=f"{visitor}-{uuid.uuid4().hex[:6]}", visitor_id=visitor, type_="login_failed",
                           ts=now_ms(), path="/account/login")


def wait_for_rule(visitors: Visitors, signals: Reader, query: str, rule_id: str, timeout_s: float = 60) -> dict:
    """Send a matching search every second until the worker runs a version with `rule_id`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = visitors.search(query)
        found = signals.wait_for(lambda s: s["visitor_id"] == v and s["rule_id"] == rule_id, timeout_s=1.5)
        if found:
            return found[0][0]
    raise AssertionError(f"the worker never ran {rule_id}")


def test_published_versions_switch_live_a_bad_one_is_refused_and_rollback_restores(pipeline, produce, read):
    visitors, signals = Visitors(produce), read("engage.signals", "Signal")
    settings = pipeline.settings
    # Given version 1 (the default file) is published and a visitor is halfway through login-trouble
    v1 = registry.publish(settings, "detection", DEFAULT, "rules/detection.yaml", author="test")
    first = wait_for_rule(visitors, signals, "cancel my plan", "cancel-intent")
    assert first["ruleset_version"] == v1["version"]
    halfway = f"V-{uuid.uuid4().hex[:8]}"
    visitors.failed_login(halfway)
    # When version 2 is published, without restarting the worker
    v2 = registry.publish(settings, "detection", V2, "rules/detection-v2.yaml", author="test")
    refund = wait_for_rule(visitors, signals, "I want a refund", "refund-intent")
    # Then signals record the new version, the removed rule is silent, and the unchanged rule kept its state
    assert refund["ruleset_version"] == v2["version"] != v1["version"]
    quiet = visitors.search("cancel my plan")
    visitors.search("refund please", visitor=quiet)  # processed after the cancel search: same visitor, same partition
    assert signals.wait_for(lambda s: s["visitor_id"] == quiet and s["rule_id"] == "refund-intent")
    assert not [s for s, _ in signals.records if s["visitor_id"] == quiet and s["rule_id"] == "cancel-intent"]
    visitors.failed_login(halfway)
    [(trouble, _)] = signals.wait_for(lambda s: s["visitor_id"] == halfway and s["rule_id"] == "login-trouble")
    assert len(trouble["evidence"]) == 2 and trouble["ruleset_version"] == v2["version"]

    # When a version that fails validation reaches the topic (written around the CLI, which refuses it)
    with pytest.raises(Exception, match="where:"):
        registry.publish(settings, "detection", BROKEN, "rules/broken.yaml")
    raw = Producer({"bootstrap.servers": settings.bootstrap_servers, "partitioner": "murmur2_random"})
    raw.produce(pipeline.topic("engage.rules"), key=b"detection", value=wire.encode("RuleSet", {
        "name": "detection", "kind": "detection", "version": "broken000000", "ts": now_ms(), "source": BROKEN, "author": "x"}))
    raw.flush(10)
    time.sleep(2)
    # Then the worker refuses it and version 2 keeps firing
    still = wait_for_rule(visitors, signals, "refund now", "refund-intent")
    assert still["ruleset_version"] == v2["version"]
    assert "refused detection rules version broken000000" in pipeline.logs()

    # When the operator rolls back (to the version before the current valid one: v1)
    registry.rollback(settings, "detection", to_version=v1["version"][:6], author="test")
    back = wait_for_rule(visitors, signals, "cancel my plan", "cancel-intent")
    # Then version 1 runs again and the history shows every step
    assert back["ruleset_version"] == v1["version"]
    history = [p.record for p in registry.history(settings, "detection")]
    assert [r["version"] for r in history] == [v1["version"], v2["version"], "broken000000", v1["version"]]
    assert "rollback from" in history[-1]["author"]


def journeys(n: int, t0: int) -> list[dict]:
    """Visitors who hesitate on pricing, stall at checkout, search to cancel, fail to log in."""
    events = []
    for i in range(n):
        v = f"V-{uuid.uuid4().hex[:6]}-{i}"
        steps = [("page_view", "/pricing", None, None), ("add_to_cart", "/shop/tv", None, 120.0),
                 ("checkout_start", "/checkout", None, None), ("search", "/help/search", "cancel order", None),
                 ("login_failed", "/account/login", None, None), ("login_failed", "/account/login", None, None)]
        if i % 3 == 0:
            steps.append(("purchase", "/checkout/done", None, 120.0))
        for j, (type_, path, query, value) in enumerate(steps):
            # visitors interleave; a visitor stays 70 s on pricing (dwell) and buys, if at all, 140 s after checkout
            at = (0, 70, 110, 150, 190, 230, 250)[j] * 1000
            events.append(wire.interaction(event_id=f"{v}-{j}", visitor_id=v, type_=type_, ts=t0 + at + i * 700,
                                           path=path, query=query, value=value))
    events.sort(key=lambda e: e["ts"])
    return events


def test_replaying_the_same_events_gives_identical_signals_and_the_backtest_agrees(new_pipeline):
    # Given the same events on two isolated deployments
    t0 = now_ms() - 30 * 60_000
    events = journeys(30, t0)
    live, replay = new_pipeline(partitions=2), new_pipeline(partitions=2)
    # When the first worker processes them as they arrive ...
    live.start_worker()
    for pipe in (live, replay):
        p = Producer_(pipe)
        for ev in events:
            p.p.produce(pipe.topic("engage.events"), key=ev["visitor_id"].encode(), value=wire.encode("Interaction", ev))
            p.p.poll(0)
        p.p.flush(10)
        p.advance_clocks(t0 + 20 * 60_000)  # every partition's clock passes the last deadlines by event time
    # ... and the second only after all are stored (a replay from the beginning)
    replay.start_worker()
    out = {}
    for name, pipe in (("live", live), ("replay", replay)):
        reader = Reader(pipe, "engage.signals", "Signal")
        reader.wait_for(lambda s: s["rule_id"] == "cart-stall", count=20, timeout_s=60)  # idle ticks fire the last ones
        reader.settle(4)
        out[name] = [s for s, _ in reader.records]
        reader.close()
    # Then both found the same signals, byte for byte, in the same order for every visitor
    def per_visitor(signals):
        grouped: dict[str, list] = {}
        for s in signals:
            grouped.setdefault(s["visitor_id"], []).append(s)
        return grouped
    assert len(out["live"]) == 30 * 3 + 20  # pricing, cancel and login trouble for all; cart stall for 20
    assert per_visitor(out["live"]) == per_visitor(out["replay"])
    assert {s["rule_id"] for s in out["live"]} >= {"cancel-intent", "login-trouble", "cart-stall", "pricing-hesitation"}
    stalls = {s["visitor_id"] for s in out["live"] if s["rule_id"] == "cart-stall"}
    assert len(stalls) == 20, "the 10 visitors who bought must not be flagged"

    # And a backtest of the same rules over the stored range reports the same counts, touching nothing live
    env = {**replay.env}
    run = subprocess.run([sys.executable, "-m", "streams.cli", "rules", "backtest",
                          "--from", time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t0 / 1000 - 60)), "--json"],
                         env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    fires = {r["rule_id"]: r["fires"] for r in report["rules"]}
    expected: dict[str, int] = {}
    for s in out["replay"]:
        expected[s["rule_id"]] = expected.get(s["rule_id"], 0) + 1
    assert {k: v for k, v in fires.items() if v} == expected
    assert report["events"] == len(events) + 2 and report["visitors"] == 30 + 2  # with the two clock events
    again = Reader(replay, "engage.signals", "Signal")
    again.settle(3)
    assert len(again.records) == len(out["replay"]), "the backtest must not write signals"
    again.close()


def test_an_idle_partition_fires_a_dwell_by_the_wall_clock(pipeline, produce, read):
    # Given a rule set whose dwell is 2 seconds, published to the running worker
    signals = read("engage.signals", "Signal")
    text = DEFAULT.replace("at_least: 60s", "at_least: 2s")
    rules = registry.publish(pipeline.settings, "detection", text, "rules/fast-dwell.yaml", author="test")
    wait_for_rule(Visitors(produce), signals, "cancel my plan", "cancel-intent")
    # When a visitor opens the pricing page and then nothing at all happens on the site
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="page_view", ts=now_ms(), path="/pricing")
    # Then the dwell still fires: the idle partition's clock moves on with the wall clock
    # (2 s dwell + 5 s allowed lateness + up to 2 s before the partition counts as idle)
    found = signals.wait_for(lambda s: s["visitor_id"] == visitor and s["rule_id"] == "pricing-hesitation", timeout_s=40)
    assert found and found[0][0]["ruleset_version"] == rules["version"]
