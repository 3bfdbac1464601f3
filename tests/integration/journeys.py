"""Visitors' journeys for the broker tests that stop, add and kill workers, and what the rules imply for them."""
from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass

import pytest

from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.rules import load_detection
from streams.settings import REPO_ROOT
from tests.integration.conftest import Producer_
from tests.support import wire


def journey_events(rng: random.Random, n_visitors: int, t0: int) -> list[dict]:
    """Interleaved visitors, each with failed logins and a cancel search, in event-time order."""
    per_visitor = []
    for v in range(n_visitors):
        vid = f"V-{uuid.uuid4().hex[:6]}-{v}"
        steps = [("page_view", "/", None), ("login_failed", "/account/login", None),
                 ("page_view", "/pricing", None), ("login_failed", "/account/login", None),
                 ("search", "/help/search", rng.choice(["cancel my plan", "roaming", "terminate"]))]
        per_visitor.append([(vid, s) for s in steps])
    events, t = [], t0
    while any(per_visitor):
        queue = rng.choice([q for q in per_visitor if q])
        vid, (type_, path, query) = queue.pop(0)
        t += rng.randint(50, 2000)
        events.append(wire.interaction(event_id=f"{vid}-{t}", visitor_id=vid, type_=type_, ts=t, path=path, query=query))
    return events


@dataclass
class Stream:
    """Journeys to produce to a pipeline, the signals the rules imply for them, and the producer."""

    events: list[dict]
    signals: list[dict]
    produce: Producer_


def stream_of_journeys(pipe, seed: int, n_visitors: int) -> Stream:
    """`n_visitors` seeded journeys that began ten minutes ago, to produce to `pipe`."""
    events = journey_events(random.Random(seed), n_visitors, int(time.time() * 1000) - 600_000)
    return Stream(events, implied_signals(events), Producer_(pipe))


def implied_signals(events: list[dict]) -> list[dict]:
    """What the pure engine implies: the same Detector over dictionaries, its clock run to the end."""
    rules = load_detection(REPO_ROOT / "rules" / "detection.yaml")
    detector = Detector(lambda: rules)
    tx = Tx({}, {})
    signals = [s for ev in events for s in detector.on_event(tx, 0, ev).signals]
    return signals + detector.on_tick(tx, 0, 86_400_000)


def _wait_for_decisions(decisions, expected: set[str], timeout_s: float = 120) -> None:
    """Read until every expected signal id has a decision (a raw count would stop early: at-least-once
    repeats some decisions after a worker dies), then a little longer, to see nothing else comes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not expected <= {d["signal_id"] for d, _ in decisions.records}:
        decisions.wait_for(lambda d: False, timeout_s=1)
    decisions.settle(3)


def _assert_all_decided(pipe, signals: list[dict], decisions) -> None:
    """Every implied signal has a decision and no other signal has: else say where each lost one stopped."""
    expected = {s["signal_id"] for s in signals}
    seen = {d["signal_id"] for d, _ in decisions.records}
    if seen == expected:
        return
    names = {s["signal_id"]: (s["rule_id"], s["visitor_id"], s["ts"]) for s in signals}
    got = {d["signal_id"]: (d["signal"], d["visitor_id"], d["signal_ts"]) for d, _ in decisions.records}
    lost = {f"signal {names[i]}": i for i in expected - seen}
    lost |= {f"its event {names[i][1]}-{names[i][2]}": f"{names[i][1]}-{names[i][2]}" for i in expected - seen}
    where = pipe.trace(lost, ["engage.events", "engage.signals", "engage.signals-by-customer", "engage.enriched",
                              "engage.decisions", "engage.deadletter"])
    pytest.fail(f"missing {sorted(names[i] for i in expected - seen)}, "
                f"unexpected {sorted(got[i] for i in seen - expected)}\n{where}\n{pipe.logs()[-4000:]}")


def assert_every_signal_decided_once(pipe, signals: list[dict]) -> None:
    """Every signal the rules imply is decided and none is invented; a decision repeated by at-least-once
    delivery is the same decision; every decision to act is delivered and every decision attributed, under
    its own ids; and the workers have committed every event and decision (no partition stuck)."""
    from tests.integration.conftest import Reader

    decisions = Reader(pipe, "engage.decisions", "Decision")
    try:
        _wait_for_decisions(decisions, {s["signal_id"] for s in signals})
        _assert_all_decided(pipe, signals, decisions)
        by_id: dict[str, dict] = {}
        for d, _ in decisions.records:
            assert by_id.setdefault(d["decision_id"], d) == d
        pipe.wait_caught_up("engage.events")
    finally:
        decisions.close()
    assert_decisions_followed_up(pipe, by_id)


def assert_decisions_followed_up(pipe, decisions: dict[str, dict]) -> None:
    """Each decision to act has its delivery (a repeat is the same delivery) and no other decision has one;
    each decision has an attribution; and the after-decision runner committed every decision."""
    from streams.delivery.render import delivery_id
    from tests.integration.conftest import Reader

    acts = {delivery_id(i) for i, d in decisions.items() if d["outcome"] == "act"}
    deliveries, attributions = Reader(pipe, "engage.delivery", "Delivery"), Reader(pipe, "engage.attributions", "Attribution")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (acts <= {d["delivery_id"] for d, _ in deliveries.records}
                                                     and set(decisions) <= {a["decision_id"] for a, _ in attributions.records}):
            deliveries.wait_for(lambda d: False, timeout_s=1)
            attributions.wait_for(lambda a: False, timeout_s=1)
        deliveries.settle(2)
        by_id: dict[str, dict] = {}
        for d, _ in deliveries.records:
            assert by_id.setdefault(d["delivery_id"], d) == d, "a delivery sent again must be the same delivery"
        assert set(by_id) == acts, f"deliveries missing {len(acts - set(by_id))}, unexpected {len(set(by_id) - acts)}"
        attributed = {a["decision_id"] for a, _ in attributions.records}
        assert set(decisions) <= attributed, f"{len(set(decisions) - attributed)} decisions never attributed"
        pipe.wait_caught_up("engage.decisions")
    finally:
        deliveries.close()
        attributions.close()



def assert_state_in_its_partition(pipe) -> None:
    """Every visitor's state and timer record sits in the changelog partition of its own events.

    A table writes to the changelog partition of the event being processed: state of one visitor
    written while another partition's event was current would be restored, after a move, on a
    worker that never reads it there (and the visitor would start over).
    """
    import json

    from streams import clients, topics

    settings = pipe.settings
    partition_of = {key.decode(): p for p, _, _, key, _ in clients.read_all(settings, pipe.topic("engage.events"))}
    visitors = clients.read_all(settings, topics.changelog(settings.app_id, topics.VISITOR_TO_STATE))
    assert visitors, "the visitors' state should be on its changelog"
    # table keys are JSON strings on the changelog
    misplaced = [(json.loads(key), p, partition_of.get(json.loads(key))) for p, _, _, key, _ in visitors
                 if partition_of.get(json.loads(key)) != p]
    assert not misplaced, f"{len(misplaced)} visitor states in another partition than their events: {misplaced[:3]}"
    index = clients.read_all(settings, topics.changelog(settings.app_id, topics.PARTITION_TO_TIMERS))
    misplaced = [(json.loads(key), p) for p, _, _, key, _ in index if int(json.loads(key).split(":")[0]) != p]
    assert not misplaced, f"{len(misplaced)} timer records in another partition than theirs: {misplaced[:3]}"
