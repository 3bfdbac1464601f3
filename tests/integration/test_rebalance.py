"""Workers joining and leaving mid-stream: partitions and their tables move, nothing is lost or stuck.

Faust has known defects around rebalances (stuck consumers, faust-streaming #629 and #596; commits
past unprocessed records, #606): this is where they would show.
"""
from __future__ import annotations

import signal
import threading
import time

import pytest

from tests.integration.journeys import assert_every_signal_decided_once, assert_state_in_its_partition, stream_of_journeys

pytestmark = pytest.mark.integration


def test_a_worker_joining_then_another_leaving_mid_stream_loses_nothing_and_leaves_nothing_stuck(new_pipeline):
    # Given one worker processing a stream of 80 visitors' journeys (400 events) on 4 partitions
    pipe = new_pipeline(partitions=4)
    first = pipe.start_worker(state_dir="state-a")
    stream = stream_of_journeys(pipe, seed=11, n_visitors=80)
    events, signals, produce = stream.events, stream.signals, stream.produce
    third = len(events) // 3
    produce.events(events[:third], pause_s=0.002)
    # When a second worker joins while events keep coming: half the partitions, and their tables, move to it
    joining = threading.Thread(target=produce.events, args=(events[third:2 * third], 0.06))
    joining.start()
    pipe.start_worker(state_dir="state-b", members=2)
    joining.join()
    # and then the first worker leaves (a clean stop) while events keep coming: everything moves to the second
    leaving = threading.Thread(target=produce.events, args=(events[2 * third:], 0.03))
    leaving.start()
    pipe.kill(first, signal.SIGTERM)
    leaving.join()
    produce.advance_clocks(events[-1]["ts"] + 600_000)  # the last visitors' dwell timers fire by event time
    # Then every signal the rules imply is decided, none is invented, a repeated decision is the same
    # decision, and the remaining worker has committed every event (no partition stuck after two rebalances)
    assert_every_signal_decided_once(pipe, signals)
    # And every visitor's state was written to the changelog partition of its own events (batches span partitions)
    assert_state_in_its_partition(pipe)


def test_two_workers_started_with_the_same_state_folder_share_the_work(new_pipeline):
    # Given two workers started from one checkout with the same ENGAGE_DATA_DIR (as `engage worker` twice)
    pipe = new_pipeline(partitions=4)
    first = pipe.start_worker(state_dir="shared")
    second = pipe.start_worker(state_dir="shared", members=2)
    # When journeys stream in across the rebalance that gave the second worker its partitions
    stream = stream_of_journeys(pipe, seed=23, n_visitors=30)
    stream.produce.events(stream.events, pause_s=0.002)
    stream.produce.advance_clocks(stream.events[-1]["ts"] + 600_000)
    # Then every implied signal is decided, and both workers are still running (no RocksDB lock clash)
    assert_every_signal_decided_once(pipe, stream.signals)
    assert first.poll() is None and second.poll() is None, pipe.logs()[-3000:]
    assert "While lock file" not in pipe.logs(), pipe.logs()[-3000:]
    # each in a RocksDB folder of its own under the shared one
    assert {d.name for d in (pipe.workdir / "shared").iterdir() if d.is_dir()} == {"worker-0", "worker-1"}


def _metric(port: int, name: str, **labels) -> float:
    from tests.integration.test_operate import get, sample

    return sample(get(port, "/metrics")[1].decode(), name, **labels)


def _records_on(pipe, tables: list[str], partitions: set[int]) -> int:
    """Records written so far to `tables`' changelogs on `partitions` (their end offsets)."""
    from confluent_kafka import Consumer, TopicPartition

    from streams import clients, topics

    probe = Consumer({**pipe.client_conf, "group.id": "probe-standby"})
    try:
        return sum(clients.watermarks(probe, TopicPartition(topics.changelog(pipe.settings.app_id, t), p),
                                      time.monotonic() + 30)[1] for t in tables for p in partitions)
    finally:
        probe.close()


def test_with_standby_replicas_the_partitions_of_a_killed_worker_resume_from_warm_state(new_pipeline):
    # Given two workers keeping each other's partitions warm (one standby replica; a 6 s session)
    from streams import topics
    from streams.data.stage import TABLES as DATA_TABLES

    pipe = new_pipeline(partitions=4)
    env = {"ENGAGE_STANDBY_REPLICAS": "1", "ENGAGE_SESSION_TIMEOUT": "6s"}
    pipe.start_worker(state_dir="state-a", env=env)
    doomed = pipe.start_worker(state_dir="state-b", members=2, env=env)
    port = pipe.http_ports[0]
    stream = stream_of_journeys(pipe, seed=31, n_visitors=120)
    half = len(stream.events) // 2
    stream.produce.events(stream.events[:half], pause_s=0.002)
    pipe.wait_caught_up("engage.events")
    pipe.wait_caught_up("engage.signals")
    # and the surviving worker follows the other's two partitions of every stage's tables
    deadline = time.monotonic() + 60
    stages = ("detection", "data", "decision", "after-decision")
    while any(_metric(port, "engage_standby_partitions", stage=s) < 2 for s in stages):
        assert time.monotonic() < deadline, "the standbys never followed the other worker's partitions"
        time.sleep(1)
    time.sleep(3)  # a few turns of their loop: caught up
    held = {p for p in range(4) if _metric(port, "engage_partition_held", stage="detection", topic="engage.events",
                                            partition=str(p)) >= 1}
    moving = set(range(4)) - held
    tables = {"detection": [topics.VISITOR_TO_STATE, topics.PARTITION_TO_TIMERS], "data": DATA_TABLES}
    at_kill = {stage: _records_on(pipe, t, moving) for stage, t in tables.items()}
    restored = {stage: _metric(port, "engage_restored_records_total", stage=stage) for stage in tables}
    # When the other worker is killed (kill -9) while the rest of the journeys come
    pipe.kill(doomed)
    stream.produce.events(stream.events[half:], pause_s=0.002)
    stream.produce.advance_clocks(stream.events[-1]["ts"] + 600_000)
    # Then every signal is decided once, by the survivor
    assert_every_signal_decided_once(pipe, stream.signals)
    # And taking the moved partitions over read a small part of what their changelogs held: the rest was warm
    read = {stage: _metric(port, "engage_restored_records_total", stage=stage) - restored[stage] for stage in tables}
    assert at_kill["detection"] > 100 and at_kill["data"] > 10, f"too little state to tell: {at_kill}"
    for stage in tables:
        assert read[stage] <= 0.2 * at_kill[stage], f"{stage}: read {read[stage]:.0f} of the {at_kill[stage]} records again"
