"""Decides where a runner's tables are read from outside its process: the RocksDB of the worker whose runner holds the key's partition.

A runner's tables live in its own process and consumer group (`<app id>-<stage>`), whose
assignment need not match another group's. Each runner whose tables are read elsewhere names its
worker's HTTP address in its consumer's client.id (`member_name`), so describing the group says
which worker holds a partition (as Faust's table routing does from its assignor). On that worker
the tables are read from the runner's RocksDB as a secondary instance: a read-only follower of the
files the runner writes, caught up on each read (RocksDB's own way for another process to read a
live database).
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

from streams import topics
from streams.clients import partition_of
from streams.runtime.values import decode
from streams.settings import Settings

log = logging.getLogger(__name__)
GROUP_FRESH_S = 2.0  # how long a description of the group is used before asking the broker again
GROUP_RETRY_S = 0.25  # the least time between two descriptions, when a partition had no holder in the last one
# How much older than the runner's last write a read may be: a follower catches up with the runner's
# writes at most this often per partition. A catch-up (reading RocksDB's manifest and the write-ahead
# log's tail) took ~650 µs, a read of five tables after it ~10 µs (measured on this machine with
# 20,000 keys); done for every request, it was half the context service's CPU per answer.
FRESH_S = 0.1
_AT = " at "


def member_name(settings: Settings, stage: str) -> str:
    """The client.id of the runner of `stage`: its group and the worker's HTTP address."""
    return f"{settings.app_id}-{stage}{_AT}{settings.advertised_url}"


def url_of_member(client_id: str) -> str | None:
    head, sep, url = client_id.rpartition(_AT)
    return url if sep and url.startswith("http") else None


class Unknown(Exception):
    """No worker holds the key's partition just now (the group is rebalancing, or starting), or it cannot be told which."""


class StageReader:
    """The tables of the partitions this worker's runner of `stage` holds, and who holds the others.

    `topic`: an input of the stage's group; the member holding a partition of it holds that partition's
    tables.
    """

    def __init__(self, settings: Settings, stage: str, topic: topics.TopicSpec, admin=None, clock=time.monotonic):
        self.settings, self.stage = settings, stage
        self.root = Path(settings.data_dir) / stage
        self.mirrors = Path(settings.data_dir) / f"{stage}-readers"  # the secondary instances' own files
        self.group = f"{settings.app_id}-{stage}"
        self.topic = settings.topic(topic.name)
        self.mine = settings.advertised_url
        self._admin, self.clock = admin, clock
        self._owners: dict[int, str] = {}
        self._shared: set[str] = set()  # addresses more than one member gives (workers misconfigured)
        self._described = float("-inf")
        self._describing = threading.Lock()  # one description at a time; reading ledgers does not wait for it
        self._dbs: dict[int, tuple[bytes, object]] = {}  # partition -> (the primary's IDENTITY, its follower)
        self._caught_up: dict[int, float] = {}  # partition -> when its follower last caught up (self.clock)
        self._lock = threading.Lock()

    # -- who holds a partition ---------------------------------------------------------------------
    def owner(self, key: str) -> str | None:
        """The URL of the worker holding `key`'s ledger, None when it is this one; Unknown if none does.

        Blocking (it may ask the broker, for up to 5 s): call it off the event loop.
        """
        partition = partition_of(key, self.settings.partitions)
        with self._describing:
            age = self.clock() - self._described
            if age > GROUP_FRESH_S or (partition not in self._owners and age > GROUP_RETRY_S):
                self._owners, self._shared = self._describe()
                self._described = self.clock()
                self._close_all_but(p for p, url in self._owners.items() if url == self.mine)
            url = self._owners.get(partition)
        if url is None:
            raise Unknown(f"no worker holds partition {partition} of the {self.stage} stage now")
        if url in self._shared:  # each would read its own copy, and some have none: no answer is better
            raise Unknown(f"more than one member of the {self.stage} group gives {url} (a worker restarting, or "
                          "workers sharing an address: give each its own ENGAGE_HTTP_HOST and ENGAGE_HTTP_PORT)")
        return None if url == self.mine else url

    def _describe(self) -> tuple[dict[int, str], set[str]]:
        """Partition -> the address of the member holding it, and the addresses more than one member gives."""
        from streams import clients

        if self._admin is None:
            self._admin = clients.admin(self.settings)
        try:
            [group] = self._admin.describe_consumer_groups([self.group], request_timeout=5).values()
            description = group.result()
        except Exception as exc:  # noqa: BLE001 - any failure: unknown for now, asked again next time
            log.warning("describing %s failed: %s", self.group, type(exc).__name__)
            return {}, set()
        owners, seen, shared = {}, set(), set()
        for member in description.members:
            url = url_of_member(member.client_id or "")
            if url is None:
                continue
            if url in seen:
                shared.add(url)
            seen.add(url)
            for tp in (member.assignment.topic_partitions if member.assignment else []):
                if tp.topic == self.topic:
                    owners[tp.partition] = url
        return owners, shared

    # -- reading this worker's tables ------------------------------------------------------------------
    def read(self, key: str, tables: list[str]) -> dict[str, object]:
        """`key`'s value in each of `tables` (None: no value) as this worker's runner had written them at most
        FRESH_S ago, all from one catch-up; Unknown if they cannot be read now."""
        partition = partition_of(key, self.settings.partitions)
        with self._lock:
            try:
                db = self._open(partition)
                if db is None:
                    return dict.fromkeys(tables)  # the runner has written nothing for this partition on this worker
                now = self.clock()
                if now - self._caught_up.get(partition, float("-inf")) >= FRESH_S:
                    db.try_catch_up_with_primary()
                    self._caught_up[partition] = now
                found = {table: db.get(table.encode() + b"\x00" + key.encode()) for table in tables}
            except Exception as exc:  # noqa: BLE001 - the folder went while being read: read it afresh next time
                self._close(partition)
                raise Unknown(f"partition {partition} of the {self.stage} stage is being restored here") from exc
        return {table: decode(data) for table, data in found.items()}

    def _open(self, partition: int):
        """The follower of the partition's RocksDB; a new one when the runner made the folder again (a partition
        wiped and restored: a follower of the old files would go on reading them, without an error)."""
        from rocksdict import AccessType, Options, Rdict

        primary = self.root / str(partition)
        try:
            identity = (primary / "IDENTITY").read_bytes()  # RocksDB's id of this database, new with each one made
        except OSError:
            self._close(partition)
            return None
        held = self._dbs.get(partition)
        if held is not None and held[0] == identity:
            return held[1]
        self._close(partition)
        mirror = self.mirrors / str(partition)
        shutil.rmtree(mirror, ignore_errors=True)
        mirror.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.set_max_open_files(-1)  # a secondary instance needs it (RocksDB)
        db = Rdict(str(primary), options, access_type=AccessType.secondary(str(mirror)))
        self._dbs[partition] = (identity, db)
        return db

    def _close(self, partition: int) -> None:
        held = self._dbs.pop(partition, None)
        self._caught_up.pop(partition, None)
        if held is not None:
            try:
                held[1].close()
            except Exception:  # noqa: BLE001 - already gone with its folder
                pass

    def _close_all_but(self, partitions) -> None:
        """Close the followers of partitions this worker's runner no longer holds (their folders may stay)."""
        keep = set(partitions)
        with self._lock:
            for partition in [p for p in self._dbs if p not in keep]:
                self._close(partition)

    def close(self) -> None:
        self._close_all_but(())
