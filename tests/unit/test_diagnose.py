"""A worker that looks stuck reports, per partition, how far it read, acked and committed."""
from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from streams.diagnose import consumer_report


def test_the_report_shows_a_partition_whose_commit_is_held_back_by_unacked_records():
    # Given a consumer that read events[1] to 175 but acked only from 129 on, with 122 committed
    tp = TP("engage.events", 1)
    consumer = SimpleNamespace(assignment=lambda: {tp}, _paused_partitions=set(), highwater=lambda _: 176,
                               _read_offset={tp: 175}, _committed_offset={tp: 122}, _acked={tp: list(range(129, 176))})
    app = SimpleNamespace(consumer=consumer, flow_control=SimpleNamespace(is_active=lambda: True),
                          producer=SimpleNamespace(buffer=SimpleNamespace(size=0)))
    # When the report is asked for
    report = consumer_report(app)
    # Then that partition's line shows the gap between committed and the first ack
    assert "engage.events[1] highwater=176 read=175 committed=122 paused=False acked=[129, 130, 131]..[173, 174, 175] (47)" in report


def test_the_report_never_raises():
    # Given an app whose consumer is not there yet; Then the report says so instead of raising
    assert "consumer state unavailable" in consumer_report(SimpleNamespace())
