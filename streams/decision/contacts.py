"""Decides where a key's contact ledger is read from outside the decision stage: the RocksDB of the worker whose decision runner holds the key's partition (streams/runtime/reader.py)."""
from __future__ import annotations

import time

from streams import topics
from streams.runtime import reader
from streams.runtime.reader import StageReader
from streams.settings import Settings


def member_name(settings: Settings) -> str:
    """The decision runner's client.id: its group and the worker's HTTP address."""
    from streams.decision.agent import NAME

    return reader.member_name(settings, NAME)


class ContactsReader(StageReader):
    """The ledgers of the partitions this worker's decision runner holds, and who holds the others."""

    def __init__(self, settings: Settings, admin=None, clock=time.monotonic):
        from streams.decision.agent import NAME

        super().__init__(settings, NAME, topics.ENRICHED, admin=admin, clock=clock)

    def local(self, key: str) -> dict | None:
        """`key`'s ledger as this worker's runner last wrote it (None: no ledger); Unknown if it cannot be read now."""
        return self.read(key, [topics.CUSTOMER_TO_CONTACTS])[topics.CUSTOMER_TO_CONTACTS]
