"""Decides how detection runs on Faust: per-visitor state and timer index in RocksDB, signals out, idle ticks.

The agent reads engage.events and its own tick topic (co-partitioned), so timers of an idle
partition fire on the worker that owns it, and table writes land in that partition's changelog.
Purchases, cancellations and calls also go to engage.conversions under the keys decisions use,
for attribution: detection is where a visitor's customer id is known.
State is written only after the signals are acknowledged.
"""
from __future__ import annotations

import logging
import time

from streams import topics
from streams.app import Engine
from streams.attribution.attribute import GOAL_EVENTS
from streams.detection.detector import Detector
from streams.detection.idle import IdlePartitions
from streams.detection.partition import Tx
from streams.detection.state import CUSTOMER
from streams.rules.book import RuleBook
from streams.detection.visitor import InvalidEvent

log = logging.getLogger(__name__)
STAGE = "detection"


def check_event(msg, ev: dict) -> None:
    # the event's own contract is checked by Detector.on_event, before it changes anything
    if msg.key is None or msg.key.decode("utf-8", "replace") != ev["visitor_id"]:
        raise InvalidEvent("the record key must be the visitor_id")


def conversion_keys(ev: dict, visitor_state: dict) -> tuple[dict, list[str]]:
    """A purchase, cancellation or call, with the customer the visitor is known as, and the keys decisions
    about it may have: the customer's and the visitor's (a decision made before the login is the visitor's)."""
    customer = ev["customer_id"] or visitor_state.get(CUSTOMER)
    keys = [ev["visitor_id"]] + ([customer] if customer and customer != ev["visitor_id"] else [])
    return {**ev, "customer_id": customer}, keys


def register(engine: Engine, book: RuleBook):
    app, settings = engine.app, engine.settings
    partitions = settings.partitions
    visitor_to_state = app.Table(topics.VISITOR_TO_STATE, default=None, partitions=partitions, key_type=str)
    partition_to_timers = app.Table(topics.PARTITION_TO_TIMERS, default=None, partitions=partitions, key_type=str)
    detector = Detector(book.rules, lateness_ms=settings.allowed_lateness_ms, ttl_ms=settings.visitor_ttl_ms,
                        max_ahead_ms=settings.max_event_ahead_ms, max_age_ms=settings.max_event_age_ms)
    events_name = settings.topic(topics.EVENTS.name)
    ticks_name = settings.topic(topics.DETECTION_TICKS.name)
    channel = app.topic(events_name, ticks_name, key_serializer="raw", value_serializer="raw", partitions=partitions)
    idle = IdlePartitions(settings.idle_tick_ms / 1000.0)

    @app.agent(channel, name="detect_signals")
    async def detect_signals(stream):
        async for event in stream.events():
            msg = event.message
            tx = Tx(visitor_to_state, partition_to_timers)
            # DecodeError and InvalidEvent are ValueErrors (bad input); after a fault, clocks are read afresh
            async with engine.guard(STAGE, msg, on_fault=detector.forget_partitions):
                if msg.topic == ticks_name:
                    tick = engine.decode(topics.DETECTION_TICKS, msg.value)
                    signals = detector.on_tick(tx, msg.partition, tick["idle_ms"])
                else:
                    ev = engine.decode(topics.EVENTS, msg.value)
                    check_event(msg, ev)
                    if idle.saw_event(msg.partition, time.time()):
                        log.info("detection: first event of %s[%d] at offset %d", msg.topic, msg.partition, msg.offset)
                    detection = detector.on_event(tx, msg.partition, ev)
                    signals = detection.signals
                    if ev["type"] in GOAL_EVENTS and not detection.duplicate:
                        conversion, keys = conversion_keys(ev, detection.state)
                        for key in keys:
                            await engine.send(topics.CONVERSIONS, key, conversion)
                for signal in signals:
                    await engine.send(topics.SIGNALS, signal["visitor_id"], signal)
                # State after the signals are acked: a crash in between replays the event against the old
                # state and re-sends the same signal ids, instead of dropping the event as a duplicate.
                tx.apply()

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
