"""What every anchor shares: its arguments, decoding an Interaction, the per-visitor job, and the figures it reports.

The job (the same in each): decode the event, keep a per-visitor state (events seen, latest time,
pages), and send one output per 20 events of a visitor. The anchors are measured beside the worker
by `engage bench`; they are never imported by the product.
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import time
from pathlib import Path

import fastavro



def _plain(schema):
    """The schema with logical types dropped: times stay epoch milliseconds, as the engine reads them."""
    if isinstance(schema, list):
        return [_plain(s) for s in schema]
    if isinstance(schema, dict):
        if "logicalType" in schema and isinstance(schema.get("type"), str):
            return schema["type"]
        return {k: _plain(v) for k, v in schema.items()}
    return schema


SCHEMA = fastavro.parse_schema(_plain(json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "Interaction.avsc").read_text())))
HEADER = 10  # Avro single-object encoding: C3 01 and an 8-byte fingerprint, then the body
EVERY = 20


def args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--events", type=int, required=True)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--mode", default="")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def decode(data: bytes) -> dict:
    return fastavro.schemaless_reader(io.BytesIO(data[HEADER:]), SCHEMA)


def step(state: dict | None, ev: dict) -> tuple[dict, bool]:
    """The visitor's new state, and whether this event sends an output."""
    state = state or {"n": 0, "last": 0, "pages": 0}
    state["n"] += 1
    state["last"] = max(state["last"], ev["ts"])
    state["pages"] += ev["type"] == "page_view"
    return state, state["n"] % EVERY == 0


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Clock:
    """Wall and CPU time from the first event to the last."""

    def __init__(self, events: int):
        self.events, self.n, self.t0, self.c0 = events, 0, None, None

    def saw(self, n: int = 1) -> bool:
        if self.t0 is None:
            self.t0, self.c0 = time.monotonic(), cpu_s()
        self.n += n
        return self.n >= self.events

    def write(self, out: Path, name: str) -> None:
        wall, cpu = time.monotonic() - self.t0, cpu_s() - self.c0
        out.write_text(json.dumps({"anchor": name, "events": self.n, "seconds": round(wall, 3),
                                   "events_per_s": round(self.n / wall, 1), "cpu_us_per_event": round(cpu / self.n * 1e6, 1)}))
