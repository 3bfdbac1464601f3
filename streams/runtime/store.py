"""Decides where a runner's state lives: one RocksDB per partition, each table under its own prefix, with the changelog offsets applied.

Every table has a changelog topic with the records Faust's tables wrote (key: the table key as a
JSON string; value: the stored bytes (streams/runtime/values.py), or none to delete), so state
written by a Faust table of an earlier release is restored by a runner. A partition's RocksDB also holds,
per table, the changelog offset after the last record it has applied: restoring reads the
changelog from there to its end, so a worker that kept its folder reads only what another worker
wrote meanwhile, and an empty folder reads it all.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

_OFFSET = b"\x00offset:"  # offsets live under a prefix no table key has


def changelog_key(key: str) -> bytes:
    """A table key as Faust wrote it on the changelog: a JSON string."""
    return json.dumps(key).encode()


def table_key(data: bytes) -> str:
    return json.loads(data)


class PartitionDB:
    """The RocksDB of one partition: its tables (`prefixes`: table -> the bytes before its keys) and offsets."""

    def __init__(self, path: Path, prefixes: dict[str, bytes]):
        path.mkdir(parents=True, exist_ok=True)
        self.prefixes = prefixes
        self.db = Rdict(str(path), Options(raw_mode=True))
        # (table, key) -> (batch number, bytes or None): a batch's writes whose changelog records are not acked yet
        # (see Runner.hand_over); reads see them, RocksDB gets them once acked
        self.unacked: dict[tuple[str, str], tuple[int, bytes | None]] = {}

    def get(self, table: str, key: str) -> bytes | None:
        if self.unacked:
            held = self.unacked.get((table, key))
            if held is not None:
                return held[1]
        return self.db.get(self.prefixes[table] + key.encode())

    def items(self, table: str):
        """(key, bytes) of every entry of `table` in this partition: RocksDB's in key order, then the unacked ones."""
        prefix = self.prefixes[table]
        mine = {k: v for (t, k), (_, v) in self.unacked.items() if t == table}
        for k, v in self.db.items(from_key=prefix):
            if not k.startswith(prefix):
                break
            key = k[len(prefix):].decode()
            if key not in mine:
                yield key, v
        for key, v in mine.items():
            if v is not None:
                yield key, v

    def hold(self, writes, batch_no: int) -> None:
        """Writes (table, key, bytes or None) of batch number `batch_no`, read from here until `write` applies them."""
        for table, key, value in writes:
            self.unacked[(table, key)] = (batch_no, value)

    def offset(self, table: str) -> int:
        """The changelog offset from which this partition's records are not applied yet."""
        data = self.db.get(_OFFSET + table.encode())
        return int(data) if data is not None else 0

    def discard(self, batch_no: int) -> None:
        """Forget the writes held for batch number `batch_no`: they will not be acked (its records are read again)."""
        self.unacked = {where: held for where, held in self.unacked.items() if held[0] != batch_no}

    def write(self, writes, offsets: dict[str, int], batch_no: int | None = None) -> None:
        """Apply (table, key, bytes or None to delete) and the changelog offsets they reach, atomically; the writes
        held for batch number `batch_no`, if given, are then no longer held (a later batch's write of a key stays)."""
        batch = WriteBatch(raw_mode=True)
        for table, key, value in writes:
            k = self.prefixes[table] + key.encode()
            if value is None:
                batch.delete(k)
            else:
                batch.put(k, value)
        for table, offset in offsets.items():
            batch.put(_OFFSET + table.encode(), str(offset).encode())
        self.db.write(batch)
        if batch_no is not None and self.unacked:
            for table, key, _ in writes:
                held = self.unacked.get((table, key))
                if held is not None and held[0] == batch_no:
                    del self.unacked[(table, key)]

    def close(self) -> None:
        self.db.close()


class Stores:
    """The partitions' RocksDBs of one runner, under `root/<partition>`; reads go to the current partition.

    `enter(partition)` says whose record is being processed, as each record of a batch may be of
    another partition. Writes are not applied here: the runner collects them, puts them on the
    changelog, then writes them.
    """

    def __init__(self, root: Path, prefixes: dict[str, bytes]):
        self.root, self.prefixes = root, prefixes
        self.dbs: dict[int, PartitionDB] = {}
        self.current: PartitionDB | None = None
        self.partition: int | None = None
        self.collected: list[tuple[int, str, str, bytes | None]] = []

    def open(self, partition: int) -> PartitionDB:
        db = self.dbs.get(partition)
        if db is None:
            db = self.dbs[partition] = PartitionDB(self.root / str(partition), self.prefixes)
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
