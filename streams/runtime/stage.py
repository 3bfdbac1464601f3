"""Decides how handlers of plain records run as one runner: each record decoded once, each key's state written once per batch.

A handler is `handle(record, value, tables) -> outputs`: `value` is the record decoded with its
topic's schema (None for a tombstone), `tables` maps a table name to a `Table`, and each output is
(spec, key, record or None[, headers]). A ValueError is bad input and anything else a fault of
ours: either dead-letters the record for that handler alone, with the reason, and drops what it
wrote. Several handlers may read one topic (delivery and attribution both read the decisions);
each is a stage of its own for the dead letters.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from streams import topics
from streams.runtime.runner import Record, Runner
from streams.runtime.store import Stores
from streams.runtime.values import decode, encode
from streams.settings import Settings

log = logging.getLogger(__name__)
_ABSENT = object()


@dataclass(frozen=True)
class Handler:
    stage: str  # named on its dead letters
    spec: topics.TopicSpec  # the topic it reads
    handle: Callable


class Writes:
    """What a batch wrote: (partition, table, key) -> encoded bytes or None (deleted), the last write of each key.

    A record's writes are kept apart until its handler returns (`keep`), so a record that fails
    leaves the state as it found it (`drop`).
    """

    def __init__(self, stores: Stores):
        self.stores = stores
        self.batch: dict[tuple[int, str, str], bytes | None] = {}
        self.record: dict[tuple[int, str, str], bytes | None] = {}

    def read(self, table: str, key: str):
        where = (self.stores.partition, table, key)
        data = self.record.get(where, _ABSENT)
        if data is _ABSENT:
            data = self.batch.get(where, _ABSENT)
        if data is _ABSENT:
            data = self.stores.current.get(table, key)
        return decode(data)

    def keep(self) -> None:
        self.batch.update(self.record)
        self.record.clear()

    def drop(self) -> None:
        self.record.clear()

    def take(self) -> list[tuple[int, str, str, bytes | None]]:
        out = [(p, table, key, data) for (p, table, key), data in self.batch.items()]
        self.batch.clear()
        return out


class Table:
    """A table as a handler sees it, like a Faust table: the values of the current record's partition."""

    def __init__(self, writes: Writes, name: str):
        self.writes, self.name = writes, name

    def get(self, key: str, default=None):
        value = self.writes.read(self.name, key)
        return default if value is None else value

    def __getitem__(self, key: str):
        value = self.writes.read(self.name, key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: str) -> bool:
        return self.writes.read(self.name, key) is not None

    def __setitem__(self, key: str, value) -> None:
        self.writes.record[(self.writes.stores.partition, self.name, key)] = encode(value)

    def __delitem__(self, key: str) -> None:
        self.writes.record[(self.writes.stores.partition, self.name, key)] = None

    def pop(self, key: str, default=None):
        """The key's value, deleted; `default` if it had none."""
        value = self.writes.read(self.name, key)
        if value is None:
            return default
        del self[key]
        return value

    def items(self):
        """(key, value) of the current partition, with this batch's writes."""
        p, w = self.writes.stores.partition, self.writes
        mine = {k: d for (q, t, k), d in {**w.batch, **w.record}.items() if q == p and t == self.name}
        for key, data in self.writes.stores.current.items(self.name):
            if key not in mine:
                yield key, decode(data)
        for key, data in mine.items():
            if data is not None:
                yield key, decode(data)


class StageRunner(Runner):
    """`handlers` over their co-partitioned topics, in consumer group `<app id>-<name>`, with `tables`."""

    def __init__(self, settings: Settings, codec, name: str, handlers: list[Handler], tables: list[str], *,
                 ran_on_faust: topics.TopicSpec | None = None, client_id: str | None = None, consumer=None,
                 producer=None):
        self.handlers: dict[str, list[Handler]] = {}
        for h in handlers:
            self.handlers.setdefault(settings.topic(h.spec.name), []).append(h)
        prefixes = {table: table.encode() + b"\x00" for table in tables}
        stores = Stores(Path(settings.data_dir) / name, prefixes)
        super().__init__(settings, codec, name, f"{settings.app_id}-{name}", list(self.handlers),
                         settings.topic(handlers[0].spec.name),
                         {t: topics.changelog(settings.app_id, t) for t in tables}, stores,
                         ran_on_faust=ran_on_faust and settings.topic(ran_on_faust.name), client_id=client_id,
                         consumer=consumer, producer=producer)
        self.writes = Writes(stores)
        self.tables = {t: Table(self.writes, t) for t in tables}

    def process(self, records: list[Record]) -> None:
        sends: list[tuple] = []
        for r in records:
            if r.partition not in self.stores.dbs:
                self.stores.open(r.partition)  # not restored: only in tests that skip the assignment
            self.stores.enter(r.partition)
            decoded = _ABSENT
            for h in self.handlers[r.topic]:
                try:
                    if decoded is _ABSENT:
                        decoded = None if r.value is None else self.codec.decode(r.topic, h.spec.schema, r.value)
                    outputs = [self.output(*o) for o in h.handle(r, decoded, self.tables)]  # encoding may refuse one
                    self.writes.keep()
                    sends += outputs
                except ValueError as exc:  # bad input (DecodeError is one too)
                    self.writes.drop()
                    sends.append(self._dead_letter(r, exc, False, h.stage))
                except Exception as exc:  # noqa: BLE001 - a fault on one record: dead-lettered, not the stream
                    self.writes.drop()
                    sends.append(self._dead_letter(r, exc, True, h.stage))
        self.hand_over(records, sends, self.writes.take())


def key_of(record: Record, spec: topics.TopicSpec) -> str:
    """The record's key as text; a ValueError (dead-lettered) if it has none."""
    if record.key is None:
        raise ValueError(f"a record on {spec.name} needs a key ({spec.key})")
    return record.key.decode("utf-8", "replace")
