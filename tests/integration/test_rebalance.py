"""Workers joining and leaving mid-stream: partitions and their tables move, nothing is lost or stuck.

Faust has known defects around rebalances (stuck consumers, faust-streaming #629 and #596; commits
past unprocessed records, #606): this is where they would show.
"""
from __future__ import annotations

import signal
import threading

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
