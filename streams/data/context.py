"""Decides what an agent or a channel may ask a worker about a customer or a visitor, and who answers it.

`GET /customers/{id}/context` and `GET /visitors/{id}/context`, JSON, on every worker's HTTP port
(Faust's web server). The data stage's tables are partitioned like the topics that feed them, all
by the same key, so one worker holds everything the data stage knows about a key. The data stage
runs in a consumer group of its own (`<app id>-data`), whose members name their worker's address:
a worker asked about a key its data runner does not hold passes the request on to the one that
does and returns its answer, and the one that does reads the runner's RocksDB as a live follower
(streams/runtime/reader.py). The contact ledger is the decision stage's, in a group of its own
too: the answering worker reads it where that group holds the key (streams/decision/contacts.py),
from its own runner or, through `GET /customers/{id}/contacts`, from the worker that holds it.

Every request needs `Authorization: Bearer <ENGAGE_CONTEXT_TOKEN>` (401 without it, or when no
token is configured); ids are at most 256 characters without control characters (400); each
client address gets at most ENGAGE_CONTEXT_RATE requests a second, bursts of twice as many (429); an answer is at most MAX_BODY_BYTES
(its parts are bounded: a journey of 30 steps, a profile of 64 attributes). Nothing about the
customer is logged: the web server's access log (which would print the path, with the id) is off.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from urllib.parse import quote

from streams import topics
from streams.data.value import customer_value
from streams.httpguard import RateLimit, Refused, check_id, check_token
from streams.decision.policy import counts_of

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
ROUTED_RATE_PER_S = 500.0  # requests another worker passes on, per worker
ROUTED_HEADER = "X-Engage-Routed"  # set on a request passed to the key's owner: it is not passed on again
ANSWERED_BY = "X-Engage-Answered-By"  # the worker whose tables gave the answer


def offers_of(ledger: dict | None) -> dict:
    """What a contact ledger says of the offers made so far, without the decisions it keeps (names, features)."""
    if not ledger:
        return {}
    counts = counts_of(dict(ledger))  # with the offers of keys merged into this one (devices, duplicates)
    return {"day": counts["day"] or None, "offers_today": counts["offers_today"],
            "offers_this_week": counts["offers_week"], "last_offer_ts": counts["last_offer_ts"] or None,
            "declined": sorted(counts["declined"]), "last_purchase_ts": counts["purchase_ts"] or None}


def customer_context(customer_id: str, profile: dict | None, value_state: dict | None, journey: list | None,
                     offers: dict | None, rules, now_ms: int, offers_unavailable: str | None = None) -> dict:
    """What an agent should know of a customer now: who, worth, segment, the journey, offers so far.

    `offers`: offers_of the customer's ledger; None with the reason in `offers_unavailable` when it
    could not be read just now (the rest of the answer still stands).
    """
    answer = {"customer_id": customer_id, "known": profile is not None, "profile": profile,
              "value": customer_value(profile, value_state, now_ms, rules), "journey": journey or [],
              "contacts": offers}
    if offers_unavailable:
        answer["contacts_unavailable"] = offers_unavailable
    return answer


def body_of(answer: dict) -> bytes:
    body = json.dumps(answer, separators=(",", ":"), default=str).encode()
    if len(body) > MAX_BODY_BYTES:  # cannot happen with the bounds above; refused rather than sent
        raise Refused(500, "the answer is larger than the bound")
    return body


def register(engine, data, contacts, segments_book) -> None:
    """The routes on the engine's Faust app (its web server must be enabled); `data`: a StageReader of the data
    runner's tables, `contacts`: a ContactsReader."""
    from streams.runtime.reader import Unknown

    app, settings = engine.app, engine.settings
    limiter = RateLimit(rate=float(settings.context_rate_per_s), burst=2 * settings.context_rate_per_s)
    routed_limiter = RateLimit(rate=ROUTED_RATE_PER_S, burst=int(2 * ROUTED_RATE_PER_S))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # the access log prints ids in paths

    async def blocking(reader_call, *args):
        """A reader's call (it may ask the broker, or wait on RocksDB) off the event loop; Unknown as a 503."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, reader_call, *args)
        except Unknown as exc:
            raise Refused(503, str(exc)) from None

    async def owner(key: str):
        """The URL of the worker whose data runner holds `key`'s partition, or None when this one does.

        Decided from the data group's assignment (each member names its worker's address), not by
        guessing from addresses: workers on several hosts all advertising 127.0.0.1 are refused as such.
        """
        from yarl import URL

        url = await blocking(data.owner, key)
        return None if url is None else URL(url)

    async def tables_of(key: str, tables: list[str]) -> dict:
        return await blocking(data.read, key, tables)

    async def answer(web, request, key: str, local):
        try:
            routed = bool(request.headers.get(ROUTED_HEADER))
            # every request counts, refused ones too; one passed on by another worker counts on that
            # worker's budget for passing on, so clients' requests are not held back as one client
            (routed_limiter if routed else limiter).take(request.remote or "?")
            check_token(request.headers.get("Authorization"), settings.context_token)
            key = check_id(key)
            elsewhere = await owner(key)
            if elsewhere is not None:
                if routed:
                    raise Refused(503, "the partition moved meanwhile; try again")
                return await pass_on(web, request, elsewhere)
            return web.bytes(body_of(await local(key)), content_type="application/json",
                             headers={ANSWERED_BY: str(app.conf.canonical_url)})
        except Refused as refused:
            return web.json({"error": refused.reason}, status=refused.status)

    async def read_bounded(resp) -> bytes:
        """The whole body, refused beyond MAX_BODY_BYTES (one read() may return only what has arrived)."""
        body = bytearray()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise Refused(502, "the owning worker's answer is larger than the bound")
        return bytes(body)

    async def get_from(url, request):
        import aiohttp

        headers = {"Authorization": request.headers.get("Authorization", ""), ROUTED_HEADER: "1"}
        try:
            async with app.http_client.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status, await read_bounded(resp), resp.headers.get(ANSWERED_BY, "")
        except (aiohttp.ClientError, TimeoutError):
            raise Refused(503, "the worker holding this key did not answer; try again") from None

    async def pass_on(web, request, url):
        status, body, who = await get_from(request.url.with_host(url.host).with_port(int(url.port)), request)
        return web.bytes(body, content_type="application/json", status=status, headers={ANSWERED_BY: who})

    async def offers_now(customer_id: str, request) -> dict:
        """offers_of the customer's contact ledger, from whichever worker's decision runner holds it."""
        from yarl import URL

        where = await blocking(contacts.owner, customer_id)
        if where is None:
            return offers_of(await blocking(contacts.local, customer_id))
        url = URL(where).with_path(f"/customers/{quote(customer_id, safe='')}/contacts")
        status, body, _ = await get_from(url, request)
        if status != 200:
            raise Refused(503, "the worker holding this customer's offers did not answer; try again")
        try:
            offers = json.loads(body)["contacts"]
            if not isinstance(offers, dict):
                raise TypeError("not an object")
            return offers
        except (ValueError, KeyError, TypeError):
            raise Refused(502, "the worker holding this customer's offers gave an answer that is not one") from None

    async def customer_now(customer_id: str, request) -> dict:
        held = await tables_of(customer_id, [topics.CUSTOMER_TO_FORGOTTEN, topics.CUSTOMER_TO_SUCCESSOR,
                                             topics.CUSTOMER_TO_PROFILE, topics.CUSTOMER_TO_VALUE, topics.KEY_TO_JOURNEY])
        if held[topics.CUSTOMER_TO_FORGOTTEN] is not None:
            return {"customer_id": customer_id, "forgotten": True}
        successor = held[topics.CUSTOMER_TO_SUCCESSOR]
        if successor is not None:  # a duplicate: ask about the customer it was merged into
            return {"customer_id": customer_id, "merged_into": successor["into"]}
        offers, unavailable = None, None
        try:
            offers = await offers_now(customer_id, request)
        except Refused as refused:  # the rest of what is known still answers; the offers are said to be missing
            unavailable = refused.reason
        return customer_context(customer_id, held[topics.CUSTOMER_TO_PROFILE], held[topics.CUSTOMER_TO_VALUE],
                                held[topics.KEY_TO_JOURNEY], offers, segments_book.rules(), int(time.time() * 1000),
                                unavailable)

    @app.page("/customers/{customer_id}/context")
    async def customer_page(web, request, customer_id):
        async def local(key):
            return await customer_now(key, request)
        return await answer(web, request, customer_id, local)

    @app.page("/customers/{customer_id}/contacts")
    async def contacts_page(web, request, customer_id):
        """The offers so far alone, from this worker's decision runner: what another worker's context answer asks for."""
        try:
            # counted as /context is: a passed-on request on the passing worker's budget, any other on its client's
            (routed_limiter if request.headers.get(ROUTED_HEADER) else limiter).take(request.remote or "?")
            check_token(request.headers.get("Authorization"), settings.context_token)
            key = check_id(customer_id)
            if await blocking(contacts.owner, key) is not None:
                raise Refused(503, "the decision stage's partition moved meanwhile; try again")
            ledger = await blocking(contacts.local, key)
            return web.bytes(body_of({"customer_id": key, "contacts": offers_of(ledger)}),
                             content_type="application/json", headers={ANSWERED_BY: str(app.conf.canonical_url)})
        except Refused as refused:
            return web.json({"error": refused.reason}, status=refused.status)

    @app.page("/visitors/{visitor_id}/context")
    async def visitor_page(web, request, visitor_id):
        async def local(key):
            held = await tables_of(key, [topics.VISITOR_TO_CUSTOMER, topics.KEY_TO_JOURNEY])
            link = held[topics.VISITOR_TO_CUSTOMER]
            out = {"visitor_id": key, "customer_id": link["customer_id"] if link else None,
                   "linked_by": link["source"] if link else None, "journey": held[topics.KEY_TO_JOURNEY] or []}
            if link:  # the customer's context, from whichever worker holds it
                customer = link["customer_id"]
                where = await owner(customer)
                if where is None:
                    out["customer"] = await customer_now(customer, request)
                else:
                    out["customer"] = await fetch_elsewhere(where, customer, request)
            return out
        return await answer(web, request, visitor_id, local)

    async def fetch_elsewhere(url, customer: str, request) -> dict | None:
        try:
            status, body, _ = await get_from(url.with_path(f"/customers/{quote(customer, safe='')}/context"), request)
            return json.loads(body) if status == 200 else None
        except (Refused, ValueError):
            return None
