"""Decides where a partition's deadlines are kept: the timer index and expiry queue of one partition, over buffered writes.

Deadlines live in a changelogged table, `partition_to_timers`, so a restarted or moved partition
resumes its timers (the clock record's keys are named in state.py):
  "<p>:clock" -> {"max": latest event time, "b": [[earliest deadline, bucket key], ...] sorted,
                  "bf": bucket key -> its earliest deadline,
                  "qh"/"qt": head and tail chunk of the expiry queue, "qn": time of its head entry}
  "<p>:b<n>"  -> [[deadline, visitor_id], ...] sorted: rule timers due in one 10-second bucket
  "<p>:q<n>"  -> [[activity time, visitor_id], ...]: a chunk of the expiry queue
Pure over a `Tx` (buffered reads and writes), so the agent writes state only after its signals
are acknowledged and the backtest runs the very same code over dictionaries.
"""
from __future__ import annotations

import bisect

from streams.detection.state import BUCKET_FIRST, BUCKET_HEADS, CLOCK_MAX_TS, QUEUE_HEAD, QUEUE_NEXT, QUEUE_TAIL

BUCKET_MS = 10_000      # rule timers are indexed in 10-second buckets: small lists, few of them
QUEUE_CHUNK = 100       # visitors per chunk of the expiry queue
REQUEUE_MS = 3_600_000  # a visitor is (re)queued for expiry at most once an hour of its activity
_MISSING = object()
DELETE = None  # a write of None deletes the key
VISITORS = "visitors"  # the Tx's name for visitor_to_state
INDEX = "index"        # the Tx's name for partition_to_timers


def _earliest(pairs: list) -> int | None:
    """The time of the first [time, key] pair of a sorted list (bucket heads, bucket entries, queue chunks)."""
    return pairs[0][0] if pairs else None


class Tx:
    """Reads through to two stores (VISITORS: visitor state, INDEX: timer index), buffers writes until applied.

    `partition` is the partition whose record is being processed: each write remembers it, so a
    batch spanning partitions writes every key into its own partition's store and changelog.
    """

    def __init__(self, visitors, timers):
        self.stores = {VISITORS: visitors, INDEX: timers}
        self.pending: dict[tuple[str, str], object] = {}
        self.partition: int | None = None
        self.partition_of: dict[tuple[str, str], int | None] = {}

    def get(self, store: str, key: str):
        value = self.pending.get((store, key), _MISSING)
        if value is _MISSING:
            return self.stores[store].get(key)
        return value

    def put(self, store: str, key: str, value) -> None:
        self.pending[(store, key)] = value
        self.partition_of[(store, key)] = self.partition

    def apply(self, enter=None) -> None:
        """Write what is pending; `enter(partition)`, when given, is called before each key's write."""
        for (s, key), value in self.pending.items():
            if enter is not None:
                enter(self.partition_of[(s, key)])
            store = self.stores[s]
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
        self.pending.clear()
        self.partition_of.clear()


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
        self.clock = tx.get(INDEX, self.key) or {CLOCK_MAX_TS: 0, BUCKET_HEADS: [], BUCKET_FIRST: {}, QUEUE_HEAD: 0,
                                                 QUEUE_TAIL: 0, QUEUE_NEXT: None}
        self.dirty = False

    @property
    def max_ts(self) -> int:
        return self.clock[CLOCK_MAX_TS]

    @property
    def queue_next(self) -> int | None:
        """Activity time of the expiry queue's first entry, None when the queue is empty."""
        return self.clock[QUEUE_NEXT]

    def set_back(self, ts: int) -> None:
        """Set the latest event time back to `ts` (a clock an older release let run ahead of the wall clock)."""
        self._set(CLOCK_MAX_TS, ts)

    def observe(self, ts: int) -> None:
        if ts > self.clock[CLOCK_MAX_TS]:
            # kept in memory by the Detector too; written whenever the clock is written anyway
            self.clock[CLOCK_MAX_TS] = ts

    def _set(self, key: str, value) -> None:
        self.clock[key] = value
        self.dirty = True

    # -- rule timers -------------------------------------------------------------------------
    def schedule(self, visitor_id: str, deadline: int) -> None:
        bkey = f"{self.p}:b{deadline // BUCKET_MS}"
        entries = list(self.tx.get(INDEX, bkey) or [])
        bisect.insort(entries, [deadline, visitor_id])
        self.tx.put(INDEX, bkey, entries)
        self._set_head(bkey, _earliest(entries))

    def _set_head(self, bkey: str, first: int | None) -> None:
        heads, firsts = self.clock[BUCKET_HEADS], self.clock[BUCKET_FIRST]
        old = firsts.pop(bkey, None)
        if old is not None:
            del heads[bisect.bisect_left(heads, [old, bkey])]
        if first is not None:
            bisect.insort(heads, [first, bkey])
            firsts[bkey] = first
        self.dirty = True

    def next_due(self) -> int | None:
        return _earliest(self.clock[BUCKET_HEADS])

    def pop_due(self, watermark: int) -> list[tuple[int, str]]:
        """Remove and return (deadline, visitor) with deadline <= watermark, in deadline order."""
        due: list = []
        heads = self.clock[BUCKET_HEADS]
        while heads and _earliest(heads) <= watermark:
            _, bkey = heads[0]
            entries = self.tx.get(INDEX, bkey) or []
            cut = bisect.bisect_right(entries, [watermark, "\U0010ffff"])
            due.extend(entries[:cut])
            rest = entries[cut:]
            self.tx.put(INDEX, bkey, rest or DELETE)
            self._set_head(bkey, _earliest(rest))
        due.sort()
        return [(deadline, visitor) for deadline, visitor in due]

    # -- expiry queue ------------------------------------------------------------------------
    def enqueue(self, visitor_id: str, ts: int) -> None:
        tail = self.clock[QUEUE_TAIL]
        chunk = list(self.tx.get(INDEX, f"{self.p}:q{tail}") or [])
        if len(chunk) >= QUEUE_CHUNK:
            tail += 1
            chunk = []
            self._set(QUEUE_TAIL, tail)
        chunk.append([ts, visitor_id])
        self.tx.put(INDEX, f"{self.p}:q{tail}", chunk)
        if self.clock[QUEUE_NEXT] is None:
            self._set(QUEUE_NEXT, ts)

    def pop_idle(self, before: int, limit: int = 1000) -> list[tuple[int, str]]:
        """Remove and return up to `limit` queue entries with activity time <= before, oldest first."""
        out: list = []
        clock = self.clock
        while clock[QUEUE_NEXT] is not None and clock[QUEUE_NEXT] <= before and len(out) < limit:
            head = clock[QUEUE_HEAD]
            key = f"{self.p}:q{head}"
            chunk = self.tx.get(INDEX, key) or []  # [[activity time, visitor], ...]
            n = 0
            while n < len(chunk) and len(out) < limit:
                queued_at, visitor = chunk[n]
                if queued_at > before:
                    break
                out.append((queued_at, visitor))
                n += 1
            rest = chunk[n:]
            if rest:
                self.tx.put(INDEX, key, rest)
                self._set(QUEUE_NEXT, _earliest(rest))
            elif head < clock[QUEUE_TAIL]:
                self.tx.put(INDEX, key, DELETE)
                nxt = self.tx.get(INDEX, f"{self.p}:q{head + 1}") or []
                self._set(QUEUE_HEAD, head + 1)
                self._set(QUEUE_NEXT, _earliest(nxt))
            else:
                self.tx.put(INDEX, key, DELETE)
                self._set(QUEUE_NEXT, None)
        return out

    def save(self) -> None:
        if self.dirty:
            self.tx.put(INDEX, self.key, self.clock)
            self.dirty = False
