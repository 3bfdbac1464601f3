"""Decides what a browser may put on engage.events: bounded, typed web interactions from allowed origins, at a bounded rate, answered 202 once the broker has them.

`POST /events` takes one event or `{"events": [...]}` (at most MAX_EVENTS) as JSON, at most
MAX_BODY_BYTES. Each event is an object with exactly these fields: `event_id` and `visitor_id`
(1 to 128 characters, no control characters), `type` (lower-case letters and `_`, at most 32),
and optionally `path`, `query`, `value` (a finite number) and `attributes` (at most 16 strings).
The collector sets the rest: `ts` is the time it received the event (a browser's clock is not
trusted), `channel` is `web`, and `customer_id` is always null: a browser cannot say who it is, or
anyone could claim any customer's offers and context; the site's back end does, with an
`IdentityLink` or an event of its own. Each client address gets COLLECTOR_RATE requests a second
and each visitor VISITOR_RATE events a second (bursts of twice as many), beyond which 429. With an
`Origin` header (every browser's cross-site POST), the origin must be in ENGAGE_COLLECTOR_ORIGINS;
preflight requests are answered for those only. Text is kept as text: whatever renders it
escapes it (the console, the in-page messages, the e-mail's HTML part).
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import threading
import time

from streams import clients, topics
from streams.httpguard import RateLimit, Refused
from streams.settings import Settings

MAX_BODY_BYTES = 16 * 1024
MAX_EVENTS = 50
MAX_ID_CHARS = 128
MAX_PATH_CHARS, MAX_QUERY_CHARS = 2048, 512
MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTE_CHARS = 16, 64, 256
COLLECTOR_RATE, VISITOR_RATE = 50.0, 20.0  # requests a second per client address; events a second per visitor
ACK_TIMEOUT_S = 10.0
FIELDS = frozenset({"event_id", "visitor_id", "type", "path", "query", "value", "attributes"})
_TYPE = re.compile(r"[a-z_]{1,32}")


def _text(event: dict, name: str, most: int, required: bool = False) -> str | None:
    value = event.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > most:
        raise Refused(400, f"{name} must be a string of 1 to {most} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise Refused(400, f"{name} must not hold control characters")
    return value


def interaction(event, now_ms: int) -> dict:
    """The Interaction for one browser event, or Refused(400) saying what is wrong with it."""
    if not isinstance(event, dict):
        raise Refused(400, "an event is a JSON object")
    unknown = sorted(set(event) - FIELDS)
    if unknown:
        raise Refused(400, f"unknown field {unknown[0][:32]!r} (an event has {', '.join(sorted(FIELDS))})")
    kind = _text(event, "type", 32, required=True)
    if not _TYPE.fullmatch(kind):
        raise Refused(400, "type is lower-case letters and '_' only")
    value = event.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise Refused(400, "value must be a finite number")
    attributes = event.get("attributes") or {}
    if not isinstance(attributes, dict) or len(attributes) > MAX_ATTRIBUTES:
        raise Refused(400, f"attributes must be an object of at most {MAX_ATTRIBUTES} strings")
    for k, v in attributes.items():
        if not isinstance(v, str) or len(k) > MAX_ATTRIBUTE_KEY_CHARS or len(v) > MAX_ATTRIBUTE_CHARS:
            raise Refused(400, f"attribute names are at most {MAX_ATTRIBUTE_KEY_CHARS} characters and values "
                               f"strings of at most {MAX_ATTRIBUTE_CHARS}")
    return {"event_id": _text(event, "event_id", MAX_ID_CHARS, required=True),
            "visitor_id": _text(event, "visitor_id", MAX_ID_CHARS, required=True), "customer_id": None,
            "ts": now_ms, "channel": "web", "type": kind, "path": _text(event, "path", MAX_PATH_CHARS),
            "query": _text(event, "query", MAX_QUERY_CHARS), "value": None if value is None else float(value),
            "attributes": dict(attributes)}


def events_of(body: bytes, now_ms: int) -> list[dict]:
    """The Interactions in a request body, all or none: Refused(400 or 413) names the first problem."""
    if len(body) > MAX_BODY_BYTES:
        raise Refused(413, f"a request is at most {MAX_BODY_BYTES} bytes")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Refused(400, "the body is not JSON") from None
    events = doc["events"] if isinstance(doc, dict) and set(doc) == {"events"} else [doc]
    if not isinstance(events, list) or not 1 <= len(events) <= MAX_EVENTS:
        raise Refused(400, f"events is a list of 1 to {MAX_EVENTS} events")
    out = []
    for i, event in enumerate(events):
        try:
            out.append(interaction(event, now_ms))
        except Refused as refused:
            raise Refused(refused.status, f"event {i}: {refused.reason}") from None
    return out


class Collector:
    """The checks, the rate limits and the producer of one collector process."""

    def __init__(self, settings: Settings, producer=None, clock=time.monotonic):
        self.settings = settings
        self.origins = frozenset(settings.collector_origins)
        self.codec = clients.codec(settings)
        self.topic = settings.topic(topics.EVENTS.name)
        self.producer = producer or clients.producer(settings, **{"linger.ms": 5})
        self.by_client = RateLimit(rate=COLLECTOR_RATE, burst=int(2 * COLLECTOR_RATE), clock=clock)
        self.by_visitor = RateLimit(rate=VISITOR_RATE, burst=int(2 * VISITOR_RATE), clock=clock)
        self.stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="collector-producer", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.producer.poll(0.1)

    def cors(self, origin: str | None) -> dict:
        """The CORS headers for `origin`; Refused(403) for an origin not allowed."""
        if origin is None:
            return {}  # not a browser's cross-site request (a server, curl): nothing to allow
        if origin not in self.origins:
            raise Refused(403, "this origin may not send events (ENGAGE_COLLECTOR_ORIGINS)")
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def accept(self, client: str, body: bytes) -> int:
        """Check, limit and produce the body's events; the number the broker acknowledged (all, or Refused)."""
        self.by_client.take(client)
        events = events_of(body, int(time.time() * 1000))
        for e in events:
            self.by_visitor.take(e["visitor_id"])
        loop = asyncio.get_running_loop()
        acks = [loop.create_future() for _ in events]
        for e, ack in zip(events, acks):
            def done(err, _msg, ack=ack):
                loop.call_soon_threadsafe(lambda: ack.done() or ack.set_result(err))

            self.producer.produce(self.topic, key=e["visitor_id"].encode(),
                                  value=self.codec.encode(self.topic, topics.EVENTS.schema, e), on_delivery=done)
        try:
            errors = await asyncio.wait_for(asyncio.gather(*acks), ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise Refused(503, "the events could not be stored now; send them again") from None
        if any(err is not None for err in errors):
            raise Refused(503, "the events could not be stored now; send them again")
        return len(events)

    def close(self) -> None:
        self.stop.set()
        self.producer.flush(10)


def app(collector: Collector):
    """The aiohttp application: POST /events, and the CORS preflight for it."""
    from aiohttp import web

    async def events(request: web.Request) -> web.Response:
        headers = {}
        try:
            headers = collector.cors(request.headers.get("Origin"))
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise Refused(413, f"a request is at most {MAX_BODY_BYTES} bytes")
            body = await request.content.read(MAX_BODY_BYTES + 1)
            accepted = await collector.accept(request.remote or "?", body)
            return web.json_response({"accepted": accepted}, status=202, headers=headers)
        except Refused as refused:
            return web.json_response({"error": refused.reason}, status=refused.status, headers=headers)

    async def preflight(request: web.Request) -> web.Response:
        try:
            headers = collector.cors(request.headers.get("Origin"))
        except Refused as refused:
            return web.json_response({"error": refused.reason}, status=refused.status)
        return web.Response(status=204, headers={**headers, "Access-Control-Allow-Methods": "POST",
                                                 "Access-Control-Allow-Headers": "Content-Type",
                                                 "Access-Control-Max-Age": "600"})

    application = web.Application(client_max_size=MAX_BODY_BYTES)
    application.router.add_post("/events", events)
    application.router.add_route("OPTIONS", "/events", preflight)
    return application


def run_collector(settings: Settings) -> None:
    """Serve the collector until interrupted (`engage collector`)."""
    from aiohttp import web

    collector = Collector(settings)
    try:
        web.run_app(app(collector), host=settings.collector_bind, port=settings.collector_port, access_log=None,
                    print=lambda *_: None)
    finally:
        collector.close()
