"""Decides how a map kept in state stays bounded: its newest entries, by when they were put, the oldest dropped."""
from __future__ import annotations

MERGED_KEPT = 16  # keys merged into one (its devices before a login, duplicates): what each sent, the most recent kept


def put_newest(entries: dict, key, value, most: int) -> None:
    """Put `key` last (the most recent), then drop the earliest put beyond `most`."""
    entries.pop(key, None)
    entries[key] = value
    while len(entries) > most:
        entries.pop(next(iter(entries)))
