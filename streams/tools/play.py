"""Decides how a scenario is played against a running engine: journeys on engage.events, and people and agents answering its offers.

Simulated time runs `speed` times faster than the wall clock and ends at the wall clock, so events
are never dated ahead of it. Every event of a journey is produced at its time; each Delivery is
answered with Outcomes (shown, declined, accepted, abandoned, expired, handled with the agent's
seconds) by the same `Reception` the decision benchmark scores with; agents' availability goes to
engage.agent-availability as they become busy and free; and at the end of each journey the person
buys, cancels, calls the contact centre, or does nothing, as their truth and the offers they got say.
"""
from __future__ import annotations

import heapq
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streams import clients, topics
from streams.codec import DecodeError
from streams.settings import Settings
from streams.tools.scenario import Scenario
from streams.tools.world import LINGER_S, THINK_S, Person, Population, Reception

# simulated time after the last arrival for the last journeys to end (their steps and lingering)
JOURNEY_TAIL_MS = int((max(hi for _, hi in LINGER_S.values()) + 12 * THINK_S[1]) * 1000)


def tail_ms(scenario: Scenario) -> int:
    """Simulated time after the last arrival until everything has happened: the journeys, then an agent
    taken at the last moment, after the person's patience, for up to 1.5 times the handling time."""
    handling = max((skill.handling_ms for _, skill in scenario.agents), default=0)
    return JOURNEY_TAIL_MS + scenario.patience_ms + handling * 3 // 2
AVAILABILITY_EVERY_MS = 30_000
GRACE_MS = 60_000   # a person is remembered this long after leaving: a late offer is answered "expired"


@dataclass
class PlayStats:
    events: int = 0
    people: int = 0
    deliveries: int = 0
    outcomes: dict = field(default_factory=dict)
    conversions: int = 0
    sim_start_ms: int = 0
    run: str = ""


class Player:
    """Plays one scenario. `step(now)` does everything due by simulated time `now`; pure of Kafka (sends go to `emit`)."""

    def __init__(self, scenario: Scenario, sim_start_ms: int, emit, truth_file=None, run: str = ""):
        self.scenario = scenario
        self.population = Population(scenario, start_ms=sim_start_ms, run=run)
        self.people = self.population.people()
        self.next_person: Person | None = next(self.people, None)
        self.reception = Reception(scenario)
        self.emit = emit                   # emit(topic spec, key, record)
        self.truth_file = truth_file
        self.heap: list = []
        self.seq = itertools.count()
        self.active: dict[str, Person] = {}
        self.left: dict[str, int] = {}     # visitor -> when they left
        self.stats = PlayStats(sim_start_ms=sim_start_ms, run=run)
        self.next_availability = sim_start_ms

    def _push(self, t: int, kind: str, data) -> None:
        heapq.heappush(self.heap, (t, next(self.seq), kind, data))

    def done(self) -> bool:
        return self.next_person is None and not self.heap

    def step(self, now: int) -> None:
        while self.next_person is not None and self.next_person.arrive_ms <= now:
            person = self.next_person
            self.next_person = next(self.people, None)
            self.active[person.visitor_id] = person
            self.stats.people += 1
            for i, (at, ev) in enumerate(self.population.events_of(person)):
                self._push(at, "event", {**ev, "event_id": f"{self.scenario.name}-{person.visitor_id}-{i}"})
            self._push(person.end_ms, "end", person)
        if now >= self.next_availability:
            for skill, _ in self.scenario.agents:
                self._availability(skill, now)
            self.next_availability = now + AVAILABILITY_EVERY_MS
        while self.heap and self.heap[0][0] <= now:
            t, _, kind, data = heapq.heappop(self.heap)
            if kind == "event":
                self.emit(topics.EVENTS, data["visitor_id"], data)
                self.stats.events += 1
            elif kind == "outcome":
                self._outcome_out(data)
            elif kind == "free":
                self._availability(data, t)
            else:
                self._end(data)
        for visitor, at in list(self.left.items()):
            if at + GRACE_MS < now:
                del self.left[visitor]
                self.active.pop(visitor, None)

    def _end(self, person: Person) -> None:
        converted = self.reception.converts(person)
        ev = self.population.ending(person, converted)
        if ev is not None:
            self.emit(topics.EVENTS, person.visitor_id, {**ev, "event_id": f"{self.scenario.name}-{person.visitor_id}-end"})
            self.stats.events += 1
        self.stats.conversions += converted
        self.left[person.visitor_id] = person.end_ms
        if self.truth_file is not None:
            self.truth_file.write(json.dumps({
                "visitor_id": person.visitor_id, "customer_id": person.customer_id, "intent": person.intent,
                "type": person.type, "goal": person.goal, "value": person.value, "base": person.truth.base,
                "treated": person.truth.treated, "strength": self.reception.strength.get(person.visitor_id, 0.0),
                "p_final": self.reception.p_final(person), "converted": converted,
                "arrive_ms": person.arrive_ms, "end_ms": person.end_ms}) + "\n")

    def on_delivery(self, d: dict, now: int) -> None:
        """A person meets an offer at simulated time `now` (or the delivery's own time, if later)."""
        self.stats.deliveries += 1
        t = max(now, d["ts"])
        person = self.active.get(d["visitor_id"])
        if t >= d["expires_at"]:
            self._outcome(d, "expired", t)
            return
        reaction = self.reception.offer(person, t, d["action_id"], d["channel"], d["skill"])
        if reaction.kind in ("shown", "declined", "expired"):
            self._outcome(d, reaction.kind, t)
        elif reaction.kind == "ignored":
            self._outcome(d, "declined", t)
        elif reaction.kind == "abandoned":
            self._outcome(d, "accepted", t)
            self._push(t + self.scenario.patience_ms, "outcome", (d, "abandoned", t + self.scenario.patience_ms, None))
        else:
            self._outcome(d, "accepted", t)
            self._availability(d["skill"], reaction.start_ms)
            done = reaction.start_ms + reaction.handling_ms
            self._push(done, "outcome", (d, "handled", done, reaction.handling_ms / 1000))
            self._push(done, "free", d["skill"])

    def _outcome(self, d: dict, kind: str, t: int, value: float | None = None) -> None:
        self._outcome_out((d, kind, t, value))

    def _outcome_out(self, data) -> None:
        d, kind, t, value = data
        self.stats.outcomes[kind] = self.stats.outcomes.get(kind, 0) + 1
        self.emit(topics.OUTCOMES, d["key"], {
            "outcome_id": f"{d['delivery_id']}-{kind}", "key": d["key"], "ts": t, "type": kind,
            "delivery_id": d["delivery_id"], "decision_id": d["decision_id"], "action_id": d["action_id"],
            "channel": d["channel"], "visitor_id": d["visitor_id"], "customer_id": d["customer_id"], "value": value,
            "source": "simulator"})

    def _availability(self, skill: str | None, t: int) -> None:
        if self.scenario.skill(skill) is None:
            return  # a skill the scenario has no agents for
        free = self.reception.free_agents(skill, t)
        self.emit(topics.AGENT_AVAILABILITY, skill, {"skill": skill, "ts": t, "agents_total": self.reception.agents(skill),
                                                     "agents_free": free, "queue_length": 0})


def play(settings: Settings, scenario: Scenario, speed: float = 1.0, react: bool = True,
         stop: threading.Event | None = None, truth_path: Path | None = None, quiet: bool = False) -> PlayStats:
    """Publish the profiles, then play the scenario in (sped-up) real time. Returns what was played."""
    stop = stop or threading.Event()
    codec = clients.codec(settings)
    producer = clients.producer(settings, **{"linger.ms": 5})
    span_ms = scenario.duration_ms + tail_ms(scenario)

    def emit(spec, key: str, record: dict) -> None:
        name = settings.topic(spec.name)
        value = codec.encode(name, spec.schema, record)
        clients.produce_when_room(producer, name, key=key.encode(), value=value)

    consumer = None
    if react:
        consumer = clients.consumer(settings, clients.throwaway_group(f"{settings.app_id}-simulated-people"),
                                    offset_reset="latest", log_level=None)
        consumer.subscribe([settings.topic(topics.DELIVERY.name)])
        deadline = time.monotonic() + 20
        while not consumer.assignment() and time.monotonic() < deadline:  # offers made before this would be missed
            consumer.poll(0.2)
    delivery_topic = settings.topic(topics.DELIVERY.name)
    for profile in Population(scenario).profiles:
        emit(topics.PROFILES, profile["customer_id"], {**profile, "updated_ts": int(time.time() * 1000)})
    producer.flush(30)
    # the simulated clock starts now, so that it reaches the wall clock as the last journeys end
    wall_start = time.time()
    sim_start = int(wall_start * 1000 - span_ms + span_ms / speed)
    run = np.base_repr(int(wall_start), 36).lower()  # a new tag each second: see Population
    truth_file = open(truth_path, "w") if truth_path else None
    if truth_file:
        truth_file.write(json.dumps({"scenario": scenario.name, "file": scenario.file, "seed": scenario.seed,
                                     "sim_start_ms": sim_start, "speed": speed, "run": run}) + "\n")
    player = Player(scenario, sim_start, emit, truth_file, run=run)
    last_report = time.monotonic()
    try:
        while not stop.is_set() and not player.done():
            now = sim_start + int((time.time() - wall_start) * 1000 * speed)
            player.step(now)
            if consumer is not None:
                for msg in consumer.consume(500, 0.02):
                    if msg.error():
                        continue
                    try:
                        d = codec.decode(delivery_topic, "Delivery", msg.value())
                    except DecodeError:
                        continue
                    player.on_delivery(d, now)
            else:
                time.sleep(0.02)
            producer.poll(0)
            if not quiet and time.monotonic() - last_report >= 10:
                last_report = time.monotonic()
                s = player.stats
                print(f"[simulator] {s.events} events, {s.people} people, {s.deliveries} offers answered, "
                      f"{(now - sim_start) / 60_000:.1f} of {span_ms / 60_000:.0f} simulated minutes", flush=True)
    finally:
        producer.flush(30)
        if consumer is not None:
            consumer.close()
        if truth_file:
            truth_file.close()
    return player.stats
