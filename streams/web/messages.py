"""Decides how an offer reaches a page the visitor has open: pushed over Server-Sent Events to that visitor's open pages, and what the page may say back about it.

A page opens `GET /messages?visitor_id=<its visitor id>` (an EventSource). The web adapter, on the
adapter kit, takes deliveries of the in-page channels (ENGAGE_WEB_CHANNELS: `web_message` and
`chat` by default) and pushes each to the visitor's open pages: the delivery id, channel, action,
message and expiry, nothing of the reason or the context kept for agents. A visitor with no page
open is not on the site: the delivery is reported `failed` (the kit's `Gone`), and no e-mail is
sent instead by this adapter. The page reports `shown`, `accepted` or `declined` with `POST
/outcomes`, only for a delivery pushed to that same visitor by this process (anything else is
404), once per kind. Visitor ids are the tag's random first-party ids: knowing one is what it takes
to read that visitor's offers, so they must not be guessable, and the messages say nothing a
stranger could use. Bounds: MAX_STREAMS open streams, STREAMS_PER_VISITOR per visitor, QUEUED
messages waiting per stream, PENDING deliveries remembered for their outcomes.
"""
from __future__ import annotations

import asyncio
import json
from collections import OrderedDict

from streams.adapters.kit import Adapter, Gone, outcome_for
from streams.httpguard import Refused, json_body

MAX_STREAMS = 10_000
STREAMS_PER_VISITOR = 4
QUEUED = 16
PENDING = 10_000
HEARTBEAT_S = 15.0
PUSH_TIMEOUT_S = 5.0
OUTCOME_TYPES = ("shown", "accepted", "declined")
MAX_OUTCOME_BYTES = 1024


def payload_of(delivery: dict) -> dict:
    """What a page is told of a delivery: enough to show it and answer it, nothing kept for agents."""
    return {"delivery_id": delivery["delivery_id"], "channel": delivery["channel"], "action_id": delivery["action_id"],
            "message": delivery["message"], "expires_at": delivery["expires_at"]}


class Pages:
    """The open streams of this process, by visitor, and the deliveries pushed to them (on the event loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.streams: dict[str, list[asyncio.Queue]] = {}
        self.open_streams = 0
        self.pending: OrderedDict[str, dict] = OrderedDict()  # delivery id -> the delivery, for its outcomes
        self.reported: OrderedDict[tuple[str, str], None] = OrderedDict()

    def open(self, visitor: str) -> asyncio.Queue:
        if self.open_streams >= MAX_STREAMS:
            raise Refused(503, "too many pages are open; try again later")
        mine = self.streams.setdefault(visitor, [])
        if len(mine) >= STREAMS_PER_VISITOR:
            raise Refused(429, f"at most {STREAMS_PER_VISITOR} pages per visitor")
        queue: asyncio.Queue = asyncio.Queue(QUEUED)
        mine.append(queue)
        self.open_streams += 1
        return queue

    def close(self, visitor: str, queue: asyncio.Queue) -> None:
        mine = self.streams.get(visitor, [])
        if queue in mine:
            mine.remove(queue)
            self.open_streams -= 1
        if not mine:
            self.streams.pop(visitor, None)

    def end_all(self) -> None:
        """Tell every open stream to end (the server is stopping; a page's EventSource comes back by itself)."""
        for queues in self.streams.values():
            for queue in queues:
                while queue.full():
                    queue.get_nowait()
                queue.put_nowait(None)

    async def _push(self, delivery: dict) -> bool:
        taken = False
        for queue in self.streams.get(delivery["visitor_id"], []):
            if not queue.full():  # a page not reading its stream gets no more
                queue.put_nowait(payload_of(delivery))
                taken = True
        if taken:
            self.pending[delivery["delivery_id"]] = delivery
            while len(self.pending) > PENDING:
                self.pending.popitem(last=False)
        return taken

    def push(self, delivery: dict) -> bool:
        """From the adapter's thread: whether any of the visitor's open pages took the delivery."""
        return asyncio.run_coroutine_threadsafe(self._push(delivery), self.loop).result(PUSH_TIMEOUT_S)

    def outcome(self, body: bytes, now_ms: int) -> dict | None:
        """The Outcome a page reports (None: reported already), or Refused."""
        doc = json_body(body, MAX_OUTCOME_BYTES)
        if not isinstance(doc, dict) or set(doc) != {"delivery_id", "visitor_id", "type"}:
            raise Refused(400, "an outcome is an object of delivery_id, visitor_id and type")
        if doc["type"] not in OUTCOME_TYPES:
            raise Refused(400, f"type is one of {', '.join(OUTCOME_TYPES)}")
        delivery = self.pending.get(doc["delivery_id"]) if isinstance(doc["delivery_id"], str) else None
        if delivery is None or delivery["visitor_id"] != doc["visitor_id"]:
            raise Refused(404, "no such offer was shown to this visitor")
        seen = (delivery["delivery_id"], doc["type"])
        if seen in self.reported:
            return None
        self.reported[seen] = None
        while len(self.reported) > 4 * PENDING:
            self.reported.popitem(last=False)
        return outcome_for(delivery, doc["type"], now_ms, "web")


class WebAdapter(Adapter):
    """In-page offers: pushed to the visitor's open pages, or `failed` when they have none."""

    name = "web"

    def __init__(self, pages: Pages, channels: frozenset[str]):
        self.pages, self.channels = pages, frozenset(channels)

    def deliver(self, delivery: dict) -> list[str]:
        if not self.pages.push(delivery):
            raise Gone("the visitor has no page open")
        return []  # the page says whether it was shown


async def stream(pages: Pages, visitor: str, queue: asyncio.Queue, response) -> None:
    """Write what comes on `queue` (pages.open(visitor)) to a prepared text/event-stream response until the page goes."""
    try:
        await response.write(b": open\n\n")
        while True:
            try:
                payload = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                await response.write(b": keep-alive\n\n")  # a page gone is found out here
                continue
            if payload is None:  # the server is stopping
                return
            await response.write(b"event: offer\ndata: " + json.dumps(payload).encode() + b"\n\n")
    except (ConnectionResetError, ConnectionError):
        pass
    finally:
        pages.close(visitor, queue)

