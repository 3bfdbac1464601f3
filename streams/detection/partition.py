"""Decides when timers fire on one partition: an event-time watermark, an index of visitors' deadlines, idle ticks.

The watermark of a partition is the latest event time seen on it minus the allowed lateness: a
deadline (absence, dwell, state expiry) fires once the watermark passes it, so an awaited event
that arrives out of order, but within the lateness, still cancels it. On an idle partition the
worker sends itself ticks that move the watermark with the wall clock.

Deadlines are indexed in a changelogged table, `partition_to_timers`, in buckets (a minute for
rule timers, an hour for state expiry), so a restarted or moved partition resumes its timers:
  "<p>:clock"        -> {"max": latest event time, "b": [[earliest deadline, bucket key], ...] sorted}
  "<p>:m<n>" / ":h<n>" -> [[deadline, visitor_id], ...] sorted
Pure over a `Tx` (buffered reads and writes), so the agent writes state only after its signals
are acknowledged and the backtest runs the very same code over dictionaries.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

from streams.detection.engine import Detection, detect, fire_due, next_deadline
from streams.detection.rules import DetectionRuleSet

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
_MISSING = object()
DELETE = None  # a write of None deletes the key


class Tx:
    """Reads through to two stores (visitor state, timer index), buffers writes until `writes()` is applied."""

    def __init__(self, visitors, timers):
        self.stores = {"v": visitors, "t": timers}
        self.pending: dict[tuple[str, str], object] = {}

    def get(self, store: str, key: str):
        value = self.pending.get((store, key), _MISSING)
        if value is _MISSING:
            return self.stores[store].get(key)
        return value

    def put(self, store: str, key: str, value) -> None:
        self.pending[(store, key)] = value

    def writes(self) -> list[tuple[object, str, object]]:
        """(store, key, value or None to delete), in the order first written."""
        return [(self.stores[s], k, v) for (s, k), v in self.pending.items()]

    def apply(self) -> None:
        for store, key, value in self.writes():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        self.pending.clear()


class PartitionClock:
    """The deadline index of one partition, read and written through a Tx."""

    def __init__(self, tx: Tx, partition: int):
        self.tx, self.p = tx, partition
        self.key = f"{partition}:clock"
        self.clock = tx.get("t", self.key) or {"max": 0, "b": []}
        self.dirty = False

    @property
    def max_ts(self) -> int:
        return self.clock["max"]

    def observe(self, ts: int) -> None:
        if ts > self.clock["max"]:
            # kept in memory by the caller too; written whenever the clock is written anyway
            self.clock = {**self.clock, "max": ts}

    def schedule(self, visitor_id: str, deadline: int, expiry: bool) -> None:
        size, tag = (HOUR_MS, "h") if expiry else (MINUTE_MS, "m")
        bkey = f"{self.p}:{tag}{deadline // size}"
        entries = list(self.tx.get("t", bkey) or [])
        bisect.insort(entries, [deadline, visitor_id])
        self.tx.put("t", bkey, entries)
        self._set_next(bkey, entries[0][0])

    def _set_next(self, bkey: str, first: int | None) -> None:
        heads = [h for h in self.clock["b"] if h[1] != bkey]
        if first is not None:
            bisect.insort(heads, [first, bkey])
        self.clock = {**self.clock, "b": heads}
        self.dirty = True

    def next_due(self) -> int | None:
        return self.clock["b"][0][0] if self.clock["b"] else None

    def pop_due(self, watermark: int) -> list[tuple[int, str]]:
        """Remove and return (deadline, visitor) with deadline <= watermark, in deadline order."""
        due: list = []
        while self.clock["b"] and self.clock["b"][0][0] <= watermark:
            bkey = self.clock["b"][0][1]
            entries = self.tx.get("t", bkey) or []
            cut = bisect.bisect_right(entries, [watermark, "\U0010ffff"])
            due.extend(entries[:cut])
            rest = entries[cut:]
            self.tx.put("t", bkey, rest or DELETE)
            self._set_next(bkey, rest[0][0] if rest else None)
        due.sort()
        return [(d, v) for d, v in due]

    def save(self) -> None:
        if self.dirty:
            self.tx.put("t", self.key, self.clock)
            self.dirty = False


@dataclass
class Detector:
    """Detection for the partitions one worker owns: events in, signals out, timers kept."""

    rules: Callable[[], DetectionRuleSet]   # the current rule set (hot reload swaps it)
    lateness_ms: int = 5_000
    ttl_ms: int = 30 * 86_400_000           # idle visitors' state expires after this long
    max_ts: dict = field(default_factory=dict)    # partition -> latest event time seen by this process
    stats: dict = field(default_factory=lambda: {"late_events": 0, "expired_visitors": 0, "timer_signals": 0})

    def _clock(self, tx: Tx, partition: int) -> PartitionClock:
        clock = PartitionClock(tx, partition)
        clock.observe(self.max_ts.get(partition, 0))
        return clock

    def on_event(self, tx: Tx, partition: int, ev: dict) -> Detection:
        """Advance the partition's watermark to this event, fire what is due, then run the event's rules."""
        rules = self.rules()
        clock = self._clock(tx, partition)
        if ev["ts"] < clock.max_ts - self.lateness_ms:
            self.stats["late_events"] += 1  # still evaluated; only timers already fired cannot be undone
        clock.observe(ev["ts"])
        self.max_ts[partition] = clock.max_ts
        signals = self._fire(tx, clock, clock.max_ts - self.lateness_ms, rules)
        visitor = ev["visitor_id"]
        result = detect(tx.get("v", visitor), ev, rules)
        if result.duplicate:
            # a replay after a crash may have lost the index entry but kept the state: re-arm it
            result.state["x"] = None
        self._schedule(clock, visitor, result.state)
        tx.put("v", visitor, result.state)
        clock.save()
        return Detection(result.state, signals + result.signals, result.duplicate)

    def on_tick(self, tx: Tx, partition: int, watermark_ts: int) -> list[dict]:
        """An idle partition's clock moved on with the wall clock: fire what is due."""
        clock = self._clock(tx, partition)
        signals = self._fire(tx, clock, watermark_ts - self.lateness_ms, self.rules())
        clock.save()
        return signals

    def _fire(self, tx: Tx, clock: PartitionClock, watermark: int, rules: DetectionRuleSet) -> list[dict]:
        nxt = clock.next_due()
        if nxt is None or nxt > watermark:
            return []
        signals = []
        for deadline, visitor in clock.pop_due(watermark):
            state = tx.get("v", visitor)
            if state is None or state.get("x") != deadline:
                continue  # a stale entry: the visitor was rescheduled or is gone
            fired = fire_due(state, visitor, watermark, rules)
            self.stats["timer_signals"] += len(fired)
            signals += fired
            if not state["t"] and state["last"] + self.ttl_ms <= watermark:
                tx.put("v", visitor, DELETE)  # idle for longer than the TTL: forget the visitor
                self.stats["expired_visitors"] += 1
                continue
            state["x"] = None
            self._schedule(clock, visitor, state)
            tx.put("v", visitor, state)
        return signals

    def _schedule(self, clock: PartitionClock, visitor: str, state: dict) -> None:
        nd = next_deadline(state, self.ttl_ms)
        if state.get("x") is None or nd < state["x"]:
            clock.schedule(visitor, nd, expiry=not state["t"] or nd != state["t"][0][0])
            state["x"] = nd
