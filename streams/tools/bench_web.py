"""Decides how `make bench` measures what a browser meets: the collector's 202s a second, and event → in-page offer latency.

Against a running worker: `engage collector` is started with its web adapter (in-page offers on
`web_message`), a per-address rate high enough for one load client, then

  - in-page: OFFER_VISITORS new anonymous visitors, OFFER_VISITORS_PER_S arriving a second, each
    opening its page's stream (GET /messages) and then posting a search for "cancel my contract";
    the time from the POST to the offer arriving on the stream (decided and delivered by the whole
    pipeline), p50/p95/p99. A visitor gets no offer when held out (control group, global hold-out)
    or when the model's draw finds no positive uplift (most of them, for this action's priors):
    counted, not timed;
  - 202s a second: LOAD_CLIENTS keep-alive clients posting one page view each per request for
    LOAD_SECONDS; requests answered 202 a second, and their p50/p99.

The clients run in the bench's process, on the same cores as the worker, the collector and the broker.
"""
from __future__ import annotations

import asyncio
import socket
import time
import uuid
from pathlib import Path

from streams.settings import Settings
from streams.tools.procs import free_port, spawn, stop_process

OFFER_VISITORS = 300
OFFER_VISITORS_PER_S = 10.0
OFFER_TIMEOUT_S = 5.0
LOAD_CLIENTS = 16
LOAD_SECONDS = 10.0


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1)


def _adapter_ready(settings: Settings, timeout_s: float) -> bool:
    """The collector's web adapter group holds the deliveries' partitions."""
    from confluent_kafka.admin import AdminClient

    from streams import clients

    admin = AdminClient(clients.librdkafka_config(settings))
    group = f"{settings.app_id}-web-adapter"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            described = admin.describe_consumer_groups([group])[group].result(5)
            if str(described.state).endswith("STABLE") and any(m.assignment.topic_partitions for m in described.members):
                return True
        except Exception:  # noqa: BLE001 - the group is not there yet
            pass
        time.sleep(0.2)
    return False


async def _offer_latency(base: str) -> dict:
    import aiohttp

    got, missed = [], 0

    async def visitor(session, i: int) -> None:
        nonlocal missed
        await asyncio.sleep(i / OFFER_VISITORS_PER_S)
        visitor = f"bench-{uuid.uuid4().hex}"
        async with session.get(f"{base}/messages", params={"visitor_id": visitor},
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=OFFER_TIMEOUT_S + 5)) as stream:
            await stream.content.readline()  # ": open": the page is registered
            event = {"event_id": uuid.uuid4().hex, "visitor_id": visitor, "type": "search", "path": "/help",
                     "query": "cancel my contract"}
            t0 = time.perf_counter()
            async with session.post(f"{base}/events", json=event) as resp:
                if resp.status != 202:
                    missed += 1
                    return
            try:
                while True:
                    line = await asyncio.wait_for(stream.content.readline(), OFFER_TIMEOUT_S)
                    if line.startswith(b"data: "):
                        got.append((time.perf_counter() - t0) * 1000)
                        return
                    if not line:
                        raise asyncio.TimeoutError
            except asyncio.TimeoutError:
                missed += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(visitor(session, i) for i in range(OFFER_VISITORS)))
    return {"visitors": OFFER_VISITORS, "visitors_per_s": OFFER_VISITORS_PER_S, "offers": len(got),
            "no_offer_within_s": OFFER_TIMEOUT_S, "without_offer": missed,
            "p50_ms": _pct(got, .5), "p95_ms": _pct(got, .95), "p99_ms": _pct(got, .99)}


async def _requests_per_s(base: str) -> dict:
    import aiohttp

    times, statuses = [], {}
    end = time.monotonic() + LOAD_SECONDS

    async def client(n: int) -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
            i = 0
            while time.monotonic() < end:
                i += 1
                event = {"event_id": f"load-{n}-{i}", "visitor_id": f"bench-load-{n}-{i % 500}", "type": "page_view",
                         "path": "/shop/"}
                t0 = time.perf_counter()
                async with session.post(f"{base}/events", json=event) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 202:
                        times.append((time.perf_counter() - t0) * 1000)

    t0 = time.monotonic()
    await asyncio.gather(*(client(n) for n in range(LOAD_CLIENTS)))
    elapsed = time.monotonic() - t0
    return {"clients": LOAD_CLIENTS, "seconds": round(elapsed, 1), "answered_202_per_s": round(len(times) / elapsed, 1),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "p50_ms": _pct(times, .5),
            "p99_ms": _pct(times, .99)}


def collector_phase(settings: Settings, work: Path, worker_env: dict) -> dict:
    """Start a collector beside the running worker, measure, stop it."""
    port = free_port()
    env = {**worker_env, "ENGAGE_COLLECTOR_PORT": str(port), "ENGAGE_COLLECTOR_RATE": "1000000",
           "ENGAGE_WEB_CHANNELS": "web_message"}
    proc = spawn(["collector"], work / "collector.log", env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        if not _adapter_ready(settings, 30):
            return {"error": f"the collector's web adapter did not join; see {work / 'collector.log'}"}
        base = f"http://127.0.0.1:{port}"
        offers = asyncio.run(_offer_latency(base))
        return {"in_page_offer_ms": offers, "collector": asyncio.run(_requests_per_s(base))}
    finally:
        stop_process(proc)
