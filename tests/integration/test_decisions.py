"""Decisions on a real broker with two workers: one pacer per skill, one contact ledger per customer, and a model and ledger that survive a kill."""
from __future__ import annotations

import uuid
import pytest

from streams.decision.policy import in_control_group, in_global_holdout
from streams.decision.uplift import merge
from tests.integration.conftest import Producer_, Reader
from tests.integration.test_pipeline import now_ms
from tests.support import wire
from tests.support.stage import SHIPPED_ACTIONS

pytestmark = pytest.mark.integration
POLICY = SHIPPED_ACTIONS.policy
MINUTE = 60_000


def customer_outside(*action_ids: str) -> str:
    while True:
        cid = f"C-{uuid.uuid4().hex[:10]}"
        if not in_global_holdout(cid, POLICY.holdout_share) and not any(
                in_control_group(cid, a, POLICY.control_share) for a in action_ids):
            return cid


def availability(skill: str, free: int, ts: int, total: int = 1) -> bytes:
    return wire.encode("AgentAvailability", {"skill": skill, "ts": ts, "agents_total": total, "agents_free": free,
                                             "queue_length": 0})


def password_reset(produce: Producer_, cid: str, ts: int) -> None:
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    produce.event(event_id=f"{visitor}-1", visitor_id=visitor, type_="page_view", ts=ts, customer_id=cid,
                  path="/account/password-reset")


def search_cancel(produce: Producer_, visitor: str, ts: int, customer_id: str | None = None) -> None:
    produce.event(event_id=f"{visitor}-{ts}", visitor_id=visitor, type_="search", ts=ts, customer_id=customer_id,
                  path="/help", query="how do I cancel my contract")


def test_two_workers_release_one_skills_offers_within_its_free_agents_and_the_rest_fall_back(new_pipeline):
    # Given two workers on 4 partitions, a hold of 5 s, and one free support agent (ratio 2 before any answer)
    pipe = new_pipeline(partitions=4)
    pipe.extra_env["ENGAGE_PACING_HOLD"] = "5s"
    pipe.start_worker(state_dir="state-a")
    pipe.start_worker(state_dir="state-b", members=2)
    produce, decisions = Producer_(pipe), Reader(pipe, "engage.decisions", "Decision")
    t = now_ms() - MINUTE
    produce.raw("engage.agent-availability", b"support", availability("support", 1, t))
    pipe.wait_caught_up("engage.agent-availability")  # the pacer knows the agents before the first offer
    # When 8 known customers (spread over the partitions, so over both workers) get locked out at once
    customers = [customer_outside("login-help") for _ in range(8)]
    for cid in customers:
        produce.profile(cid, clv=800.0)
    for i, cid in enumerate(customers):
        password_reset(produce, cid, t + 1000 + i * 100)
    # Then two chats are released at once, and the others wait
    decisions.wait_for(lambda d: d["customer_id"] in customers and d["channel"] == "chat", count=2)
    decisions.settle(3)
    assert len([d for d, _ in decisions.records if d["customer_id"] in customers]) == 2
    # When the contact centre's next heartbeat says still no one is free, after the hold
    produce.raw("engage.agent-availability", b"support", availability("support", 0, t + 10_000))
    # Then the six others fall back to the web message, which needs no agent, saying why
    decisions.wait_for(lambda d: d["customer_id"] in customers and d["channel"] == "web_message", count=6)
    decided = [d for d, _ in decisions.records if d["customer_id"] in customers]
    assert sorted(d["channel"] for d in decided) == ["chat"] * 2 + ["web_message"] * 6
    assert all(d["outcome"] == "act" for d in decided)
    assert all("No support agent was free in time" in d["reason"] for d in decided if d["channel"] == "web_message")
    assert len({d["decision_id"] for d in decided}) == 8


def test_the_daily_cap_and_the_gap_hold_across_channels_for_one_customer(new_pipeline):
    # Given two workers and a valuable customer where it is daytime
    pipe = new_pipeline(partitions=4)
    pipe.start_worker(state_dir="state-a")
    pipe.start_worker(state_dir="state-b", members=2)
    produce, decisions = Producer_(pipe), Reader(pipe, "engage.decisions", "Decision")
    cid = customer_outside("retention-callback", "vip-concierge")
    produce.profile(cid, clv=3000.0)
    t = now_ms() - 40 * MINUTE
    # When they search how to cancel (a call back), two minutes later browse premium products (a chat with an
    # adviser), then 11 and 22 minutes after the first, browse and search again (each once the last is decided:
    # their visitors' signals come from different partitions, so in no set order otherwise)
    def browse(ts: int) -> None:
        visitor = f"V-{uuid.uuid4().hex[:8]}"
        for i in range(2):
            produce.event(event_id=f"{visitor}-{i}", visitor_id=visitor, type_="page_view", ts=ts + i * 1000,
                          customer_id=cid, path=f"/shop/phones/x{i}", value=999.0)

    steps = (lambda: search_cancel(produce, f"V-{uuid.uuid4().hex[:8]}", t, cid), lambda: browse(t + 2 * MINUTE),
             lambda: browse(t + 11 * MINUTE), lambda: search_cancel(produce, f"V-{uuid.uuid4().hex[:8]}", t + 22 * MINUTE, cid))
    for n, step in enumerate(steps, start=1):
        step()
        decisions.wait_for(lambda d: d["customer_id"] == cid, count=n)
    ds = sorted((d for d, _ in decisions.records if d["customer_id"] == cid), key=lambda d: d["ts"])
    # Then: the call back; the chat 2 minutes later is too soon; the chat at 11 minutes is the second offer
    # of the day; the last is over the daily cap: one ledger across voice and chat
    assert [(d["outcome"], d["gate"], d["channel"]) for d in ds] == [
        ("act", None, "voice_callback"), ("suppressed", "min_gap", "chat"), ("act", None, "chat"),
        ("suppressed", "daily_cap", "voice_callback")]


def test_a_killed_worker_is_replaced_with_the_model_and_the_ledger_it_had(new_pipeline):
    # Given a worker with a 1 s attribution window, so decisions teach the model within minutes of event time
    pipe = new_pipeline(partitions=2)
    pipe.extra_env["ENGAGE_ATTRIBUTION_WINDOW"] = "1s"
    first = pipe.start_worker(state_dir="state-a")
    produce, decisions = Producer_(pipe), Reader(pipe, "engage.decisions", "Decision")
    models = Reader(pipe, "engage.models", "ModelEvidence")
    # And a customer who got two offers today, and 60 anonymous visitors over four minutes who wanted to leave
    cid = customer_outside("retention-chat")
    produce.profile(cid, clv=500.0)
    t = now_ms() - 25 * MINUTE
    search_cancel(produce, f"V-{uuid.uuid4().hex[:8]}", t, cid)
    search_cancel(produce, f"V-{uuid.uuid4().hex[:8]}", t + 11 * MINUTE, cid)
    for i in range(60):
        search_cancel(produce, f"anon-{i}-{uuid.uuid4().hex[:6]}", t + i * 4000)
    decisions.wait_for(lambda d: d["customer_id"] == cid and d["outcome"] == "act", count=2)
    models.wait_for(lambda m: m["labels"] > 0, timeout_s=90)
    decisions.wait_for(lambda d: d["visitor_id"].startswith("anon-"), count=60)
    models.settle(3)
    learned = merge({m["partition"]: m for m, _ in models.records})
    assert learned.labels > 0
    # When the worker is killed (no clean stop) and another starts with an empty state folder
    pipe.kill(first)
    pipe.start_worker(state_dir="state-b")
    # Then it decides with the model learned so far (or a later one) and the customer's ledger as it was
    search_cancel(produce, f"V-{uuid.uuid4().hex[:8]}", now_ms(), cid)
    search_cancel(produce, "anon-after", now_ms())
    [(after, _)] = decisions.wait_for(lambda d: d["visitor_id"] == "anon-after")
    assert after["model_version"] != "prior" and int(after["model_version"].split("-")[0]) >= learned.labels
    [(capped, _)] = decisions.wait_for(lambda d: d["customer_id"] == cid and d["gate"] == "daily_cap")
    assert capped["outcome"] == "suppressed"


def test_action_rules_published_live_switch_a_bad_version_is_refused_and_rollback_restores(new_pipeline):
    from confluent_kafka import Producer

    from streams.rules import registry
    from tests.unit.decision.test_actions_reload import BROKEN, SHIPPED, V2

    # Given a worker deciding with the shipped action rules, published as version 1
    pipe = new_pipeline(partitions=2)
    pipe.start_worker()
    produce, decisions = Producer_(pipe), Reader(pipe, "engage.decisions", "Decision")
    v1 = registry.publish(pipe.settings, "actions", SHIPPED, "rules/actions.yaml", author="test")

    def decide_anonymous() -> dict:
        visitor = f"anon-{uuid.uuid4().hex[:8]}"
        search_cancel(produce, visitor, now_ms())
        [(d, _)] = decisions.wait_for(lambda d: d["visitor_id"] == visitor)
        return d

    first = decide_anonymous()
    assert first["ruleset_version"].endswith("/" + v1["version"]) and first["action_id"] == "save-offer-web"
    # When version 2 (the web message worth ten times as much) is published, without a restart
    v2 = registry.publish(pipe.settings, "actions", V2, "rules/actions-v2.yaml", author="test")
    for _ in range(20):
        second = decide_anonymous()
        if second["ruleset_version"].endswith("/" + v2["version"]):
            break
    # Then decisions name it and score with it
    assert second["ruleset_version"].endswith("/" + v2["version"])
    assert second["context"]["message_template"] == "Before you go: three months at half price."
    # When a version that fails validation reaches the topic around the CLI (which refuses it)
    with pytest.raises(Exception, match="value"):
        registry.publish(pipe.settings, "actions", BROKEN, "rules/broken.yaml")
    raw = Producer({"bootstrap.servers": pipe.settings.bootstrap_servers, "partitioner": "murmur2_random"})
    raw.produce(pipe.topic("engage.rules"), key=b"actions", value=wire.encode("RuleSet", {
        "name": "actions", "kind": "actions", "version": "broken000000", "ts": now_ms(), "source": BROKEN, "author": "x"}))
    raw.flush(10)
    # Then the worker refuses it and version 2 keeps deciding
    for _ in range(20):
        if "refused actions rules version broken000000" in pipe.logs():
            break
        decide_anonymous()
    assert "refused actions rules version broken000000" in pipe.logs()
    assert decide_anonymous()["ruleset_version"].endswith("/" + v2["version"])
    # And a rollback brings version 1 back
    registry.rollback(pipe.settings, "actions", to_version=v1["version"][:6], author="test")
    for _ in range(20):
        back = decide_anonymous()
        if back["ruleset_version"].endswith("/" + v1["version"]):
            break
    assert back["ruleset_version"].endswith("/" + v1["version"])
    assert [p.record["version"] for p in registry.history(pipe.settings, "actions")] == [
        v1["version"], v2["version"], "broken000000", v1["version"]]
