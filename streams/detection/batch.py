"""Decides what one batch of detection's input gives: the records to send, the ones to dead-letter, the state to write.

Pure over a Tx (buffered reads and writes), so a batch writes each key once however many of its
records touched it, and nothing is written before the agent has sent the outputs. A record whose
contract is broken (it cannot be decoded, or Detector.on_event refuses it before changing anything)
is set aside as bad input. A fault of ours half-way through a record may have changed state the
earlier records of the batch also changed: the batch is run again from the stored state without
that record, so the others give the very same outputs and the faulty one changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from streams import topics
from streams.attribution.attribute import GOAL_EVENTS
from streams.data.enrich import MERGED_FROM
from streams.data.journey import JOURNEY_EVENTS, moved, step_of_conversion
from streams.codec import DecodeError
from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.state import CUSTOMER
from streams.detection.visitor import InvalidEvent

BAD_INPUT = (DecodeError, InvalidEvent)
EVENT, TICK = "event", "tick"


def conversion_keys(ev: dict, visitor_state: dict) -> tuple[dict, list[str]]:
    """A purchase, cancellation or call, with the customer the visitor is known as, and the keys decisions
    about it may have: the customer's and the visitor's (a decision made before the login is the visitor's)."""
    customer = ev["customer_id"] or visitor_state.get(CUSTOMER)
    keys = [ev["visitor_id"]] + ([customer] if customer and customer != ev["visitor_id"] else [])
    # without the attribute the data stage counts a merged customer's re-keyings in (an event could set it)
    attrs = {k: v for k, v in ev["attributes"].items() if k != MERGED_FROM}
    return {**ev, "customer_id": customer, "attributes": attrs}, keys


def journey_step(ev: dict, visitor_state: dict) -> list:
    """An event that goes to the journey of the customer the device is known as, without a signal (e.g. a
    failed login, for customer rules): straight onto engage.journey-moves, which only the data stage reads.
    Nothing when no customer is known on the device: an anonymous device's journey would only grow."""
    customer = ev["customer_id"] or visitor_state.get(CUSTOMER)
    if not customer:
        return []
    return [moved(customer, ev["visitor_id"], [step_of_conversion(ev)])]


@dataclass
class Batch:
    tx: Tx
    outputs: list = field(default_factory=list)    # (topic spec, key, record), in the order they came out
    rejected: list = field(default_factory=list)   # (index of the record, the exception, a fault of ours?)


def run_batch(detector: Detector, new_tx: Callable[[], Tx], messages: list,
              read: Callable[[object], tuple[str, dict]], enter: Callable[[int], None] | None = None) -> Batch:
    """Detection over `messages` (Kafka records); `read(message)` gives (EVENT, event) or (TICK, tick),
    or raises one of BAD_INPUT. `enter(i)`, when given, is called before the i-th message is processed
    (the agent points Faust's tables at that message's partition)."""
    faulty: dict[int, Exception] = {}
    while True:
        clocks_before = dict(detector.max_ts)
        batch = Batch(new_tx())
        try:
            for i, message in enumerate(messages):
                if i not in faulty:
                    if enter is not None:
                        enter(i)
                    batch.tx.partition = message.partition
                    _one(detector, batch, i, message, read)
        except _Fault as fault:
            # Nothing of this pass is kept: the partition clocks and the Tx go back to before the batch.
            detector.max_ts.clear()
            detector.max_ts.update(clocks_before)
            detector.forget_partitions()
            faulty[fault.index] = fault.exc
            continue
        batch.rejected += [(i, exc, True) for i, exc in faulty.items()]
        batch.rejected.sort(key=lambda r: r[0])
        return batch


class _Fault(Exception):
    def __init__(self, index: int, exc: Exception):
        super().__init__(index)
        self.index, self.exc = index, exc


def _one(detector: Detector, batch: Batch, i: int, message, read) -> None:
    try:
        kind, record = read(message)
    except BAD_INPUT as exc:
        batch.rejected.append((i, exc, False))
        return
    try:
        if kind == TICK:
            signals = detector.on_tick(batch.tx, message.partition, record["idle_ms"])
        else:
            detection = detector.on_event(batch.tx, message.partition, record)
            signals = detection.signals
            if record["type"] in GOAL_EVENTS and not detection.duplicate:
                conversion, keys = conversion_keys(record, detection.state)
                batch.outputs += [(topics.CONVERSIONS, key, conversion) for key in keys]
            elif record["type"] in JOURNEY_EVENTS and not detection.duplicate:
                batch.outputs += journey_step(record, detection.state)
    except InvalidEvent as exc:  # refused before anything changed
        batch.rejected.append((i, exc, False))
        return
    except Exception as exc:  # noqa: BLE001 - any fault of ours: this record is left out, the batch run again
        raise _Fault(i, exc) from exc
    batch.outputs += [(topics.SIGNALS, signal["visitor_id"], signal) for signal in signals]
