"""Decides when timers fire on the partitions one worker owns: an event-time watermark per partition, and idle ticks.

The watermark of a partition is the latest event time seen on it minus the allowed lateness: a
deadline (absence, dwell, state expiry) fires once the watermark passes it, so an awaited event
that arrives out of order, but within the lateness, still cancels it. On an idle partition the
worker sends itself ticks: the partition's time moves on from its latest event at the wall clock's pace.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

from streams.detection.partition import DELETE, REQUEUE_MS, VISITORS, PartitionClock, Tx
from streams.detection.rules import DetectionRuleSet
from streams.detection.state import INDEXED, LAST_TS, QUEUED, TIMERS
from streams.detection.visitor import Detection, InvalidEvent, detect, fire_due, validate_event

log = logging.getLogger(__name__)


def _wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Detector:
    """Detection for the partitions one worker owns: events in, signals out, timers kept."""

    rules: Callable[[], DetectionRuleSet]   # the current rule set (hot reload swaps it)
    lateness_ms: int = 5_000
    ttl_ms: int = 30 * 86_400_000           # idle visitors' state expires after this long
    max_ts: dict = field(default_factory=dict)    # partition -> latest event time seen by this process
    # partition -> its clock record, so it is not read and decoded for every event; written through
    # to the table whenever it changes. Forget them whenever partitions may move (a rebalance).
    clocks: dict = field(default_factory=dict)
    # event times accepted around the wall clock (None: any; the backtest and tests replay history)
    max_ahead_ms: int | None = None
    max_age_ms: int | None = None
    wall_ms: Callable[[], int] = _wall_ms

    def forget_partitions(self) -> None:
        self.clocks.clear()

    def _clock(self, tx: Tx, partition: int) -> PartitionClock:
        cached = self.clocks.get(partition)
        clock = PartitionClock(tx, partition, cached)
        if cached is None and self.max_ahead_ms is not None:
            self._distrust_future(clock, partition)
        self.clocks[partition] = clock.clock
        clock.observe(self.max_ts.get(partition, 0))
        return clock

    def _distrust_future(self, clock: PartitionClock, partition: int) -> None:
        """A clock stored ahead of the wall clock (by a release that accepted any event time) is set back to it."""
        now = self.wall_ms()
        if clock.max_ts > now + self.max_ahead_ms:
            log.warning("detection: partition %d's clock was %.0f days ahead of the wall clock; set back to it",
                        partition, (clock.max_ts - now) / 86_400_000)
            clock.set_back(now)
            self.max_ts[partition] = now

    def check_time(self, ev: dict) -> None:
        """Refuse an event dated too far ahead of the wall clock or too far behind it, before it moves any clock."""
        if self.max_ahead_ms is None and self.max_age_ms is None:
            return
        now, ts = self.wall_ms(), ev["ts"]
        if self.max_ahead_ms is not None and ts > now + self.max_ahead_ms:
            raise InvalidEvent(f"ts is {(ts - now) / 1000:,.0f} s ahead of the wall clock; at most "
                               f"{self.max_ahead_ms / 1000:,.0f} s (ENGAGE_MAX_EVENT_AHEAD)")
        if self.max_age_ms is not None and ts < now - self.max_age_ms:
            raise InvalidEvent(f"ts is {(now - ts) / 86_400_000:,.1f} days old; at most "
                               f"{self.max_age_ms / 86_400_000:,.1f} (ENGAGE_MAX_EVENT_AGE)")

    def on_event(self, tx: Tx, partition: int, ev: dict) -> Detection:
        """Advance the partition's watermark to this event, fire what is due, then run the event's rules.

        Raises InvalidEvent before anything is changed if the event breaks the contract.
        """
        validate_event(ev)
        self.check_time(ev)
        rules = self.rules()
        clock = self._clock(tx, partition)
        clock.observe(ev["ts"])
        self.max_ts[partition] = clock.max_ts
        signals = self._fire(tx, clock, clock.max_ts - self.lateness_ms, rules)
        visitor = ev["visitor_id"]
        result = detect(tx.get(VISITORS, visitor), ev, rules)
        state = result.state
        if result.duplicate:
            # a replay after a crash may have lost the index entry but kept the state: re-arm it
            state[INDEXED] = None
        self._schedule(clock, visitor, state)
        if ev["ts"] >= state.get(QUEUED, 0) + REQUEUE_MS:
            clock.enqueue(visitor, ev["ts"])
            state[QUEUED] = ev["ts"]
        tx.put(VISITORS, visitor, state)
        clock.save()
        return Detection(state, signals + result.signals, result.duplicate)

    def on_tick(self, tx: Tx, partition: int, idle_ms: int) -> list[dict]:
        """The partition had nothing to read for `idle_ms`: its clock moves on from its latest event time."""
        clock = self._clock(tx, partition)
        if clock.max_ts == 0:
            return []  # no event yet: nothing can be pending
        signals = self._fire(tx, clock, clock.max_ts + idle_ms - self.lateness_ms, self.rules())
        clock.save()
        return signals

    def _fire(self, tx: Tx, clock: PartitionClock, watermark: int, rules: DetectionRuleSet) -> list[dict]:
        signals: list[dict] = []
        nxt = clock.next_due()
        if nxt is not None and nxt <= watermark:
            for deadline, visitor in clock.pop_due(watermark):
                state = tx.get(VISITORS, visitor)
                if state is None or state.get(INDEXED) != deadline:
                    continue  # a stale entry: the visitor was rescheduled or is gone
                signals += fire_due(state, visitor, watermark, rules)
                state[INDEXED] = None
                self._schedule(clock, visitor, state)
                tx.put(VISITORS, visitor, state)
        head = clock.queue_next
        if head is not None and head + self.ttl_ms <= watermark:
            self._expire(tx, clock, watermark)
        return signals

    def _expire(self, tx: Tx, clock: PartitionClock, watermark: int) -> None:
        for queued_at, visitor in clock.pop_idle(watermark - self.ttl_ms):
            state = tx.get(VISITORS, visitor)
            if state is None or state.get(QUEUED) != queued_at:
                continue  # gone already, or queued again later
            if state[LAST_TS] + self.ttl_ms <= watermark and not state[TIMERS]:
                tx.put(VISITORS, visitor, DELETE)  # idle for longer than the TTL: forget the visitor
                continue
            # active since it was queued (or a timer is still pending): check again one TTL after
            again = max(state[LAST_TS], watermark - self.ttl_ms + 1)
            clock.enqueue(visitor, again)
            state[QUEUED] = again
            tx.put(VISITORS, visitor, state)

    def _schedule(self, clock: PartitionClock, visitor: str, state: dict) -> None:
        if not state[TIMERS]:
            return
        first = state[TIMERS][0].deadline
        if state.get(INDEXED) is None or first < state[INDEXED]:
            clock.schedule(visitor, first)
            state[INDEXED] = first
