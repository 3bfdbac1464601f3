"""Decides what is kept of a record a stage cannot use: the whole original, where it came from, and why."""
from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def dead_letter(stage: str, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                error: Exception | str) -> dict:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {"ts": int(time.time() * 1000), "stage": stage, "topic": topic, "partition": partition, "offset": offset,
            "key": key, "value": value, "error": reason[:2000]}


def log_dead_letter(record: dict) -> None:
    # Topic, offset and reason only: the bytes may hold personal data and never reach the log.
    log.warning("dead-lettered %s[%d]@%d at %s: %s", record["topic"], record["partition"], record["offset"],
                record["stage"], record["error"])
