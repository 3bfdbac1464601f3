"""Decides whether a CRM export may be published as profiles: every row checked first, nothing published unless all pass.

`engage profiles load FILE` reads CSV (a header row naming CustomerProfile fields, `attributes.<name>`
columns for the attribute map, lists separated by `;`) or JSON Lines (one object per line, the
schema's field names). A row with `_delete` true is a tombstone: the customer's profile is deleted.
The file is read twice, not held: once to check every row (errors name the line and the reason,
and nothing is sent if there is one; 8 bytes a row are kept to count repeated customers), once to
publish. Each row is bounded:
a line of at most 64 KiB, at most 64 attributes of at most 1 KiB each.
"""
from __future__ import annotations

import csv
import io
from array import array
import json
import math
import re
import time
import zoneinfo
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from streams.decision.actions import CHANNELS

MAX_LINE_BYTES = 64 * 1024
MAX_ATTRIBUTES = 64
MAX_ATTRIBUTE_CHARS = 1024
MAX_ID_CHARS = 256
DELETE = "_delete"
FIELDS = ("customer_id", "updated_ts", "display_name", "segment", "clv", "preferred_channel", "marketing_consent",
          "opted_out", "channels_opted_out", "timezone", "attributes")
_TRUE, _FALSE = {"true", "1", "yes", "y"}, {"false", "0", "no", "n", ""}
_DIGITS = re.compile(r"^[0-9]{1,15}$")


class RowError(ValueError):
    """A row that cannot be a profile; the message says why."""


@dataclass
class Row:
    line: int
    customer_id: str
    profile: dict | None  # None: a tombstone
    size: int  # bytes of the file this row took (for the progress bar)


@dataclass
class Check:
    """What a pass over the file found."""
    rows: int = 0
    deletes: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), the first `keep` of them
    error_count: int = 0
    # a 64-bit hash per row, not the ids: 8 bytes a row (a set of 1M ids took ~80 MB)
    hashes: array = field(default_factory=lambda: array("q"))

    @property
    def customers(self) -> int:
        import numpy as np

        return int(np.unique(np.frombuffer(self.hashes, dtype=np.int64)).size) if self.hashes else 0

    @property
    def duplicates(self) -> int:
        return self.rows - self.customers


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise RowError(f"{path.name}: cannot tell the format from the name; say --format csv or --format jsonl")


def rows(path: Path, fmt: str, now_ms: int) -> Iterator[Row | tuple[int, str, int]]:
    """Every row of the file as a Row, or (line, reason, size) for a row that cannot be a profile."""
    with open(path, "rb") as f:
        yield from (_csv_rows(f, now_ms) if fmt == "csv" else _jsonl_rows(f, now_ms))


def check(path: Path, fmt: str, now_ms: int, keep: int = 50, progress=None) -> Check:
    """Read the whole file and report what is wrong with it (the first `keep` errors, and how many)."""
    found = Check()
    for row in rows(path, fmt, now_ms):
        if isinstance(row, Row):
            found.rows += 1
            found.deletes += row.profile is None
            found.hashes.append(hash(row.customer_id))
            size = row.size
        else:
            line, reason, size = row
            found.error_count += 1
            if len(found.errors) < keep:
                found.errors.append((line, reason))
        if progress is not None:
            progress(size)
    return found


# -- one row ---------------------------------------------------------------------------------------
def to_profile(raw: dict, now_ms: int) -> tuple[str, dict | None]:
    """(customer_id, CustomerProfile record, or None for a tombstone) from a row's fields; RowError if it cannot be."""
    unknown = sorted(k for k in raw if k not in FIELDS and k != DELETE)
    if unknown:
        raise RowError(f"unknown field(s) {', '.join(map(repr, unknown[:5]))}; a profile has {', '.join(FIELDS)}")
    customer_id = _text(raw.get("customer_id"), "customer_id", MAX_ID_CHARS)
    if not customer_id:
        raise RowError("customer_id is empty")
    if _boolean(raw.get(DELETE), DELETE):
        return customer_id, None
    clv = _number(raw.get("clv"), "clv")
    channels = _list(raw.get("channels_opted_out"), "channels_opted_out")
    for ch in channels:
        _channel(ch, "channels_opted_out")
    preferred = _text(raw.get("preferred_channel"), "preferred_channel", 64) or None
    if preferred is not None:
        _channel(preferred, "preferred_channel")
    tz = _text(raw.get("timezone"), "timezone", 64) or "UTC"
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise RowError(f"timezone {tz!r} is not an IANA time zone (e.g. Europe/Amsterdam)") from None
    return customer_id, {
        "customer_id": customer_id,
        "updated_ts": _timestamp(raw.get("updated_ts"), now_ms),
        "display_name": _text(raw.get("display_name"), "display_name", MAX_ID_CHARS) or None,
        "segment": _text(raw.get("segment"), "segment", 64) or "standard",
        "clv": 0.0 if clv is None else clv,
        "preferred_channel": preferred,
        "marketing_consent": _boolean(raw.get("marketing_consent"), "marketing_consent"),
        "opted_out": _boolean(raw.get("opted_out"), "opted_out"),
        "channels_opted_out": channels,
        "timezone": tz,
        "attributes": _attributes(raw.get("attributes") or {}),
    }


def _text(value, name: str, most: int) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{name} must be text, got {type(value).__name__}")
    text = str(value).strip()
    if len(text) > most:
        raise RowError(f"{name} is longer than {most} characters")
    if any(ord(c) < 32 for c in text):
        raise RowError(f"{name} holds a control character")
    return text


def _boolean(value, name: str) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RowError(f"{name} must be true or false, got {str(value)[:40]!r}")


def _number(value, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise RowError(f"{name} must be a number, got a boolean")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError(f"{name} must be a number, got {str(value)[:40]!r}") from None
    if not math.isfinite(number) or number < 0:
        raise RowError(f"{name} must be a finite number of at least 0, got {str(value)[:40]}")
    return number


def _timestamp(value, now_ms: int) -> int:
    """Milliseconds since the epoch from a number of them or an ISO 8601 time with its zone; missing: now."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return now_ms
    if isinstance(value, float) and not math.isfinite(value):
        raise RowError(f"updated_ts must be a time, got {value}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) or (isinstance(value, str) and _DIGITS.match(value.strip())):
        ms = int(value)
    else:
        try:
            moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise RowError(f"updated_ts must be milliseconds or an ISO 8601 time, got {str(value)[:40]!r}") from None
        if moment.tzinfo is None:
            raise RowError(f"updated_ts {str(value)[:40]!r} has no time zone (add Z or +01:00)")
        ms = int(moment.astimezone(timezone.utc).timestamp() * 1000)
    if not 0 <= ms <= now_ms + 86_400_000:
        raise RowError(f"updated_ts {value} is not a time between 1970 and tomorrow")
    return ms


def _list(value, name: str) -> list[str]:
    if value is None or value == "":
        return []
    items = value.split(";") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise RowError(f"{name} must be a list (in CSV: separated by ';')")
    return [_text(item, name, 64) for item in items if str(item).strip()]


def _channel(channel: str, name: str) -> None:
    if channel not in CHANNELS:
        raise RowError(f"{name}: {channel!r} is not a channel; one of {', '.join(sorted(CHANNELS))}")


def _attributes(value) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RowError("attributes must be an object of names to values")
    if len(value) > MAX_ATTRIBUTES:
        raise RowError(f"{len(value)} attributes; at most {MAX_ATTRIBUTES}")
    return {_text(k, "an attribute name", 64): _text(v, f"attribute {str(k)[:40]!r}", MAX_ATTRIBUTE_CHARS)
            for k, v in value.items() if v is not None}


# -- the two formats -------------------------------------------------------------------------------
def _lines(f) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) with a bound on each line, without reading a long one whole into memory."""
    number = 0
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of it
                line = f.readline(MAX_LINE_BYTES)
            yield number, b""  # too long: the caller reports it
            continue
        yield number, line


def _jsonl_rows(f, now_ms: int):
    for number, line in _lines(f):
        if not line:
            yield number, f"the line is longer than {MAX_LINE_BYTES // 1024} KiB", MAX_LINE_BYTES
            continue
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            if not isinstance(raw, dict):
                raise RowError("a line must be a JSON object")
            customer_id, profile = to_profile(raw, now_ms)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON: {exc.msg} at column {exc.colno}", len(line)
            continue
        except (RowError, UnicodeDecodeError) as exc:
            yield number, str(exc), len(line)
            continue
        except RecursionError:
            yield number, "the JSON is nested too deeply", len(line)
            continue
        except (ValueError, OverflowError) as exc:  # e.g. a number too large for a float
            yield number, f"a value cannot be read: {exc}", len(line)
            continue
        yield Row(number, customer_id, profile, len(line))


def _csv_rows(f, now_ms: int):
    lines = _lines(f)
    first = next(lines, None)
    if first is None:
        return
    header_line, header_raw = first
    try:
        header = next(csv.reader([header_raw.decode("utf-8-sig")]))
    except (UnicodeDecodeError, csv.Error) as exc:
        yield header_line, f"the header row cannot be read: {exc}", len(header_raw)
        return
    header = [h.strip() for h in header]
    plain = [h for h in header if not h.startswith("attributes.")]
    unknown = [h for h in plain if h not in FIELDS and h != DELETE]
    if "customer_id" not in header or unknown or "attributes" in header or len(set(header)) != len(header):
        reason = ("the header has no customer_id column" if "customer_id" not in header else
                  f"unknown column(s) {', '.join(map(repr, unknown[:5]))}; a profile has {', '.join(FIELDS)} "
                  "and attributes.<name>" if unknown else
                  "attributes are columns named attributes.<name>" if "attributes" in header else
                  "a column is named twice")
        yield header_line, reason, len(header_raw)
        return
    for number, raw_line in lines:
        if not raw_line:
            yield number, f"the line is longer than {MAX_LINE_BYTES // 1024} KiB", MAX_LINE_BYTES
            continue
        if not raw_line.strip():
            continue
        if raw_line.count(b'"') % 2:  # a quoted field left open: it goes on on the next line
            yield number, ('an unbalanced quote: a quoted field spans lines, or a quote in a field is not '
                           'written "" inside a quoted field'), len(raw_line)
            continue
        try:
            text = raw_line.decode("utf-8")
            values = next(csv.reader(io.StringIO(text)))
        except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
            yield number, f"the row cannot be read as CSV: {exc}", len(raw_line)
            continue
        if len(values) != len(header):
            yield number, f"{len(values)} values for {len(header)} columns", len(raw_line)
            continue
        raw: dict = {"attributes": {}}
        for name, value in zip(header, values):
            if name.startswith("attributes."):
                if value != "":
                    raw["attributes"][name[len("attributes."):]] = value
            else:
                raw[name] = value if value != "" else None
        try:
            customer_id, profile = to_profile(raw, now_ms)
        except (RowError, ValueError, OverflowError) as exc:
            yield number, str(exc), len(raw_line)
            continue
        yield Row(number, customer_id, profile, len(raw_line))


def now_ms() -> int:
    return int(time.time() * 1000)


# -- publishing ------------------------------------------------------------------------------------
@dataclass
class Loaded:
    published: int = 0
    failed: int = 0
    first_failure: str | None = None
    stopped_at_line: int | None = None


def publish(settings, path: Path, fmt: str, now: int, progress=None) -> Loaded:
    """Send every row of a checked file to engage.profiles, keyed by customer_id (murmur2), a tombstone for `_delete`.

    Sends are batched by the client (not one wait per row); each row's ack is counted, so a broker
    that refuses some is reported with how many, never silently.
    """
    from streams import clients, topics

    topic = settings.topic(topics.PROFILES.name)
    codec = clients.codec(settings)
    producer = clients.producer(settings, **{"linger.ms": 50, "batch.num.messages": 10_000,
                                             "queue.buffering.max.messages": 200_000})
    done = Loaded()

    def acked(err, _msg):
        if err is None:
            done.published += 1
        else:
            done.failed += 1
            done.first_failure = done.first_failure or str(err)

    for n, row in enumerate(rows(path, fmt, now)):
        if not isinstance(row, Row):  # the file changed since it was checked
            done.stopped_at_line = row[0]
            break
        value = None if row.profile is None else codec.encode(topic, topics.PROFILES.schema, row.profile)
        clients.produce_when_room(producer, topic, pause_s=0.1, key=row.customer_id.encode(), value=value, on_delivery=acked)
        if n % 1000 == 0:
            producer.poll(0)
        if progress is not None:
            progress(row.size)
    remaining = producer.flush(60)
    done.failed += remaining
    if remaining and not done.first_failure:
        done.first_failure = f"{remaining} not acknowledged within 60 s"
    return done
