"""Decides how detection runs on Faust: per-visitor state in RocksDB, signals out, bad records dead-lettered."""
from __future__ import annotations

import logging

from streams import topics
from streams.app import Engine
from streams.codec import DecodeError
from streams.detection.engine import InvalidEvent, detect
from streams.detection.rules import DetectionRuleSet

log = logging.getLogger(__name__)
STAGE = "detection"


def register(engine: Engine, rules: DetectionRuleSet):
    app = engine.app
    visitor_to_state = app.Table("visitor_to_state", default=None, partitions=engine.settings.partitions,
                                 key_type=str)

    @app.agent(engine.topic[topics.EVENTS.name], name="detect_signals")
    async def detect_signals(stream):
        async for event in stream.events():
            msg = event.message
            try:
                ev = engine.decode(topics.EVENTS, msg.value)
                if msg.key is None or msg.key.decode("utf-8", "replace") != ev["visitor_id"]:
                    raise InvalidEvent("the record key must be the visitor_id")
                result = detect(visitor_to_state.get(ev["visitor_id"]), ev, rules)
            except (DecodeError, InvalidEvent) as exc:
                await engine.dead_letter(STAGE, msg, exc)
                continue
            if result.duplicate:
                continue
            for signal in result.signals:
                await engine.send(topics.SIGNALS, signal["visitor_id"], signal)
            # State after the signals are acked: a crash in between replays the event against the old
            # state and re-sends the same signal ids, instead of dropping the event as a duplicate.
            visitor_to_state[ev["visitor_id"]] = result.state

    return detect_signals, visitor_to_state
