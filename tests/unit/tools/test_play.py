"""The scenario player without Kafka: journeys out in time order, offers answered, agents' availability, endings."""
from __future__ import annotations

from streams import topics
from streams.tools.play import Player
from streams.tools.scenario import load_scenario


class Sent:
    def __init__(self):
        self.records = []

    def __call__(self, spec, key, record):
        self.records.append((spec.name, key, record))

    def of(self, spec):
        return [r for name, _, r in self.records if name == spec.name]


def play_until(player, end, step=1_000, on_step=None):
    t = player.stats.sim_start_ms
    while t <= end and not player.done():
        player.step(t)
        if on_step:
            on_step(t)
        t += step


def test_a_whole_short_scenario_plays_its_journeys_and_ends_them():
    # Given five simulated minutes of the default scenario and nobody answering offers
    sc = load_scenario("default").with_(duration_ms=5 * 60_000)
    sent = Sent()
    player = Player(sc, 1_000_000, sent)
    # When it is played to the end
    play_until(player, 1_000_000 + 60 * 60_000)
    events = sent.of(topics.EVENTS)
    # Then every person's events went out, in time order per visitor, with unique ids,
    # and the journeys ended in purchases, cancellations and calls
    assert player.done() and player.stats.people > 100
    assert len({e["event_id"] for e in events}) == len(events)
    per_visitor = {}
    for e in events:
        per_visitor.setdefault(e["visitor_id"], []).append(e["ts"])
    assert all(ts == sorted(ts) for ts in per_visitor.values())
    kinds = {e["type"] for e in events}
    assert {"purchase", "cancel", "call"} <= kinds
    # and every skill's availability was published, all agents free
    avail = sent.of(topics.AGENT_AVAILABILITY)
    assert {a["skill"] for a in avail} == {"sales", "retention", "support"}
    assert all(a["agents_free"] == a["agents_total"] for a in avail)


def test_an_accepted_chat_occupies_an_agent_and_reports_the_handling_time():
    # Given one person who accepts every invitation, and an offer of a chat while they are on the site
    sc = load_scenario("default").with_(duration_ms=60_000, accept=1.0)
    sent = Sent()
    player = Player(sc, 0, sent)
    offered = {}

    def offer(t):
        for visitor, person in player.active.items():
            if visitor not in offered and t >= person.arrive_ms:
                offered[visitor] = t
                player.on_delivery({"delivery_id": f"d-{visitor}", "decision_id": f"x-{visitor}", "key": visitor,
                                    "ts": t, "expires_at": t + 600_000, "visitor_id": visitor, "customer_id": None,
                                    "channel": "chat", "action_id": "checkout-assist", "skill": "sales"}, t)
    play_until(player, 60 * 60_000, on_step=offer)
    outcomes = sent.of(topics.OUTCOMES)
    # Then each person accepted; those an agent took report the agent's seconds when the agent is done,
    # and sales availability went down and back up
    assert offered and {o["type"] for o in outcomes} <= {"accepted", "handled", "abandoned"}
    handled = [o for o in outcomes if o["type"] == "handled"]
    assert handled and all(90 <= o["value"] <= 270 for o in handled)  # 0.5 to 1.5 x 3 minutes
    free = [a["agents_free"] for a in sent.of(topics.AGENT_AVAILABILITY) if a["skill"] == "sales"]
    assert min(free) < 12 and free[-1] == 12


def test_an_offer_after_its_expiry_is_answered_expired():
    sc = load_scenario("default").with_(duration_ms=60_000)
    sent = Sent()
    player = Player(sc, 0, sent)
    player.on_delivery({"delivery_id": "d1", "decision_id": "x1", "key": "V", "ts": 0, "expires_at": 10,
                        "visitor_id": "V", "customer_id": None, "channel": "chat", "action_id": "a", "skill": "sales"}, 20)
    [o] = sent.of(topics.OUTCOMES)
    assert o["type"] == "expired" and o["outcome_id"] == "d1-expired"
