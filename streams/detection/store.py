"""Decides where detection's state lives: one RocksDB per partition, each write also on that partition of a changelog.

Two tables, as the Faust tables of earlier releases, with the same changelog topics and records
(key: the table key as a JSON string; value: the encoded state, or none to delete), so state
written by either is restored by the other:
  visitor_to_state     visitor id -> the visitor's state (encoding.py)
  partition_to_timers  "<partition>:..." -> the partition's timer index and expiry queue (partition.py)
A partition's RocksDB also holds, per changelog, the offset after the last record it has applied:
restoring reads the changelog from there to its end, so a worker that kept its folder reads only
what another worker wrote meanwhile, and an empty folder reads it all.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from streams.detection.encoding import decode, encode
from streams.detection.partition import INDEX, VISITORS

# one byte before the key says which table; offsets live under a prefix no table key has
_PREFIX = {VISITORS: b"v", INDEX: b"i"}
_OFFSET = b"\x00offset:"


def changelog_key(key: str) -> bytes:
    """A table key as Faust wrote it on the changelog: a JSON string."""
    return json.dumps(key).encode()


def table_key(data: bytes) -> str:
    return json.loads(data)


class PartitionDB:
    """The RocksDB of one partition: both tables, and the changelog offsets applied."""

    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.db = Rdict(str(path), Options(raw_mode=True))

    def get(self, table: str, key: str) -> bytes | None:
        return self.db.get(_PREFIX[table] + key.encode())

    def offset(self, table: str) -> int:
        """The changelog offset from which this partition's records are not applied yet."""
        data = self.db.get(_OFFSET + table.encode())
        return int(data) if data is not None else 0

    def write(self, writes, offsets: dict[str, int]) -> None:
        """Apply (table, key, bytes or None to delete) and the changelog offsets they reach, atomically."""
        batch = WriteBatch(raw_mode=True)
        for table, key, value in writes:
            k = _PREFIX[table] + key.encode()
            if value is None:
                batch.delete(k)
            else:
                batch.put(k, value)
        for table, offset in offsets.items():
            batch.put(_OFFSET + table.encode(), str(offset).encode())
        self.db.write(batch)

    def close(self) -> None:
        self.db.close()


class Stores:
    """The partitions' RocksDBs of one worker, under `root/<partition>`; reads go to the current partition.

    A Tx reads through `view(table)`; `enter(partition)` says whose record is being processed, as
    each record of a batch may be of another partition. Writes are not applied here: the runner
    collects them (`Tx.apply` into `collect`), puts them on the changelog, then writes them.
    """

    def __init__(self, root: Path):
        self.root = root
        self.dbs: dict[int, PartitionDB] = {}
        self.current: PartitionDB | None = None
        self.partition: int | None = None
        self.collected: list[tuple[int, str, str, bytes | None]] = []

    def open(self, partition: int) -> PartitionDB:
        db = self.dbs.get(partition)
        if db is None:
            db = self.dbs[partition] = PartitionDB(self.root / str(partition))
        return db

    def close(self, partition: int) -> None:
        db = self.dbs.pop(partition, None)
        if db is not None:
            db.close()
        if self.partition == partition:
            self.current = self.partition = None

    def close_all(self) -> None:
        for partition in list(self.dbs):
            self.close(partition)

    def wipe(self, partition: int) -> None:
        """Drop a partition's local copy (it is read from the changelog again)."""
        self.close(partition)
        shutil.rmtree(self.root / str(partition), ignore_errors=True)

    def enter(self, partition: int) -> None:
        self.partition = partition
        self.current = self.dbs[partition]

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
