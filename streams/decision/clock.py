"""Decides a customer's wall-clock time: their IANA time zone, UTC when it is unknown; DST is the zone database's."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def local_time(ts_ms: int, tz: str | None) -> datetime:
    try:
        zone = ZoneInfo(tz) if tz else timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        zone = timezone.utc
    return datetime.fromtimestamp(ts_ms / 1000, zone)
