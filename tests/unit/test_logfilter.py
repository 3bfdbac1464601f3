"""The same complaint reaches the log once per interval, with a count of the ones held back."""
import logging

from streams.logfilter import RateLimit


def _record(msg: str, *args, level=logging.ERROR, name="aiokafka") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_flood_of_one_kind_is_one_line_per_interval_with_a_count():
    now = [0.0]
    limit = RateLimit(interval_s=10.0, clock=lambda: now[0])
    # Given 10,000 connection errors for two nodes within 5 s
    passed = []
    for i in range(10_000):
        now[0] = i * 0.0005
        record = _record("Unable connect to node with id %s: %s", i % 2, "refused")
        if limit.filter(record):
            passed.append(record)
    # Then one line got through; when the next comes after the interval, it says how many were held back
    assert len(passed) == 1
    now[0] = 12.0
    later = _record("Unable connect to node with id %s: %s", 1, "refused")
    assert limit.filter(later) and later.getMessage().endswith("[and 9999 more like it in the last 12 s]")


def test_other_kinds_and_info_lines_are_not_held_back():
    limit = RateLimit(interval_s=10.0, clock=lambda: 0.0)
    assert limit.filter(_record("Unable to update metadata from %s", 1))
    assert limit.filter(_record("Unable connect to node with id %s", 1))
    assert limit.filter(_record("Unable connect to node with id %s", 1, name="faust"))
    assert all(limit.filter(_record("rebalance %s", i, level=logging.INFO)) for i in range(100))
