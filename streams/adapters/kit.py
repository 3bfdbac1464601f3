"""Decides how a channel adapter takes its deliveries: only its channels', each once, in time or reported expired, committed only after the channel took it and the outcome was acked.

An adapter is a class with a `name`, the `channels` it serves (None: all) and `deliver(delivery)`,
which hands one Delivery to the channel and returns the outcome types to report (e.g. ["shown"]);
it raises `Retry` when the channel cannot take it now (tried again with a growing pause, up to
MAX_ATTEMPTS) and `Refused` when it never will (a bad address, a bounce). `run_adapter` does the
rest, in consumer group `<app id>-<name>-adapter` (scale an adapter by starting more of it):

  - a new group starts at the deliveries made since the adapter started (`--from-beginning`: at
    the first one kept), and then wherever it committed;
  - a record of another channel is skipped by its `channel` header, without decoding it;
  - an undecodable record goes to engage.deadletter with the reason;
  - a delivery id already handled by this process is dropped (a worker that crashed after sending
    a delivery sends it again, with the same id);
  - a delivery whose `expires_at` has passed is reported `expired`, not delivered;
  - a delivery refused, still failing after MAX_ATTEMPTS, or failing with a fault of the adapter's,
    goes to engage.deadletter with the reason and is reported `failed`; one whose recipient is not
    there now (`Gone`: a visitor who left the site) is reported `failed` alone;
  - the outcomes (and dead letters) are acknowledged by the broker before the record's offset is
    committed, so a crash repeats at most the record in hand, under the same delivery id.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from confluent_kafka import OFFSET_END, KafkaException, TopicPartition

from streams import clients, metrics, topics
from streams.codec import DecodeError
from streams.runtime.runner import Record, Stopped, dead_letter_item, deliver
from streams.settings import Settings

log = logging.getLogger(__name__)
SEEN_IDS = 100_000  # delivery ids remembered per process (the oldest forgotten first)
MAX_ATTEMPTS = 5
FIRST_PAUSE_S, MOST_PAUSE_S = 0.5, 30.0


class Retry(Exception):
    """The channel cannot take the delivery now, and may later."""


class Refused(Exception):
    """The channel will never take this delivery; the message says why."""


class Gone(Exception):
    """The person is not there to be reached on this channel now (a visitor who left the site): reported `failed`,
    not dead-lettered, as nothing is wrong with the record."""


class Adapter:
    name = "adapter"
    channels: frozenset[str] | None = None  # the `channel` header values it serves; None: every channel

    def deliver(self, delivery: dict) -> list[str]:
        raise NotImplementedError


class SeenIds:
    """Ids handled lately, the oldest forgotten beyond `limit`."""

    def __init__(self, limit: int = SEEN_IDS):
        self.limit, self._ids = limit, OrderedDict()

    def add(self, delivery_id: str) -> bool:
        """True the first time an id is seen."""
        if delivery_id in self._ids:
            return False
        self._ids[delivery_id] = None
        if len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True


def outcome_for(d: dict, kind: str, now_ms: int, source: str) -> dict:
    """An Outcome of delivery `d`; its id is the delivery's and the kind's, so a repeat is recognised downstream."""
    return {"outcome_id": f"{d['delivery_id']}-{kind}", "key": d["key"], "ts": now_ms, "type": kind,
            "delivery_id": d["delivery_id"], "decision_id": d["decision_id"], "action_id": d["action_id"],
            "channel": d["channel"], "visitor_id": d["visitor_id"], "customer_id": d["customer_id"],
            "value": None, "source": source}


def channel_of(headers) -> str | None:
    for name, value in headers or ():
        if name == "channel":
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


class AdapterLoop:
    """One adapter over a consumer and a producer (given in tests; built from the settings otherwise)."""

    def __init__(self, settings: Settings, adapter: Adapter, *, stop: threading.Event | None = None,
                 from_beginning: bool = False, consumer=None, producer=None, clock=time.time):
        self.settings, self.adapter = settings, adapter
        self.stop = stop or threading.Event()
        self.codec = clients.codec(settings)
        self.consumer = consumer or clients.consumer(settings, f"{settings.app_id}-{adapter.name}-adapter",
                                                     offset_reset="earliest" if from_beginning else "latest",
                                                     log_level=None)
        self.producer = producer or clients.producer(settings)
        self.clock = clock
        self.seen = SeenIds()
        self.t_delivery = settings.topic(topics.DELIVERY.name)
        self.t_outcomes = settings.topic(topics.OUTCOMES.name)
        self.delivered = 0  # deliveries the channel took
        self.from_beginning = from_beginning
        self.started_ms = int(clock() * 1000)

    def run(self, max_deliveries: int | None = None) -> int:
        """Take deliveries until stopped (or `max_deliveries` were delivered); returns how many were."""
        self.consumer.subscribe([self.t_delivery], on_assign=self._on_assign)
        try:
            while not self.stop.is_set() and (max_deliveries is None or self.delivered < max_deliveries):
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    log.warning("%s adapter: consumer error: %s", self.adapter.name, msg.error())
                    continue
                self.handle(msg)
        except Stopped:
            log.info("%s adapter: stopped with a delivery in hand; it is read again next time", self.adapter.name)
        finally:
            self.consumer.close()
            self.producer.flush(10)
        return self.delivered

    def _on_assign(self, consumer, partitions) -> None:
        """A partition this group never committed on starts at the deliveries made since this adapter started (or
        at the beginning with from_beginning), not at its end when first fetched: a delivery made while a new
        group was joining would never be delivered. Where that cannot be looked up, at the end."""
        if not self.from_beginning:
            try:
                committed = consumer.committed(partitions, timeout=10)
                new = [TopicPartition(tp.topic, tp.partition, self.started_ms) for tp in committed if tp.offset < 0]
                found = {(tp.topic, tp.partition): tp.offset
                         for tp in (consumer.offsets_for_times(new, timeout=10) if new else [])}
                for tp in partitions:
                    if (tp.topic, tp.partition) in found:
                        at = found[(tp.topic, tp.partition)]
                        tp.offset = at if at >= 0 else OFFSET_END  # nothing since then: from the end
            except KafkaException as exc:
                log.warning("%s adapter: where to start new partitions was not found (%s): from their end",
                            self.adapter.name, exc)
        consumer.assign(partitions)

    def handle(self, msg) -> None:
        """One record: what it leads to is sent and acked, then its offset committed."""
        if self.adapter.channels is None or channel_of(msg.headers()) in self.adapter.channels:
            self._send(self.outputs(msg))
        self.consumer.commit(msg, asynchronous=False)

    def outputs(self, msg) -> list[tuple]:
        """What to send for one record of this adapter's channels, as `deliver` takes it."""
        try:
            d = self.codec.decode(self.t_delivery, topics.DELIVERY.schema, msg.value())
        except DecodeError as exc:
            return [self._dead(msg, exc)]
        if not self.seen.add(d["delivery_id"]):
            return []
        now = int(self.clock() * 1000)
        if d["expires_at"] < now:
            return [self._outcome(d, "expired", now)]
        try:
            kinds = self._deliver(d)
        except Gone:
            return [self._outcome(d, "failed", int(self.clock() * 1000))]
        except Refused as exc:
            return [self._dead(msg, exc), self._outcome(d, "failed", int(self.clock() * 1000))]
        except Stopped:
            raise
        except Exception as exc:  # noqa: BLE001 - a fault of the adapter's on one delivery: kept, not the stream
            log.error("%s adapter: delivery %s failed: %s", self.adapter.name, d["delivery_id"][:8], type(exc).__name__)
            return [self._dead(msg, exc), self._outcome(d, "failed", int(self.clock() * 1000))]
        self.delivered += 1
        now = int(self.clock() * 1000)
        return [self._outcome(d, kind, now) for kind in kinds]

    def _deliver(self, d: dict) -> list[str]:
        pause = FIRST_PAUSE_S
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return list(self.adapter.deliver(d))
            except Retry as exc:
                if attempt == MAX_ATTEMPTS:
                    raise Refused(f"still failing after {MAX_ATTEMPTS} attempts: {exc}") from exc
                log.warning("%s adapter: delivery %s not taken (attempt %d): %s", self.adapter.name,
                            d["delivery_id"][:8], attempt, exc)
                if self.stop.wait(pause):
                    raise Stopped() from exc
                pause = min(pause * 2, MOST_PAUSE_S)
        raise AssertionError("unreachable")

    def _outcome(self, d: dict, kind: str, now_ms: int) -> tuple:
        record = outcome_for(d, kind, now_ms, self.adapter.name)
        metrics.m().adapter_outcomes.labels(self.adapter.name, kind).inc()
        return (self.t_outcomes, None, d["key"].encode(),
                self.codec.encode(self.t_outcomes, topics.OUTCOMES.schema, record))

    def _dead(self, msg, reason: Exception) -> tuple:
        record = Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())
        return dead_letter_item(self.settings, self.codec, f"adapter-{self.adapter.name}", record, reason, False)

    def _send(self, items: list[tuple]) -> None:
        """Produce and wait until the broker acked each; a refused send is sent again (never committed past)."""
        deliver(self.producer, items, self.stop, self.codec, f"{self.adapter.name} adapter")


def run_adapter(settings: Settings, adapter: Adapter, stop: threading.Event | None = None, from_beginning: bool = False,
                max_deliveries: int | None = None) -> int:
    return AdapterLoop(settings, adapter, stop=stop, from_beginning=from_beginning).run(max_deliveries)
