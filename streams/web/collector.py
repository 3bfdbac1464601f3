"""Decides what a browser may put on engage.events: bounded, typed web interactions from allowed origins, at a bounded rate, answered 202 once the broker has them.

`POST /events` takes one event or `{"events": [...]}` (at most MAX_EVENTS) as JSON, at most
MAX_BODY_BYTES. Each event is an object with exactly these fields: `event_id` and `visitor_id`
(1 to 128 characters, no control characters), `type` (lower-case letters and `_`, at most 32),
and optionally `path`, `query`, `value` (a finite number) and `attributes` (at most 16 strings).
The collector sets the rest: `ts` is the time it received the event (a browser's clock is not
trusted), `channel` is `web`, and `customer_id` is always null: a browser cannot say who it is, or
anyone could claim any customer's offers and context; the site's back end does, with an
`IdentityLink` or an event of its own. Each client address gets ENGAGE_COLLECTOR_RATE (50) requests
a second and each visitor VISITOR_RATE events a second (bursts of twice as many), beyond which 429. With an
`Origin` header (every browser's cross-site POST), the origin must be in ENGAGE_COLLECTOR_ORIGINS;
preflight requests are answered for those only. Text is kept as text: whatever renders it
escapes it (the console, the in-page messages, the e-mail's HTML part).
"""
from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from pathlib import Path

from streams import clients, metrics, topics
from streams.httpguard import RateLimit, Refused, json_body
from streams.settings import Settings

MAX_BODY_BYTES = 16 * 1024
MAX_EVENTS = 50
MAX_ID_CHARS = 128
MAX_PATH_CHARS, MAX_QUERY_CHARS = 2048, 512
MAX_ATTRIBUTES, MAX_ATTRIBUTE_KEY_CHARS, MAX_ATTRIBUTE_CHARS = 16, 64, 256
VISITOR_RATE = 20.0  # events a second per visitor
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
    doc = json_body(body, MAX_BODY_BYTES)
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
        self.producer = producer or clients.producer(settings, **{"linger.ms": 5})
        rate = settings.collector_rate_per_s
        self.by_client = RateLimit(rate=rate, burst=2 * rate, clock=clock)
        self.by_visitor = RateLimit(rate=VISITOR_RATE, burst=int(2 * VISITOR_RATE), clock=clock)
        self.stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="collector-producer", daemon=True)
        self._poller.start()
        self.pages = None  # the open pages (streams/web/messages.py), made on the server's event loop

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.producer.poll(0.1)

    def cors(self, origin: str | None, own: str | None = None) -> dict:
        """The CORS headers for `origin`; Refused(403) for an origin not allowed. `own`: the collector's own origin
        as the request names it (its pages, such as the demo shop, are always allowed)."""
        if origin is None:
            return {}  # not a browser's cross-site request (a server, curl): nothing to allow
        if origin == own:
            return {}
        if origin not in self.origins:
            raise Refused(403, "this origin may not send events (ENGAGE_COLLECTOR_ORIGINS)")
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def accept(self, client: str, body: bytes) -> int:
        """Check, limit and produce the body's events; the number the broker acknowledged (all, or Refused)."""
        self.by_client.take(client)
        events = events_of(body, int(time.time() * 1000))
        for e in events:
            self.by_visitor.take(e["visitor_id"])
        await self.produce(topics.EVENTS, [(e["visitor_id"], e) for e in events])
        return len(events)

    async def report(self, client: str, body: bytes) -> int:
        """A page's outcome of an offer pushed to it, on engage.outcomes once acked; 0 if reported already."""
        self.by_client.take(client)
        outcome = self.pages.outcome(body, int(time.time() * 1000))
        if outcome is None:
            return 0
        await self.produce(topics.OUTCOMES, [(outcome["key"], outcome)])
        return 1

    async def produce(self, spec: topics.TopicSpec, records: list[tuple[str, dict]]) -> None:
        """Produce (key, record) to `spec`'s topic and wait for every ack; Refused(503) if the broker does not take them."""
        loop = asyncio.get_running_loop()
        topic = self.settings.topic(spec.name)
        acks = [loop.create_future() for _ in records]
        for (key, record), ack in zip(records, acks):
            def done(err, _msg, ack=ack):
                loop.call_soon_threadsafe(lambda: ack.done() or ack.set_result(err))

            self.producer.produce(topic, key=key.encode(), value=self.codec.encode(topic, spec.schema, record),
                                  on_delivery=done)
        try:
            errors = await asyncio.wait_for(asyncio.gather(*acks), ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise Refused(503, "the records could not be stored now; send them again") from None
        if any(err is not None for err in errors):
            raise Refused(503, "the records could not be stored now; send them again")

    def close(self) -> None:
        self.stop.set()
        self.producer.flush(10)


def app(collector: Collector, web_adapter: bool = False):
    """The aiohttp application: POST /events, GET /messages (in-page offers), POST /outcomes, their CORS
    preflights; with `web_adapter`, the web adapter runs beside it, pushing deliveries to the open pages."""
    from aiohttp import web

    from streams.httpguard import check_id
    from streams.web import messages

    def guarded(handler):
        async def handle(request: web.Request) -> web.StreamResponse:
            headers = {}
            try:
                headers = collector.cors(request.headers.get("Origin"), f"{request.scheme}://{request.host}")
                response = await handler(request, headers)
            except Refused as refused:
                response = web.json_response({"error": refused.reason}, status=refused.status, headers=headers)
            metrics.m().collector_requests.labels(request.path, str(response.status)).inc()
            return response
        return handle

    async def metrics_page(request):
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def read(request: web.Request, most: int) -> bytes:
        if request.content_length is not None and request.content_length > most:
            raise Refused(413, f"a request is at most {most} bytes")
        return await request.content.read(most + 1)

    async def events(request, headers):
        accepted = await collector.accept(request.remote or "?", await read(request, MAX_BODY_BYTES))
        return web.json_response({"accepted": accepted}, status=202, headers=headers)

    async def outcomes(request, headers):
        accepted = await collector.report(request.remote or "?", await read(request, messages.MAX_OUTCOME_BYTES))
        return web.json_response({"accepted": accepted}, status=202, headers=headers)

    async def offers(request, headers):
        collector.by_client.take(request.remote or "?")
        visitor = check_id(request.query.get("visitor_id", ""))
        queue = collector.pages.open(visitor)  # refused here, before the stream's headers go out
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
        except BaseException:
            collector.pages.close(visitor, queue)
            raise
        await messages.stream(collector.pages, visitor, queue, response)
        return response

    async def preflight(request, headers):
        if not headers:
            raise Refused(403, "a preflight needs another site's Origin")
        return web.Response(status=204, headers={**headers, "Access-Control-Allow-Methods": "GET, POST",
                                                 "Access-Control-Allow-Headers": "Content-Type",
                                                 "Access-Control-Max-Age": "600"})

    async def start(application):
        collector.pages = messages.Pages(asyncio.get_running_loop())
        if web_adapter:
            from streams.adapters.kit import AdapterLoop

            loop = AdapterLoop(collector.settings, messages.WebAdapter(collector.pages,
                                                                      frozenset(collector.settings.web_channels)))
            thread = threading.Thread(target=loop.run, name="web-adapter", daemon=True)
            application["web_adapter"] = (loop, thread)
            thread.start()

    async def end_streams(application):
        if collector.pages is not None:
            collector.pages.end_all()

    async def stop(application):
        if "web_adapter" in application:
            loop, thread = application["web_adapter"]
            loop.stop.set()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 15)

    application = web.Application(client_max_size=MAX_BODY_BYTES)
    application.router.add_post("/events", guarded(events))
    application.router.add_post("/outcomes", guarded(outcomes))
    application.router.add_get("/messages", guarded(offers))
    application.router.add_get("/metrics", metrics_page)
    for path in ("/events", "/outcomes", "/messages"):
        application.router.add_route("OPTIONS", path, guarded(preflight))
    # the tag, and a small shop that embeds it (the demo's, `make run`)
    static = Path(__file__).parent / "static"

    def file(path: Path, content_type: str):
        async def serve(request):
            return web.FileResponse(path, headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff",
                                                   "Cache-Control": "no-cache"})
        return serve

    application.router.add_get("/tag.js", file(static / "tag.js", "application/javascript; charset=utf-8"))
    application.router.add_get("/shop/", file(static / "shop" / "index.html", "text/html; charset=utf-8"))
    for page in sorted((static / "shop").glob("*.html")):
        application.router.add_get(f"/shop/{page.name}", file(page, "text/html; charset=utf-8"))
    application.on_startup.append(start)
    application.on_shutdown.append(end_streams)
    application.on_cleanup.append(stop)
    return application


def run_collector(settings: Settings) -> None:
    """Serve the collector until interrupted (`engage collector`)."""
    from aiohttp import web

    collector = Collector(settings)
    try:
        # the access log is off: it would print visitor ids; open streams are ended at shutdown, the rest get 5 s
        web.run_app(app(collector, web_adapter=bool(settings.web_channels)), host=settings.collector_bind,
                    port=settings.collector_port, access_log=None, print=lambda *_: None, shutdown_timeout=5.0)
    finally:
        collector.close()
