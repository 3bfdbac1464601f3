"""Decides the names of what detection stores: the short keys of its JSON state and the fields of a timer.

The state is written to RocksDB and to a changelog topic for every event, so its keys stay one or
two characters (a visitor's state is ~600 bytes); these names are how the code reads them. What
is stored must not change without a migration: a worker restores state written by earlier
releases (tests/unit/detection/test_stored_state.py holds such state).
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

# -- visitor_to_state: one record per visitor ----------------------------------------------------
CUSTOMER = "c"      # customer id, once an event of this visitor carried one
SESSIONS = "n"      # sessions started so far (more than one: a returning visitor)
SESSION = "ses"     # the current session: {"id", "start", "last", "pages", "events", "searches"}
CART = "cart"       # {"value", "items"}
SEEN = "seen"       # recent event ids -> 1, oldest first: producers' duplicates are dropped
LAST_TS = "last"    # latest event time
RULES = "r"         # rule id -> that rule's state (below)
TIMERS = "t"        # pending timers (absence, dwell), sorted by deadline, rule id, cause
FIRED = "f"         # rule id -> session it fired in (once_per_session rules)
INDEXED = "x"       # the deadline the partition's timer index holds for this visitor, or None
QUEUED = "q"        # activity time this visitor was last queued at for expiry
RULESET = "v"       # rule set version the state was last pruned against
LOOKS = "l"         # the latest event's attributes, bounded (SIGNAL_ATTRIBUTES): what signals carry

# -- a rule's state, under RULES[rule id] ---------------------------------------------------------
FINGERPRINT = "h"   # the rule's fingerprint: state of a changed rule is dropped
WINDOW = "w"        # count: [[ts, evidence], ...] in the sliding window
BUFFER = "b"        # sequence: [[ts, step mask, evidence], ...] candidate events
AWAITED = "a"       # then_absent: time of the latest awaited event seen

# positions in a WINDOW entry [ts, evidence] and a BUFFER entry [ts, step mask, evidence]
AT = 0
WINDOW_EVIDENCE = 1
STEP_MASK = 1       # bit i set: the event matches step i
BUFFER_EVIDENCE = 2


class Timer(NamedTuple):
    """A pending deadline of one visitor. A NamedTuple is a tuple: JSON stores it as the same list as before."""

    deadline: int
    rule_id: str
    fingerprint: str   # of the rule that set it: a changed rule's timers are dropped
    kind: str          # ABSENT or DWELL
    start: int         # absence: when the pattern completed; dwell: when the visit began
    cause_id: str      # event id the signal id derives from
    evidence: list     # events shown with the signal
    # the session view when the timer was set (visitor.snapshot): what its `where` and signal read.
    # Timers written before it existed have 7 fields and read the session at firing.
    view: dict | None = None


ABSENT = "absent"
DWELL = "dwell"


def timer_order(timer: Timer) -> tuple:
    """Timers are kept sorted by this: deadline, then rule and cause, so replays fire in the same order."""
    return timer.deadline, timer.rule_id, timer.cause_id


class RuleKind(IntEnum):
    """What a rule's `when` is; an int so the per-event loop compares small ints."""

    EVENT = 0
    COUNT = 1
    SEQUENCE = 2
    DWELL = 3


# -- partition_to_timers: the record "<partition>:clock" ------------------------------------------
CLOCK_MAX_TS = "max"        # latest event time seen on the partition
BUCKET_HEADS = "b"          # [[earliest deadline, bucket key], ...] sorted
BUCKET_FIRST = "bf"         # bucket key -> its earliest deadline (its entry in BUCKET_HEADS)
QUEUE_HEAD = "qh"           # number of the expiry queue's head chunk
QUEUE_TAIL = "qt"           # number of its tail chunk
QUEUE_NEXT = "qn"           # activity time of the queue's first entry, or None when empty
