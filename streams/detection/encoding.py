"""Decides how detection's state is written as bytes: the tables' own encoding (streams/runtime/values.py)."""
from __future__ import annotations

from streams.runtime.values import decode, encode

__all__ = ["Encoded", "decode", "encode"]


class Encoded:
    """A table of bytes seen as a table of values: what a Tx reads through and writes to."""

    def __init__(self, table):
        self.table = table

    def get(self, key: str):
        return decode(self.table.get(key))

    def __setitem__(self, key: str, value) -> None:
        self.table[key] = encode(value)

    def pop(self, key: str, default=None):
        return self.table.pop(key, default)
