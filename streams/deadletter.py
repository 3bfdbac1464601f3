"""Decides what is kept of a record a stage cannot use: the original, where it came from, and why.

A dead-letter record must fit a Kafka message itself: an original that does not leave room for the
metadata (one just under the topic's limit) is kept as a reference instead: topic, partition and
offset, its length and SHA-256, and its first bytes. Nothing is dropped silently either way.
"""
from __future__ import annotations

import hashlib
import logging
import time
import traceback

log = logging.getLogger(__name__)

# The largest original (key and value) kept whole: Kafka's default message limit is 1 MiB, and the
# dead-letter record adds the topic, the reason and the framing.
MAX_KEPT_BYTES = 900_000
PREFIX_BYTES = 4096  # first bytes kept of an original too large to keep whole


def dead_letter(stage: str, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None,
                error: Exception | str) -> dict:
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    record = {"ts": int(time.time() * 1000), "stage": stage, "topic": topic, "partition": partition, "offset": offset,
              "key": key, "value": value, "error": reason[:2000], "truncated": False,
              "value_length": None if value is None else len(value),
              "value_sha256": None if value is None else hashlib.sha256(value).hexdigest()}
    if len(key or b"") + len(value or b"") > MAX_KEPT_BYTES:
        record = as_reference(record)
    return record


def as_reference(record: dict) -> dict:
    """The record with only the first bytes of its key and value: the reference, length and hash say the rest."""
    return {**record, "key": None if record["key"] is None else record["key"][:PREFIX_BYTES],
            "value": None if record["value"] is None else record["value"][:PREFIX_BYTES], "truncated": True}


def log_fault(stage: str, message, exc: Exception) -> str:
    """Log a fault of ours on a record (`message`: topic, partition, offset) and return the dead-letter reason.

    The log gets the type and place only: the exception's text may quote the record, which may be
    personal data. The dead-letter record, which holds the record anyway, gets it all.
    """
    where = traceback.extract_tb(exc.__traceback__)[-1]
    log.error("fault at %s on %s[%d]@%d: %s at %s:%d", stage, message.topic, message.partition, message.offset,
              type(exc).__name__, where.filename, where.lineno)
    return f"fault in {stage}: {type(exc).__name__}: {exc}"


def log_dead_letter(record: dict) -> None:
    # Topic, offset and reason only: the bytes may hold personal data and never reach the log.
    log.warning("dead-lettered %s[%d]@%d at %s%s: %s", record["topic"], record["partition"], record["offset"],
                record["stage"], f" (kept as a reference: {record['value_length']:,} bytes)" if record["truncated"] else "",
                record["error"])
