"""Decides what simulated traffic looks like: seeded customers, their journeys, and how they react to offers.

Personas (seed 001: self-servers who buy on their own, visitors about to give up):
browsers, self-servers, hesitating buyers, customers searching to cancel, customers locked out
of their accounts, visitors looking for help they cannot find, and visitors stuck comparing plans.
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
PERSONAS = {  # weight, knows the customer, how likely an offer turns into a conversion
    "browser": (30, False, 0.02),
    "self_server": (25, True, 0.90),
    "hesitating_buyer": (15, False, 0.30),
    "cancel_searcher": (12, True, 0.35),
    "locked_out": (10, True, 0.55),
    "help_seeker": (8, False, 0.40),
    "plan_comparer": (8, False, 0.25),
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
        self.visitor_persona: dict[str, str] = {}
        self._journeys = 0
        self._event_seq = 0
        self._active: list[tuple[Journey, int]] = []
        self.concurrent = concurrent

    def _start(self) -> tuple[Journey, int]:
        self._journeys += 1
        j = make_journey(self.rng, self._journeys, self.customer_ids)
        self.visitor_persona[j.visitor_id] = j.persona
        if len(self.visitor_persona) > 100_000:  # bounded memory on long runs
            self.visitor_persona.pop(next(iter(self.visitor_persona)))
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

    def reaction(self, delivery: dict) -> list[str]:
        """How the simulated person answers an offer: outcome types, in order."""
        persona = self.visitor_persona.get(delivery["visitor_id"], "browser")
        p_convert = PERSONAS[persona][2]
        if self.rng.random() < 0.25:
            return ["declined"]
        return ["accepted", "converted"] if self.rng.random() < p_convert else ["accepted"]


def run_simulator(settings: Settings, rate: float, duration_s: float | None, seed: int, customers: int,
                  react: bool = True, count: int | None = None, stop: threading.Event | None = None,
                  quiet: bool = False) -> int:
    """Produce profiles, then events at `rate` per second; answer deliveries with outcomes. Returns events sent."""
    codec = clients.codec(settings)
    stop = stop or threading.Event()
    traffic = Traffic(seed=seed, customers=customers)
    producer = clients.producer(settings, **{"linger.ms": 5})
    t_prof, t_ev, t_out = (settings.topic(t.name) for t in (topics.PROFILES, topics.EVENTS, topics.OUTCOMES))
    for p in traffic.profiles:
        producer.produce(t_prof, key=p["customer_id"].encode(), value=codec.encode(t_prof, "CustomerProfile", p))
    producer.flush(30)

    reactor = None
    if react:
        def react_loop():
            consumer = clients.consumer(settings, f"{settings.app_id}-simulated-customers", offset_reset="latest",
                                        auto_commit=True, log_level=None)
            consumer.subscribe([settings.topic(topics.DELIVERY.name)])
            try:
                while not stop.is_set():
                    msg = consumer.poll(0.5)
                    if msg is None or msg.error():
                        continue
                    try:
                        d = codec.decode(msg.topic(), "Delivery", msg.value())
                    except ValueError:
                        continue
                    for i, kind in enumerate(traffic.reaction(d)):
                        outcome = {"outcome_id": f"{d['delivery_id']}-{kind}", "key": d["key"],
                                   "ts": int(time.time() * 1000) + i, "type": kind, "delivery_id": d["delivery_id"],
                                   "decision_id": d["decision_id"], "action_id": d["action_id"], "channel": d["channel"],
                                   "visitor_id": d["visitor_id"], "customer_id": d["customer_id"],
                                   "value": None, "source": "simulator"}
                        producer.produce(t_out, key=d["key"].encode(), value=codec.encode(t_out, "Outcome", outcome))
            finally:
                consumer.close()

        reactor = threading.Thread(target=react_loop, name="simulated-customers", daemon=True)
        reactor.start()

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
            while True:
                try:
                    producer.produce(t_ev, key=ev["visitor_id"].encode(), value=codec.encode(t_ev, "Interaction", ev))
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            sent += 1
            if not quiet and sent % max(1, int(rate * 10) if rate else 10000) == 0:
                print(f"[simulator] {sent} events sent", flush=True)
    finally:
        producer.flush(30)
        stop.set()
        if reactor:
            reactor.join(5)
        producer.flush(10)
    return sent
