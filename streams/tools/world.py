"""Decides the simulated people and agents: who each person really is, what they do, and how an invitation changes what they do.

Each person has an intent (what they came for), a hidden response type (self-server, persuadable,
lost cause, sleeping dog) and from those the truth: P(convert) without any action, and with each
action on each channel. The type shows only imperfectly in what can be observed (pages, cart,
returning, device, being logged in, CLV), so a learner could find it and a rule alone could not.

Everything about person n is drawn from its own seeded generator, so the same scenario and seed
give the same people and journeys whatever the engine does, and every policy is scored against
the same people: the live simulator and the decision benchmark share `Reception`, the one model
of how people answer invitations and how agents take them.
"""
from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Iterator

from streams.tools.scenario import HUMAN_CHANNELS, INTENTS, Scenario, TypeTruth, World
from streams.tools.simulator import CANCEL_QUERIES, HELP_QUERIES, PRICES, make_profiles

# What a response type looks like from outside, in tendencies only:
# P(returning), P(logged in), product pages (from, to), cart factor, P(mobile)
LOOKS = {
    "self_server": (0.75, 0.80, (1, 3), 1.3, 0.30),
    "persuadable": (0.30, 0.45, (3, 7), 1.0, 0.60),
    "lost_cause": (0.20, 0.25, (1, 2), 0.6, 0.55),
    "sleeping_dog": (0.70, 0.85, (2, 4), 1.4, 0.30),
}
# How long (simulated seconds) a person stays after their last step, waiting, hesitating or on hold:
# long enough for the shipped rules' timers (a stalled cart: 3 minutes; the pricing pages: 1 minute).
LINGER_S = {"buy": (240, 360), "compare": (90, 200), "browse": (5, 30), "cancel": (60, 180), "locked_out": (60, 150),
            "help": (60, 150)}
THINK_S = (3, 12)          # between two steps of a journey
PLAN_VALUE = 240.0         # a year's margin on a plan (compare)
CALL_COST = 8.0            # what a call to the contact centre costs (resolve: a call avoided saves it)
PRODUCTS = list(PRICES)


@dataclass
class Person:
    n: int
    visitor_id: str
    customer_id: str | None
    intent: str
    type: str
    goal: str
    value: float              # what converting is worth: the cart, the plan, the customer kept, the call saved
    arrive_ms: int
    end_ms: int               # when the journey ends: the purchase, cancellation or call, or leaving
    steps: list[tuple[int, dict]]   # (time, event without event_id and ts)
    truth: TypeTruth
    world: World
    u: float                  # the one uniform draw deciding whether they convert (the same under every policy)
    accepts: bool             # would accept an agent's invitation
    handling_permille: int    # their agent time, in thousandths of the skill's mean handling time
    looks: dict

    def p_convert(self, strength: float) -> float:
        return self.truth.base + strength * (self.truth.treated - self.truth.base)

    def incremental(self, action_id: str | None, channel: str | None) -> float:
        """True P(convert | this action) - P(convert | nothing): the oracle's knowledge."""
        return self.p_convert(self.world.effect(action_id, channel)) - self.truth.base


def _weighted(rng: random.Random, pairs) -> str:
    names = [n for n, _ in pairs]
    return rng.choices(names, weights=[w for _, w in pairs])[0]


def _event(type_: str, path: str | None = None, query: str | None = None, value: float | None = None,
           channel: str = "web") -> dict:
    return {"type": type_, "path": path, "query": query, "value": value, "channel": channel}


class Population:
    """The scenario's people in order of arrival, drawn per person from (seed, n)."""

    def __init__(self, scenario: Scenario, start_ms: int = 0, run: str = ""):
        self.scenario = scenario
        self.start_ms = start_ms
        # in every visitor (and so event) id: a second run on the same broker is new traffic, not
        # duplicates of the first that detection would drop; the people are the same
        self.run = run
        self.profiles = make_profiles(random.Random(f"{scenario.seed}:profiles"), scenario.customers, start_ms)
        by_clv = sorted(self.profiles, key=lambda p: p["clv"])
        self.customers_by_clv = [p["customer_id"] for p in by_clv]
        self.clv = {p["customer_id"]: p["clv"] for p in self.profiles}

    def people(self) -> Iterator[Person]:
        arrivals = random.Random(f"{self.scenario.seed}:arrivals")
        t, n = 0.0, 0
        while True:
            t += arrivals.expovariate(self.scenario.arrival_rate)
            if t * 1000 >= self.scenario.duration_ms:
                return
            n += 1
            yield self.person(n, int(t * 1000))

    def person(self, n: int, offset_ms: int) -> Person:
        sc = self.scenario
        rng = random.Random(f"{sc.seed}:person:{n}")
        world = sc.world_at(offset_ms)
        intent = _weighted(rng, [(name, i.weight) for name, i in world.intents])
        type_ = _weighted(rng, dict(world.intents)[intent].types)
        returning_p, known_p, (pmin, pmax), cart_factor, mobile_p = LOOKS[type_]
        known = rng.random() < known_p
        customer = self._customer(rng, type_) if known else None
        looks = {"returning": "1" if rng.random() < returning_p else "0",
                 "device": "mobile" if rng.random() < mobile_p else "desktop"}
        steps, value = self._journey(rng, intent, type_, customer, pmin, pmax, cart_factor)
        at = self.start_ms + offset_ms
        timed, clock = [], at
        for ev in steps:
            timed.append((clock, ev))
            clock += int(rng.uniform(*THINK_S) * 1000)
        end = timed[-1][0] + int(rng.uniform(*LINGER_S[intent]) * 1000)
        handling_permille = int(rng.uniform(0.5, 1.5) * 1000)  # of the skill's mean handling time
        return Person(n=n, visitor_id=f"V{self.run}{sc.seed % 1000:03d}{n:07d}", customer_id=customer, intent=intent, type=type_,
                      goal=INTENTS[intent], value=value, arrive_ms=at, end_ms=end, steps=timed,
                      truth=world.truth(type_), world=world, u=rng.random(), accepts=rng.random() < sc.accept,
                      handling_permille=handling_permille, looks=looks)

    def _customer(self, rng: random.Random, type_: str) -> str:
        ids = self.customers_by_clv
        if type_ == "sleeping_dog":    # valuable customers who do not want to be bothered
            return ids[int(len(ids) * rng.uniform(0.6, 1.0)) - 1 if len(ids) > 1 else 0]
        if type_ == "lost_cause":
            return ids[int(len(ids) * rng.uniform(0.0, 0.6))]
        return ids[rng.randrange(len(ids))]

    def _journey(self, rng, intent, type_, customer, pmin, pmax, cart_factor) -> tuple[list[dict], float]:
        pages = [_event("page_view", rng.choice(["/", "/shop", "/offers"]))]
        products = [rng.choice(PRODUCTS) for _ in range(rng.randint(pmin, pmax))]
        pages += [_event("page_view", p, value=PRICES[p]) for p in products]
        if intent == "buy":
            cart = [round(rng.uniform(40, 300) * cart_factor, 2) for _ in range(rng.randint(1, 2))]
            steps = ([_event("login", "/account/login")] if customer else []) + pages
            steps += [_event("add_to_cart", rng.choice(products), value=v) for v in cart]
            steps.append(_event("checkout_start", "/checkout"))
            if type_ == "persuadable" or rng.random() < 0.2:
                steps.append(_event("page_view", "/shipping-costs"))
            return steps, round(sum(cart), 2)
        if intent == "compare":
            steps = pages[:1] + [_event("page_view", "/pricing")] * (1 + (type_ == "persuadable")) + \
                [_event("page_view", "/pricing/business")]
            return steps, PLAN_VALUE
        if intent == "browse":
            return pages, max(PRICES[p] for p in products) * 0.1  # a tenth of browsers' interest buys the item
        if intent == "cancel":
            steps = ([_event("login", "/account/login"), _event("page_view", "/account")] if customer else
                     [_event("page_view", "/help")])
            steps += [_event("search", "/help/search", query=rng.choice(CANCEL_QUERIES)),
                      _event("page_view", "/help/cancellation")]
            value = round(self.clv[customer] * 0.3, 2) if customer else 150.0
            return steps, value
        if intent == "locked_out":
            steps = [_event("page_view", "/account/login")]
            steps += [_event("login_failed", "/account/login") for _ in range(rng.randint(2, 3))]
            steps.append(_event("page_view", "/account/password-reset"))
            return steps, CALL_COST
        steps = [_event("page_view", "/help")]  # help
        steps += [_event("search", "/help/search", query=q) for q in rng.sample(HELP_QUERIES, 3)]
        return steps, CALL_COST

    def events_of(self, person: Person) -> list[tuple[int, dict]]:
        """(time, Interaction without event_id) of the journey's steps; identity as the site would know it."""
        out = []
        for at, step in person.steps:
            # a locked-out customer is not identified until they get in; the others from their login on
            identified = person.customer_id is not None and person.intent != "locked_out"
            out.append((at, {"ts": at, "visitor_id": person.visitor_id,
                             "customer_id": person.customer_id if identified else None, "channel": step["channel"],
                             "type": step["type"], "path": step["path"], "query": step["query"], "value": step["value"],
                             "attributes": dict(person.looks)}))
        return out

    def ending(self, person: Person, converted: bool) -> dict | None:
        """What the person does at the end of the journey, as an Interaction: bought, cancelled, called, or nothing."""
        base = {"ts": person.end_ms, "visitor_id": person.visitor_id, "customer_id": person.customer_id, "path": None,
                "query": None, "attributes": dict(person.looks)}
        if person.goal == "purchase":
            return {**base, "channel": "web", "type": "purchase", "path": "/checkout/done", "value": person.value} \
                if converted else None
        if person.goal == "retain":
            return None if converted else {**base, "channel": "web", "type": "cancel", "path": "/account/cancel",
                                           "value": person.value}
        return None if converted else {**base, "channel": "voice", "type": "call", "value": CALL_COST}


@dataclass
class Reaction:
    kind: str                    # shown, declined, accepted, abandoned, expired, ignored
    start_ms: int | None = None  # when an agent took it
    handling_ms: int = 0


@dataclass
class Reception:
    """How people answer invitations and how agents take them: one model for the live simulator and the benchmark.

    An agent-led invitation (chat, call back) needs the person to accept and an agent of the skill
    to be free within the person's patience; it then holds that agent for the handling time. Other
    channels are shown. What reaches a person sets their strength (the share of the type's effect
    they get; the most effective invitation counts). A sleeping dog is put off by any offer, accepted
    or not, as much as the action's effect on that channel.
    """

    scenario: Scenario
    free_at: dict = field(default_factory=dict)        # skill -> [time each agent is free again]
    strength: dict = field(default_factory=dict)       # visitor -> strength
    engaged: set = field(default_factory=set)          # visitors an agent took (they do not accept a second)

    def __post_init__(self):
        for name, skill in self.scenario.agents:
            self.free_at[name] = [0] * skill.agents
            heapq.heapify(self.free_at[name])

    def free_agents(self, skill: str | None, t: int) -> int:
        return sum(1 for f in self.free_at.get(skill or "", []) if f <= t)

    def agents(self, skill: str | None) -> int:
        return len(self.free_at.get(skill or "", []))

    def offer(self, person: Person | None, t: int, action_id: str, channel: str, skill: str | None) -> Reaction:
        if person is None or t >= person.end_ms or t < person.arrive_ms:
            return Reaction("expired")
        effect = person.world.effect(action_id, channel)
        if person.type == "sleeping_dog":
            self._reach(person, effect)
        if channel not in HUMAN_CHANNELS:
            self._reach(person, effect)
            return Reaction("shown")
        if person.visitor_id in self.engaged:
            return Reaction("ignored")
        if not person.accepts:
            return Reaction("declined")
        agents = self.free_at.get(skill or "")
        if not agents:
            return Reaction("abandoned")
        start = max(t, agents[0])
        if start - t > self.scenario.patience_ms or start >= person.end_ms:
            return Reaction("abandoned")  # gave up waiting, or had left before an agent was free
        mean = self.scenario.skill(skill).handling_ms
        handling = max(1_000, mean * person.handling_permille // 1000)
        heapq.heapreplace(agents, start + handling)
        self.engaged.add(person.visitor_id)
        self._reach(person, effect)
        return Reaction("accepted", start, handling)

    def _reach(self, person: Person, effect: float) -> None:
        self.strength[person.visitor_id] = max(self.strength.get(person.visitor_id, 0.0), effect)

    def p_final(self, person: Person) -> float:
        return person.p_convert(self.strength.get(person.visitor_id, 0.0))

    def converts(self, person: Person) -> bool:
        return person.u < self.p_final(person)

