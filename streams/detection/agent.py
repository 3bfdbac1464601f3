"""Decides how detection runs on Faust: per-visitor state and timer index in RocksDB, signals out, idle ticks.

The agent reads engage.events and its own tick topic (co-partitioned), so timers of an idle
partition fire on the worker that owns it, and table writes land in that partition's changelog.
Purchases, cancellations and calls also go to engage.conversions under the keys decisions use,
for attribution: detection is where a visitor's customer id is known.
Records are taken in batches (what is waiting, up to ENGAGE_BATCH_MAX): each key's state is
written once per batch, only after the batch's signals are acknowledged, and the batch's offsets
are acked only after that.
"""
from __future__ import annotations

import logging
import time

from streams import topics
from streams.app import Engine
from streams.detection.batch import EVENT, TICK, run_batch
from streams.detection.detector import Detector
from streams.detection.encoding import Encoded
from streams.detection.idle import IdlePartitions
from streams.detection.partition import Tx
from streams.detection.visitor import InvalidEvent
from streams.rules.book import RuleBook

log = logging.getLogger(__name__)
STAGE = "detection"


def check_event(msg, ev: dict) -> None:
    # the event's own contract is checked by Detector.on_event, before it changes anything
    if msg.key is None or msg.key.decode("utf-8", "replace") != ev["visitor_id"]:
        raise InvalidEvent("the record key must be the visitor_id")


def register(engine: Engine, book: RuleBook):
    app, settings = engine.app, engine.settings
    partitions = settings.partitions
    # values are bytes the agent encodes itself (encoding.py): compact, and JSON of earlier releases still read
    visitor_to_state = app.Table(topics.VISITOR_TO_STATE, default=None, partitions=partitions, key_type=str,
                                 value_type=bytes)
    partition_to_timers = app.Table(topics.PARTITION_TO_TIMERS, default=None, partitions=partitions, key_type=str,
                                    value_type=bytes)
    detector = Detector(book.rules, lateness_ms=settings.allowed_lateness_ms, ttl_ms=settings.visitor_ttl_ms,
                        max_ahead_ms=settings.max_event_ahead_ms, max_age_ms=settings.max_event_age_ms)
    events_name = settings.topic(topics.EVENTS.name)
    ticks_name = settings.topic(topics.DETECTION_TICKS.name)
    channel = app.topic(events_name, ticks_name, key_serializer="raw", value_serializer="raw", partitions=partitions)
    idle = IdlePartitions(settings.idle_tick_ms / 1000.0)

    def read(msg) -> tuple[str, dict]:
        if msg.topic == ticks_name:
            return TICK, engine.decode(topics.DETECTION_TICKS, msg.value)
        ev = engine.decode(topics.EVENTS, msg.value)
        check_event(msg, ev)
        return EVENT, ev

    def new_tx() -> Tx:
        return Tx(Encoded(visitor_to_state), Encoded(partition_to_timers))

    @app.agent(channel, name="detect_signals")
    async def detect_signals(stream):
        async for events in engine.batches(stream, settings.batch_max):
            messages = [event.message for event in events]
            for msg in messages:
                if msg.topic == events_name and idle.saw_event(msg.partition, time.time()):
                    log.info("detection: first event of %s[%d] at offset %d", msg.topic, msg.partition, msg.offset)
            # each record read, and each key written, in its own partition's store (Engine.in_partition_of)
            batch = run_batch(detector, new_tx, messages, read, enter=lambda i: engine.in_partition_of(events[i]))
            await engine.send_all(batch.outputs)
            for i, exc, fault in batch.rejected:
                await engine.reject(STAGE, messages[i], exc, fault=fault)
            # State after the outputs are acked: a crash in between replays the events against the old
            # state and re-sends the same signal ids, instead of dropping the events as duplicates.
            event_of = {msg.partition: event for msg, event in zip(messages, events)}
            batch.tx.apply(enter=lambda partition: engine.in_partition_of(event_of[partition]))
            await engine.ack(stream, events)

    @app.on_partitions_revoked.connect
    async def forget_cached_clocks(app, revoked, **kwargs) -> None:  # noqa: ARG001 - Faust's signal signature
        # another worker may own these partitions next and change their timers: read them afresh
        detector.forget_partitions()
        idle.revoked(tp.partition for tp in revoked if tp.topic == events_name)

    @app.on_partitions_assigned.connect
    async def count_idle_from_assignment(app, assigned, **kwargs) -> None:  # noqa: ARG001
        idle.assigned((tp.partition for tp in assigned if tp.topic == events_name), time.time())

    @app.timer(interval=settings.idle_tick_ms / 1000.0, name="tick_idle_partitions")
    async def tick_idle_partitions():
        """Move the clock of partitions that have nothing to read, so their deadlines still fire."""
        if not app.tables.recovery.completed.is_set():
            return  # tables still restoring: the clocks are not there yet, and positions not sought
        now = time.time()
        for tp in list(app.consumer.assignment()):
            if tp.topic != events_name:
                continue
            p = tp.partition
            idle_ms = idle.idle_ms(p, now)
            if idle_ms is None:
                continue
            position = await app.consumer.position(tp)
            if position is None or position < app.consumer.highwater(tp):
                continue  # events are waiting: their own time will move the clock
            # Nothing to read and nothing came for a while: the partition's clock moves on from its
            # latest event time at the wall clock's pace. (Not to the wall clock itself: a producer
            # replaying history that pauses would otherwise fire its pending deadlines early.)
            tick = {"partition": p, "wall_ts": int(now * 1000), "idle_ms": idle_ms,
                    "watermark_ts": detector.max_ts.get(p, 0) + idle_ms}
            await engine.topic[topics.DETECTION_TICKS.name].send(value=engine.encode(topics.DETECTION_TICKS, tick),
                                                                  partition=p)

    return detect_signals, visitor_to_state, partition_to_timers, detector
