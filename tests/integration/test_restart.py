"""A worker killed mid-stream resumes from its committed offsets and its changelogged state."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from streams.rules import registry
from streams.settings import REPO_ROOT
from tests.integration.conftest import Producer_, Reader
from tests.integration.journeys import assert_every_signal_decided_once, assert_state_in_its_partition, stream_of_journeys

pytestmark = pytest.mark.integration


def test_worker_killed_mid_stream_resumes_without_losing_signals(new_pipeline):
    # Given a worker processing a stream of 60 visitors' journeys (300 events)
    pipe = new_pipeline(partitions=2)
    first = pipe.start_worker(state_dir="state-a")
    stream = stream_of_journeys(pipe, seed=5, n_visitors=60)
    events, signals, produce = stream.events, stream.signals, stream.produce
    assert len({s["signal_id"] for s in signals}) >= 60, "the journeys should raise at least one signal per visitor"

    half = len(events) // 2
    produce.events(events[:half])
    time.sleep(2)
    # When the worker is killed (SIGKILL, no clean shutdown) mid-stream, while events keep coming,
    killer = threading.Thread(target=lambda: (time.sleep(0.3), pipe.kill(first)))
    killer.start()
    produce.events(events[half:], pause_s=0.002)
    produce.advance_clocks(events[-1]["ts"] + 600_000)  # the last visitors' dwell timers fire by event time
    killer.join()
    assert first.poll() is not None
    # and a new worker starts with an empty state folder, so its tables must come from the changelogs
    pipe.start_worker(state_dir="state-b")
    # Then every signal the rules imply is decided: none lost (the counts that straddle the kill
    # need the first worker's state), none invented, a decision at-least-once repeats is the same one,
    # and the new worker commits every event: a partition whose commit is stuck behind records it
    # skipped (Faust resuming partitions before seeking them) would replay them all after the next crash
    assert_every_signal_decided_once(pipe, signals)
    # And every visitor's state was written to the changelog partition of its own events (batches span partitions)
    assert_state_in_its_partition(pipe)


def test_a_restarted_worker_fires_the_pending_dwell_of_an_idle_partition(new_pipeline):
    # Given a worker whose rules make the pricing-page dwell 2 seconds (published before it starts)
    pipe = new_pipeline(partitions=2)
    text = (REPO_ROOT / "rules" / "detection.yaml").read_text().replace("at_least: 60s", "at_least: 2s")
    registry.publish(pipe.settings, "detection", text, "rules/fast-dwell.yaml", author="test")
    first = pipe.start_worker(state_dir="state-a")
    # and a visitor who opened the pricing page, an event the worker has processed and committed
    visitor = f"V-{uuid.uuid4().hex[:8]}"
    Producer_(pipe).event(event_id=f"{visitor}-1", visitor_id=visitor, type_="page_view", ts=int(time.time() * 1000),
                          path="/pricing")
    pipe.wait_caught_up("engage.events")
    # When the worker is killed before the dwell is due (2 s, plus 5 s allowed lateness) and a new one,
    # with an empty state folder, takes the partitions over, and nothing more happens on the site
    pipe.kill(first)
    pipe.start_worker(state_dir="state-b")
    # Then the dwell fires all the same: the new worker moves its idle partitions' clocks on with the
    # wall clock, though it has read no event of them yet
    signals = Reader(pipe, "engage.signals", "Signal")
    try:
        found = signals.wait_for(lambda s: s["visitor_id"] == visitor and s["rule_id"] == "pricing-hesitation",
                                 timeout_s=60)
        assert found, f"no dwell signal after the restart\n{pipe.logs()[-3000:]}"
    finally:
        signals.close()
