"""Decides which of a worker's event partitions are idle long enough for a clock tick, and by how much.

A partition's idle time counts from this process's latest event of it, else from when the partition
was assigned: a partition taken over (after a restart, or from another worker) may hold pending
timers and get no event for long, and counting from the assignment never runs its clock ahead of
the real one (it was idle at least that long).
"""
from __future__ import annotations


class IdlePartitions:
    def __init__(self, idle_after_s: float):
        self.idle_after_s = idle_after_s
        self.last_event_wall: dict[int, float] = {}  # partition -> wall time of its latest event, or of its assignment
        self._first_seen: set[int] = set()           # partitions with an event since their assignment

    def assigned(self, partitions, now: float) -> None:
        for p in partitions:
            self.last_event_wall.setdefault(p, now)

    def revoked(self, partitions) -> None:
        for p in partitions:
            self.last_event_wall.pop(p, None)
            self._first_seen.discard(p)

    def saw_event(self, partition: int, now: float) -> bool:
        """Note an event of `partition`; True for its first since the partition was assigned."""
        self.last_event_wall[partition] = now
        if partition in self._first_seen:
            return False
        self._first_seen.add(partition)
        return True

    def idle_ms(self, partition: int, now: float) -> int | None:
        """How long `partition` has been idle, if at least `idle_after_s`; None if it is busy or not ours."""
        seen = self.last_event_wall.get(partition)
        if seen is None or now - seen < self.idle_after_s:
            return None
        return int((now - seen) * 1000)
