"""Decides how detection's two tables are stored: the runner's RocksDB per partition, values in detection's own encoding.

Two tables, as the Faust tables of earlier releases, with the same changelog topics and records,
so state written by either is restored by the other:
  visitor_to_state     visitor id -> the visitor's state (encoding.py)
  partition_to_timers  "<partition>:..." -> the partition's timer index and expiry queue (partition.py)
"""
from __future__ import annotations

from pathlib import Path

from streams.detection.encoding import decode, encode
from streams.detection.partition import INDEX, VISITORS
from streams.runtime import store

# one byte before the key says which table (the folders of earlier releases have them so)
PREFIXES = {VISITORS: b"v", INDEX: b"i"}


def PartitionDB(path: Path) -> store.PartitionDB:  # noqa: N802 - detection's partition store, as before
    return store.PartitionDB(path, PREFIXES)


class Stores(store.Stores):
    """Detection's partition stores; a Tx reads through `view(table)`."""

    def __init__(self, root: Path):
        super().__init__(root, PREFIXES)

    def view(self, table: str) -> "TableView":
        return TableView(self, table)


class TableView:
    """One table as a Tx sees it: decoded reads from the current partition, encoded writes collected."""

    def __init__(self, stores: Stores, table: str):
        self.stores, self.table = stores, table

    def get(self, key: str):
        return decode(self.stores.current.get(self.table, key))

    def __setitem__(self, key: str, value) -> None:
        self.stores.collected.append((self.stores.partition, self.table, key, encode(value)))

    def pop(self, key: str, default=None):
        self.stores.collected.append((self.stores.partition, self.table, key, None))
        return default
