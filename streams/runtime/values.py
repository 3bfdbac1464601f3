"""Decides how a table value is written as bytes: MessagePack (ormsgpack), zstd-compressed when large, with JSON written by earlier releases still read.

Measured over the state of 9,423 simulated visitors (50,000 events, the default rules; per value,
median of 5): Faust's JSON 549 bytes, 11.9 µs to encode, 23.4 µs to decode; orjson 491 B, 8.5 µs,
18.1 µs; msgpack 365 B, 8.7 µs, 26.5 µs; ormsgpack 365 B, 4.1 µs, 18.7 µs. Every byte is written
to RocksDB and to the changelog topic, and restored from it, so the smallest and fastest one won.

Compressing the values the demo wrote (MessagePack sizes: contact ledgers 1,225 B, attributions
763, journeys 438, visitor states 419, profiles 204): zlib at level 1 took them to 728 / 499 / 256 /
269 / 193 B in 43 / 26 / 14 / 14 / 10 µs; lz4 to 908 / 630 / 301 / 304 / 205 B in 1-4 µs; zstd at
level 1 to 747 / 527 / 262 / 280 / 195 B in 5-12 µs. zstd keeps nearly all of zlib's saving at a
third of its time (and MessagePack plus zstd still takes less time than JSON took alone: 25 µs
for a ledger). Profiles gain under 5%. Visitor states gain a third, but detection writes them on
its hot path and RocksDB compresses its files anyway: with values from 256 bytes compressed, the
first `make bench` run gave 242 changelog bytes per event (428 before) but 373 RocksDB bytes per
visitor (229 before: compressed values compress no further). So only values of COMPRESS_FROM
bytes or more (ledgers, attributions, long journeys, the odd large visitor) are compressed, and a
compressed value is kept only when smaller.

The first byte says what was written: MessagePack is used for maps and arrays, which it starts at
0x80 or above; a zstd frame starts with 0x28; JSON (earlier releases' values, and a lone number or
string still) with `{`, `[`, `"`, `-`, a digit or a letter, never 0x28.
"""
from __future__ import annotations

import json
import threading

import ormsgpack
import zstandard

COMPRESS_FROM = 512  # bytes of MessagePack
_ZSTD = 0x28  # the first byte of a zstd frame's magic number, 28 B5 2F FD
_local = threading.local()  # zstd (de)compressors are not to be shared between threads


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "c", None)
    if c is None:
        c = _local.c = zstandard.ZstdCompressor(level=1)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def _as_list(value):
    # a NamedTuple (detection's Timer) is stored as the plain array JSON stored it as
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} cannot be stored in a table")


def encode(value) -> bytes:
    if not isinstance(value, (dict, list, tuple)):
        # a number or a string (a time): as JSON, whose first byte MessagePack's could be confused with
        return json.dumps(value).encode()
    data = ormsgpack.packb(value, default=_as_list)
    if len(data) >= COMPRESS_FROM:
        packed = _compressor().compress(data)
        if len(packed) < len(data):
            return packed
    return data


def decode(data: bytes | None):
    if data is None:
        return None
    first = data[0]
    if first == _ZSTD:
        return ormsgpack.unpackb(_decompressor().decompress(data))
    if first < 0x80:
        return json.loads(data)  # written by a release before this encoding
    return ormsgpack.unpackb(data)
