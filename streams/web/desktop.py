"""Decides what an agent sees of the offers that need one: each chat, call back or click-to-call with its reason, the customer's value, the journey across channels, and what was offered before and how it went.

`engage adapter desktop` serves a page at `http://<ENGAGE_DESKTOP_BIND>:<ENGAGE_DESKTOP_PORT>/desktop/`
(127.0.0.1:6090 by default). The page holds no data: it asks `GET /desktop/offers` with
`Authorization: Bearer <ENGAGE_DESKTOP_TOKEN>` every two seconds (the token is typed in, or given
once in the address's fragment, which no server sees, and kept for the tab only), and draws the
answer with text nodes only, so nothing a visitor typed can run in an agent's browser; the page's
Content-Security-Policy allows no script but its own file.

The desktop is an adapter on the kit (streams/adapters/kit.py), in consumer group
`<app id>-desktop-adapter`, taking the deliveries of the channels an agent takes up (AGENT_LED). It
reports nothing for them: the page the visitor has open reports `shown`, `accepted` and `declined`
to engage.outcomes, which the desktop reads on every partition (from LOOKBACK_S before it started)
to show each offer's state, accepted ones first. The offers themselves are those delivered since
the desktop's group first joined: a desktop started again shows the new ones only. Bounds:
MAX_CARDS offers kept (the oldest dropped first), EARLY outcomes kept for offers not seen yet,
requests per client as the context service's.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from streams import clients, metrics, topics
from streams.adapters.kit import Adapter
from streams.decision.uplift import AGENT_LED
from streams.httpguard import RateLimit, Refused, check_token
from streams.settings import Settings

log = logging.getLogger(__name__)
MAX_CARDS = 500
EARLY = 2_000
JOURNEY_LINES = 30
LOOKBACK_S = 3_600  # outcomes read back when the desktop starts
# the state an outcome puts an offer in; an offer's state only moves forward (a late `shown` after
# `accepted` changes nothing)
STATES = ("offered", "shown", "failed", "expired", "abandoned", "declined", "accepted")
STATIC = Path(__file__).parent / "static" / "desktop"


def offered_before(journey: list[str]) -> list[str]:
    """The journey's offers and their outcomes (lines `<date> <time> <channel> offer|outcome ...`)."""
    return [line for line in journey if len(line.split(" ", 4)) > 3 and line.split(" ", 4)[3] in ("offer", "outcome")]


def card_of(delivery: dict) -> dict:
    """What the page shows of one delivery."""
    ctx = delivery["context"]
    journey = [line for line in (ctx.get("journey") or "").split("\n") if line][-JOURNEY_LINES:]
    value = {k: ctx[k] for k in ("clv", "clv_source", "segment", "value_segment") if ctx.get(k)}
    return {
        "delivery_id": delivery["delivery_id"], "decision_id": delivery["decision_id"], "ts": delivery["ts"],
        "expires_at": delivery["expires_at"], "channel": delivery["channel"], "action_id": delivery["action_id"],
        "skill": delivery["skill"], "customer_id": delivery["customer_id"], "visitor_id": delivery["visitor_id"],
        "customer_name": ctx.get("customer_name", ""), "known": ctx.get("known") == "yes",
        "reason": delivery["reason"], "why": ctx.get("why", ""), "evidence": ctx.get("evidence", ""),
        "message": delivery["message"], "value": value, "cart_value": ctx.get("cart_value", ""),
        "journey": journey, "offered_before": offered_before(journey), "state": "offered",
    }


class Board:
    """The offers this desktop shows, by delivery id, and the outcomes that came before their offer (thread-safe)."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self.cards: OrderedDict[str, dict] = OrderedDict()
        self.early: OrderedDict[str, str] = OrderedDict()

    def add(self, delivery: dict) -> None:
        card = card_of(delivery)
        with self._lock:
            if card["delivery_id"] in self.cards:
                return
            state = self.early.pop(card["delivery_id"], None)
            if state is not None:
                card["state"] = state
            self.cards[card["delivery_id"]] = card
            while len(self.cards) > MAX_CARDS:
                self.cards.popitem(last=False)

    def note(self, outcome: dict) -> None:
        """An outcome of a delivery: its offer's state moves forward."""
        kind, delivery_id = outcome.get("type"), outcome.get("delivery_id")
        if kind not in STATES or not delivery_id:
            return
        with self._lock:
            card = self.cards.get(delivery_id)
            if card is None:
                if STATES.index(kind) > STATES.index(self.early.get(delivery_id, "offered")):
                    self.early[delivery_id] = kind
                    self.early.move_to_end(delivery_id)
                    while len(self.early) > EARLY:
                        self.early.popitem(last=False)
            elif STATES.index(kind) > STATES.index(card["state"]):
                card["state"] = kind

    def offers(self) -> list[dict]:
        """Accepted offers first, then those still open, then the rest; newest first within each."""
        now = int(self.clock() * 1000)
        with self._lock:
            cards = [dict(c) for c in self.cards.values()]
        for c in cards:
            if c["state"] in ("offered", "shown") and c["expires_at"] < now:
                c["state"] = "expired"

        def rank(c: dict) -> tuple:
            return (0 if c["state"] == "accepted" else 1 if c["state"] in ("offered", "shown") else 2, -c["ts"])
        return sorted(cards, key=rank)


class DesktopAdapter(Adapter):
    """Deliveries of the channels an agent takes up, onto the board; the visitor's page reports their outcomes."""

    name = "desktop"
    channels = AGENT_LED

    def __init__(self, board: Board):
        self.board = board

    def deliver(self, delivery: dict) -> list[str]:
        self.board.add(delivery)
        return []


def follow_outcomes(settings: Settings, board: Board, stop: threading.Event) -> None:
    """Outcomes of the last LOOKBACK_S and on, onto the board, until `stop`: every partition, assigned (no group
    is joined, nothing committed), so a desktop started after an offer was accepted still shows it accepted."""
    from confluent_kafka import OFFSET_END, TopicPartition

    codec = clients.codec(settings)
    name = settings.topic(topics.OUTCOMES.name)
    consumer = clients.consumer(settings, f"{settings.app_id}-desktop-outcomes")
    try:
        partitions = sorted(consumer.list_topics(name, timeout=10).topics[name].partitions)
        since = int(time.time() * 1000) - LOOKBACK_S * 1000
        starts = consumer.offsets_for_times([TopicPartition(name, p, since) for p in partitions], timeout=10)
        consumer.assign([TopicPartition(name, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                         for tp in starts])  # nothing since then: from the end
        while not stop.is_set():
            for msg in consumer.consume(500, 0.5):
                if msg.error() or msg.value() is None:
                    continue
                try:
                    board.note(codec.decode(name, topics.OUTCOMES.schema, msg.value()))
                except Exception as exc:  # noqa: BLE001 - an outcome it cannot read changes no offer
                    log.warning("desktop: an outcome could not be read: %s", type(exc).__name__)
    finally:
        consumer.close()


def app(settings: Settings, board: Board, limit: RateLimit | None = None):
    """The page, its script and style, and GET /desktop/offers behind the token."""
    from aiohttp import web

    limit = limit or RateLimit(settings.context_rate_per_s, 2 * settings.context_rate_per_s)
    # nothing but the page's own files may run or load, and no other site may frame it
    page_headers = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                                               "connect-src 'self'; img-src 'self'; frame-ancestors 'none'; "
                                               "base-uri 'none'; form-action 'none'",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    def file(name: str, content_type: str):
        async def serve(request):
            return web.FileResponse(STATIC / name, headers={**page_headers, "Content-Type": content_type})
        return serve

    async def offers(request):
        try:
            limit.take(request.remote or "?")
            check_token(request.headers.get("Authorization"), settings.desktop_token)
        except Refused as refused:
            return web.json_response({"error": refused.reason}, status=refused.status,
                                     headers={"Cache-Control": "no-store"})
        return web.json_response({"offers": board.offers(), "now": int(time.time() * 1000)},
                                 headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    application = web.Application(client_max_size=1024)
    application.router.add_get("/desktop/", file("index.html", "text/html; charset=utf-8"))
    application.router.add_get("/desktop/desktop.js", file("desktop.js", "application/javascript; charset=utf-8"))
    application.router.add_get("/desktop/desktop.css", file("desktop.css", "text/css; charset=utf-8"))
    application.router.add_get("/desktop/offers", offers)

    async def metrics_page(request):
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
    application.router.add_get("/metrics", metrics_page)
    return application


def run_desktop(settings: Settings) -> None:
    """Serve the agent desktop until interrupted (`engage adapter desktop`)."""
    from aiohttp import web

    from streams.adapters.kit import AdapterLoop

    if not settings.desktop_token:
        raise ValueError("set ENGAGE_DESKTOP_TOKEN: the desktop shows customers' journeys to whoever has it")
    board, stop = Board(), threading.Event()
    loop = AdapterLoop(settings, DesktopAdapter(board), stop=stop)
    threads = [threading.Thread(target=loop.run, name="desktop-adapter", daemon=True),
               threading.Thread(target=follow_outcomes, args=(settings, board, stop), name="desktop-outcomes",
                                daemon=True)]
    for t in threads:
        t.start()
    try:
        # the access log is off: request lines would carry nothing secret, but customers' ids show in the page only
        web.run_app(app(settings, board), host=settings.desktop_bind, port=settings.desktop_port, access_log=None,
                    print=lambda *_: None, shutdown_timeout=2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
