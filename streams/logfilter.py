"""Decides how often the same complaint reaches the log: once per interval per kind, with a count of the rest.

During a broker outage the Kafka clients retry every few milliseconds and log every failure:
~110,000 lines in 25 s measured here, which buries everything else and fills disks. A kind is a
logger, a level and the message's template (its text before the arguments are filled in), so
"Unable connect to node with id 1" for two different nodes counts as one kind.
"""
from __future__ import annotations

import logging
import time


class RateLimit(logging.Filter):
    """Passes the first record of a kind, then at most one per `interval_s`, saying how many were held back."""

    def __init__(self, interval_s: float = 10.0, min_level: int = logging.WARNING, clock=time.monotonic,
                 max_kinds: int = 10_000):
        super().__init__()
        self.interval_s, self.min_level, self.clock, self.max_kinds = interval_s, min_level, clock, max_kinds
        self._kinds: dict[tuple, list] = {}  # kind -> [time last passed, records held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.min_level:
            return True
        kind = (record.name, record.levelno, str(record.msg)[:200])
        now = self.clock()
        seen = self._kinds.get(kind)
        if seen is None:
            if len(self._kinds) >= self.max_kinds:  # bounded whatever the messages
                self._kinds.clear()
            self._kinds[kind] = [now, 0]
            return True
        if now - seen[0] < self.interval_s:
            seen[1] += 1
            return False
        elapsed, held = now - seen[0], seen[1]
        seen[0], seen[1] = now, 0
        if held:
            record.msg = f"{record.msg} [and {held} more like it in the last {elapsed:.0f} s]"
        return True


def install(interval_s: float = 10.0) -> RateLimit:
    """Rate-limit warnings and errors on every handler of the root logger (where Faust, aiokafka and ours end up)."""
    limit = RateLimit(interval_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limit)
    return limit
