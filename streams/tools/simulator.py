"""Decides what throughput traffic looks like: seeded customers and interleaved journeys, as fast or as steady as asked.

For `make bench` (events per second through the pipeline) and the rule tests. Personas:
browsers, self-servers, hesitating buyers, customers searching to cancel, customers locked out
of their accounts, visitors looking for help they cannot find, and visitors stuck comparing plans.
The people who answer offers, with a truth to score decisions against, are in world.py and play.py.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

from streams import clients, topics
from streams.settings import Settings

FIRST_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kofi", "Lena", "Mo",
               "Nia", "Omar", "Pia", "Raj", "Sara", "Tomas", "Uma", "Vera", "Wen", "Yara", "Zoe"]
TIMEZONES = ["Europe/London", "Europe/Paris", "America/New_York", "America/Chicago", "Asia/Singapore", "UTC"]
PRICES = {"/shop/phones/x200": 999.0, "/shop/plans/unlimited": 45.0, "/shop/tv/bundle": 1299.0,
          "/shop/broadband/fibre-900": 60.0, "/shop/accessories/charger": 25.0}
PRODUCTS = list(PRICES)
# Searches of customers about to leave, and of others, some with the same words in another sense
# ("leave a review", "weekend contract deals"): what the cancel-intent rule must tell apart.
CANCEL_QUERIES = ["how do I cancel my contract", "cancel subscription", "terminate contract early", "close my account",
                  "end contract fee", "how to leave your network", "cancelling my broadband", "switch provider",
                  "termination of my contract"]
HELP_QUERIES = ["roaming charges", "router lights blinking", "bill higher than usual", "change my plan", "pin code",
                "leave a review", "leave feedback", "weekend contract deals", "extend my contract", "parental leave offer",
                "contract end date"]
PERSONAS = {  # weight, knows the customer
    "browser": (30, False),
    "self_server": (25, True),
    "hesitating_buyer": (15, False),
    "cancel_searcher": (12, True),
    "locked_out": (10, True),
    "help_seeker": (8, False),
    "plan_comparer": (8, False),
}


def make_profiles(rng: random.Random, count: int, now_ms: int) -> list[dict]:
    profiles = []
    for i in range(1, count + 1):
        clv = round(min(rng.lognormvariate(7.0, 0.8), 20000.0), 2)
        segment = "platinum" if clv >= 3000 else "gold" if clv >= 1200 else "standard"
        profiles.append({
            "customer_id": f"C{i:05d}", "updated_ts": now_ms, "display_name": rng.choice(FIRST_NAMES),
            "segment": segment, "clv": clv,
            "preferred_channel": rng.choice([None, None, "chat", "voice_callback", "email"]),
            "marketing_consent": rng.random() < 0.7, "opted_out": rng.random() < 0.04,
            "channels_opted_out": ["sms"] if rng.random() < 0.2 else [],
            "timezone": rng.choice(TIMEZONES), "attributes": {"plan": rng.choice(["basic", "plus", "max"])},
        })
    return profiles


@dataclass
class Journey:
    visitor_id: str
    persona: str
    customer_id: str | None
    steps: list[dict] = field(default_factory=list)


def _step(type_: str, path: str | None = None, query: str | None = None, value: float | None = None,
          customer: bool = True) -> dict:
    return {"type": type_, "path": path, "query": query, "value": value, "customer": customer}


def make_journey(rng: random.Random, n: int, customers: list[str]) -> Journey:
    personas = list(PERSONAS)
    persona = rng.choices(personas, weights=[PERSONAS[p][0] for p in personas])[0]
    known = PERSONAS[persona][1]
    customer = rng.choice(customers) if known and customers else None
    visitor = f"V{n:07d}"
    pages = [_step("page_view", rng.choice(["/", "/shop", "/offers"]))]
    pages += [_step("page_view", p, value=PRICES[p]) for p in (rng.choice(PRODUCTS) for _ in range(rng.randint(1, 4)))]
    if persona == "browser":
        steps = pages
    elif persona == "self_server":
        steps = [_step("login", "/account/login")] + pages
        for _ in range(rng.randint(1, 3)):
            steps.append(_step("add_to_cart", rng.choice(PRODUCTS), value=round(rng.uniform(15, 250), 2)))
        steps += [_step("checkout_start", "/checkout"), _step("purchase", "/checkout/done", value=round(rng.uniform(50, 600), 2))]
    elif persona == "hesitating_buyer":
        steps = pages + [_step("add_to_cart", rng.choice(PRODUCTS), value=round(rng.uniform(60, 450), 2))
                         for _ in range(rng.randint(1, 2))]
        steps += [_step("checkout_start", "/checkout"), _step("page_view", "/shipping-costs")]
    elif persona == "cancel_searcher":
        query = rng.choice(CANCEL_QUERIES)
        steps = [_step("login", "/account/login"), _step("page_view", "/account"),
                 _step("search", "/help/search", query=query), _step("page_view", "/help/cancellation")]
    elif persona == "locked_out":
        steps = [_step("page_view", "/account/login")]
        steps += [_step("login_failed", "/account/login", customer=False) for _ in range(rng.randint(2, 3))]
        steps += [_step("page_view", "/account/password-reset", customer=False)]
    elif persona == "plan_comparer":  # ends on the pricing pages, where they stall (dwell)
        steps = [_step("page_view", "/"), _step("page_view", "/pricing"), _step("page_view", "/pricing/business")]
    else:  # help_seeker
        steps = [_step("page_view", "/help")]
        steps += [_step("search", "/help/search", query=q) for q in rng.sample(HELP_QUERIES, 3)]
    # a known customer is identified from the login on; failed logins carry no identity yet
    identified = persona in ("self_server", "cancel_searcher")
    out = []
    for s in steps:
        cid = customer if (identified and s["customer"]) else None
        if persona == "locked_out" and s["type"] == "page_view" and s["path"] == "/account/login":
            cid = None
        out.append({**s, "customer_id": cid})
    return Journey(visitor, persona, customer, out)


class Traffic:
    """A seeded stream of interleaved journeys: `events(n)` yields Interaction dicts."""

    def __init__(self, seed: int = 7, customers: int = 500, concurrent: int = 50, now_ms=None):
        self.rng = random.Random(seed)
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.profiles = make_profiles(self.rng, customers, self.now_ms())
        self.customer_ids = [p["customer_id"] for p in self.profiles]
        self._journeys = 0
        self._event_seq = 0
        self._active: list[tuple[Journey, int]] = []
        self.concurrent = concurrent

    def _start(self) -> tuple[Journey, int]:
        self._journeys += 1
        j = make_journey(self.rng, self._journeys, self.customer_ids)
        return j, 0

    def events(self, count: int | None = None) -> Iterator[dict]:
        produced = 0
        while count is None or produced < count:
            while len(self._active) < self.concurrent:
                self._active.append(self._start())
            i = self.rng.randrange(len(self._active))
            journey, pos = self._active[i]
            step = journey.steps[pos]
            self._event_seq += 1
            yield {"event_id": f"sim-{self._event_seq:09d}", "ts": self.now_ms(), "visitor_id": journey.visitor_id,
                   "customer_id": step["customer_id"], "channel": "web", "type": step["type"], "path": step["path"],
                   "query": step["query"], "value": step["value"], "attributes": {"persona": journey.persona}}
            produced += 1
            if pos + 1 >= len(journey.steps):
                self._active[i] = self._start()
            else:
                self._active[i] = (journey, pos + 1)


def run_simulator(settings: Settings, rate: float, duration_s: float | None, seed: int, customers: int,
                  count: int | None = None, stop: threading.Event | None = None, quiet: bool = False,
                  flush_s: float = 30.0) -> int:
    """Produce profiles, then events at `rate` per second (0: as fast as possible). Returns events sent.
    At the end it waits up to `flush_s` for the broker to take what is still buffered (and says if not all was)."""
    codec = clients.codec(settings)
    stop = stop or threading.Event()
    traffic = Traffic(seed=seed, customers=customers)
    producer = clients.producer(settings, **{"linger.ms": 5})
    t_prof, t_ev = (settings.topic(t.name) for t in (topics.PROFILES, topics.EVENTS))
    for p in traffic.profiles:
        producer.produce(t_prof, key=p["customer_id"].encode(), value=codec.encode(t_prof, "CustomerProfile", p))
    producer.flush(30)

    sent = 0
    start = time.monotonic()
    interval = 1.0 / rate if rate > 0 else 0.0
    try:
        for ev in traffic.events(count):
            if stop.is_set() or (duration_s is not None and time.monotonic() - start >= duration_s):
                break
            target = start + sent * interval
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
                ev["ts"] = int(time.time() * 1000)
            clients.produce_when_room(producer, t_ev, key=ev["visitor_id"].encode(), value=codec.encode(t_ev, "Interaction", ev))
            producer.poll(0)
            sent += 1
            if not quiet and sent % max(1, int(rate * 10) if rate else 10000) == 0:
                print(f"[simulator] {sent} events sent", flush=True)
    finally:
        left = producer.flush(flush_s)
        if left:
            print(f"[simulator] {left} events not taken by the broker within {flush_s:g} s", flush=True)
    return sent
