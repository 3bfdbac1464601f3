"""Decides when timers fire on one partition: an event-time watermark, an index of visitors' deadlines, idle ticks.

The watermark of a partition is the latest event time seen on it minus the allowed lateness: a
deadline (absence, dwell, state expiry) fires once the watermark passes it, so an awaited event
that arrives out of order, but within the lateness, still cancels it. On an idle partition the
worker sends itself ticks: the partition's time moves on from its latest event at the wall clock's pace.

Deadlines live in a changelogged table, `partition_to_timers`, so a restarted or moved partition
resumes its timers:
  "<p>:clock" -> {"max": latest event time, "b": [[earliest deadline, bucket key], ...] sorted,
                  "qh"/"qt": head and tail chunk of the expiry queue, "qn": time of its head entry}
  "<p>:b<n>"  -> [[deadline, visitor_id], ...] sorted: rule timers due in one 10-second bucket
  "<p>:q<n>"  -> [[activity time, visitor_id], ...]: a chunk of the expiry queue
Pure over a `Tx` (buffered reads and writes), so the agent writes state only after its signals
are acknowledged and the backtest runs the very same code over dictionaries.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

from streams.detection.engine import Detection, detect, fire_due, validate_event
from streams.detection.rules import DetectionRuleSet

BUCKET_MS = 10_000      # rule timers are indexed in 10-second buckets: small lists, few of them
QUEUE_CHUNK = 100       # visitors per chunk of the expiry queue
REQUEUE_MS = 3_600_000  # a visitor is (re)queued for expiry at most once an hour of its activity
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
    """The timer index and the expiry queue of one partition, read and written through a Tx.

    Rule timers (absence, dwell) live in 10-second buckets; the clock record lists the buckets
    with their earliest deadline, so checking for due timers costs nothing until one is due.
    Expiry uses one TTL for every visitor, so it is a FIFO queue of (activity time, visitor) in
    chunks of 100: a visitor is queued when first seen and again at most once an hour, and a
    visitor reached at the queue's head is deleted only if it was idle for the whole TTL.
    """

    def __init__(self, tx: Tx, partition: int, cached: dict | None = None):
        self.tx, self.p = tx, partition
        self.key = f"{partition}:clock"
        if cached is not None:
            self.clock, self.dirty = cached, False
            return
        # b: [[earliest deadline, bucket key]] sorted, bf: bucket key -> its entry in b;
        # qh/qt: head and tail chunk of the expiry queue; qn: time of its head entry
        self.clock = tx.get("t", self.key) or {"max": 0, "b": [], "bf": {}, "qh": 0, "qt": 0, "qn": None}
        self.dirty = False

    @property
    def max_ts(self) -> int:
        return self.clock["max"]

    def observe(self, ts: int) -> None:
        if ts > self.clock["max"]:
            # kept in memory by the Detector too; written whenever the clock is written anyway
            self.clock["max"] = ts

    def _set(self, **changes) -> None:
        self.clock.update(changes)
        self.dirty = True

    # -- rule timers -------------------------------------------------------------------------
    def schedule(self, visitor_id: str, deadline: int) -> None:
        bkey = f"{self.p}:b{deadline // BUCKET_MS}"
        entries = list(self.tx.get("t", bkey) or [])
        bisect.insort(entries, [deadline, visitor_id])
        self.tx.put("t", bkey, entries)
        self._set_head(bkey, entries[0][0])

    def _set_head(self, bkey: str, first: int | None) -> None:
        heads, firsts = self.clock["b"], self.clock["bf"]
        old = firsts.pop(bkey, None)
        if old is not None:
            del heads[bisect.bisect_left(heads, [old, bkey])]
        if first is not None:
            bisect.insort(heads, [first, bkey])
            firsts[bkey] = first
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
            self._set_head(bkey, rest[0][0] if rest else None)
        due.sort()
        return [(d, v) for d, v in due]

    # -- expiry queue ------------------------------------------------------------------------
    def enqueue(self, visitor_id: str, ts: int) -> None:
        tail = self.clock["qt"]
        chunk = list(self.tx.get("t", f"{self.p}:q{tail}") or [])
        if len(chunk) >= QUEUE_CHUNK:
            tail += 1
            chunk = []
            self._set(qt=tail)
        chunk.append([ts, visitor_id])
        self.tx.put("t", f"{self.p}:q{tail}", chunk)
        if self.clock["qn"] is None:
            self._set(qn=ts)

    def pop_idle(self, before: int, limit: int = 1000) -> list[tuple[int, str]]:
        """Remove and return up to `limit` queue entries with activity time <= before, oldest first."""
        out: list = []
        while self.clock["qn"] is not None and self.clock["qn"] <= before and len(out) < limit:
            head = self.clock["qh"]
            key = f"{self.p}:q{head}"
            chunk = self.tx.get("t", key) or []
            n = 0
            while n < len(chunk) and chunk[n][0] <= before and len(out) < limit:
                out.append(tuple(chunk[n]))
                n += 1
            rest = chunk[n:]
            if rest:
                self.tx.put("t", key, rest)
                self._set(qn=rest[0][0])
            elif head < self.clock["qt"]:
                self.tx.put("t", key, DELETE)
                nxt = self.tx.get("t", f"{self.p}:q{head + 1}") or []
                self._set(qh=head + 1, qn=nxt[0][0] if nxt else None)
            else:
                self.tx.put("t", key, DELETE)
                self._set(qn=None)
        return out

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
    # partition -> its clock record, so it is not read and decoded for every event; written through
    # to the table whenever it changes. Forget them whenever partitions may move (a rebalance).
    clocks: dict = field(default_factory=dict)

    def forget_partitions(self) -> None:
        self.clocks.clear()

    def _clock(self, tx: Tx, partition: int) -> PartitionClock:
        clock = PartitionClock(tx, partition, self.clocks.get(partition))
        self.clocks[partition] = clock.clock
        clock.observe(self.max_ts.get(partition, 0))
        return clock

    def on_event(self, tx: Tx, partition: int, ev: dict) -> Detection:
        """Advance the partition's watermark to this event, fire what is due, then run the event's rules.

        Raises InvalidEvent before anything is changed if the event breaks the contract.
        """
        validate_event(ev)
        rules = self.rules()
        clock = self._clock(tx, partition)
        clock.observe(ev["ts"])
        self.max_ts[partition] = clock.max_ts
        signals = self._fire(tx, clock, clock.max_ts - self.lateness_ms, rules)
        visitor = ev["visitor_id"]
        result = detect(tx.get("v", visitor), ev, rules)
        state = result.state
        if result.duplicate:
            # a replay after a crash may have lost the index entry but kept the state: re-arm it
            state["x"] = None
        self._schedule(clock, visitor, state)
        if ev["ts"] >= state.get("q", 0) + REQUEUE_MS:
            clock.enqueue(visitor, ev["ts"])
            state["q"] = ev["ts"]
        tx.put("v", visitor, state)
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
                state = tx.get("v", visitor)
                if state is None or state.get("x") != deadline:
                    continue  # a stale entry: the visitor was rescheduled or is gone
                signals += fire_due(state, visitor, watermark, rules)
                state["x"] = None
                self._schedule(clock, visitor, state)
                tx.put("v", visitor, state)
        head = clock.clock["qn"]
        if head is not None and head + self.ttl_ms <= watermark:
            self._expire(tx, clock, watermark)
        return signals

    def _expire(self, tx: Tx, clock: PartitionClock, watermark: int) -> None:
        for queued_at, visitor in clock.pop_idle(watermark - self.ttl_ms):
            state = tx.get("v", visitor)
            if state is None or state.get("q") != queued_at:
                continue  # gone already, or queued again later
            if state["last"] + self.ttl_ms <= watermark and not state["t"]:
                tx.put("v", visitor, DELETE)  # idle for longer than the TTL: forget the visitor
                continue
            # active since it was queued (or a timer is still pending): check again one TTL after
            again = max(state["last"], watermark - self.ttl_ms + 1)
            clock.enqueue(visitor, again)
            state["q"] = again
            tx.put("v", visitor, state)

    def _schedule(self, clock: PartitionClock, visitor: str, state: dict) -> None:
        if not state["t"]:
            return
        first = state["t"][0][0]
        if state.get("x") is None or first < state["x"]:
            clock.schedule(visitor, first)
            state["x"] = first
