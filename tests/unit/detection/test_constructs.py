"""Each construct of the rule language on hand-built event sequences: in order, out of order, late, expired."""
import pytest

from streams.detection.partition import Tx
from streams.detection.state import BUFFER, RULES, SEEN, TIMERS, WINDOW
from streams.detection.visitor import MAX_TIMERS, SEEN_IDS, SEQUENCE_BUFFER, SESSION_GAP_MS, InvalidEvent
from tests.unit.detection.harness import M, S, Partition, cart_stall, rules

SINGLE = rules("""
- id: cancel
  when: {event: search, where: 'query ~ "cancel"'}
  signal: cancel_intent
  priority: 90
""")


def test_single_event_with_an_expression_fires_with_its_evidence_and_priority():
    p = Partition(SINGLE)
    p.event("page_view", 0, path="/")
    out = p.event("search", S, query="How do I CANCEL?")
    assert [(s["signal"], s["priority"], [e["event_id"] for e in s["evidence"]]) for s in out] == [("cancel_intent", 90, ["e2"])]
    assert out[0]["ruleset_version"] == SINGLE.version


def test_all_any_not_combine_event_conditions():
    # Given a rule: a search or a help page view, on the web, that does not mention billing
    p = Partition(rules("""
- id: combo
  when:
    all:
      - any: [{event: search}, {event: page_view, where: 'path startswith "/help"'}]
      - where: 'channel == "web"'
      - not: {where: 'query contains "billing"'}
  signal: s
"""))
    # When these arrive, then only the matching ones fire
    assert p.event("search", 0, query="router") and p.event("page_view", S, path="/help/x")
    assert not p.event("search", 2 * S, query="billing help")
    assert not p.event("page_view", 3 * S, path="/shop")


SEQ = rules("""
- id: browse-then-buy-intent
  when:
    sequence: [{event: page_view, where: 'path startswith "/shop"'}, {event: add_to_cart}, {event: checkout_start}]
    within: 10m
  signal: s
""")


def test_sequence_in_order_with_other_events_between_fires_once():
    p = Partition(SEQ)
    p.event("page_view", 0, path="/shop/a")
    p.event("search", S, query="x")
    p.event("add_to_cart", 2 * S, value=10.0)
    p.event("page_view", 3 * S, path="/")
    out = p.event("checkout_start", 4 * S)
    assert [[e["type"] for e in s["evidence"]] for s in out] == [["page_view", "add_to_cart", "checkout_start"]]
    assert not p.event("checkout_start", 5 * S)  # the matched events are used up


def test_sequence_steps_out_of_order_do_not_match():
    p = Partition(SEQ)
    p.event("checkout_start", 0)
    p.event("add_to_cart", S)
    assert not p.event("page_view", 2 * S, path="/shop/a")


def test_sequence_longer_than_within_does_not_match():
    p = Partition(SEQ)
    p.event("page_view", 0, path="/shop/a")
    p.event("add_to_cart", S)
    assert not p.event("checkout_start", 11 * M)


def test_sequence_whose_events_arrive_out_of_order_matches_by_event_time():
    # Given the first step arrives last but carries the earliest time
    p = Partition(SEQ)
    p.event("add_to_cart", 2 * S)
    p.event("checkout_start", 3 * S)
    out = p.event("page_view", 1 * S, path="/shop/a")
    assert [e["type"] for e in out[0]["evidence"]] == ["page_view", "add_to_cart", "checkout_start"]


COUNT = rules("""
- id: login-trouble
  when: {count: {event: login_failed, at_least: 2, within: 5m}}
  signal: login_trouble
""")


def test_count_within_a_sliding_window_fires_once_per_burst():
    p = Partition(COUNT)
    p.event("login_failed", 0)
    assert p.event("login_failed", 4 * M)
    assert not p.event("login_failed", 5 * M)  # counts afresh after firing
    assert p.event("login_failed", 6 * M)


def test_count_events_too_far_apart_do_not_fire():
    p = Partition(COUNT)
    p.event("login_failed", 0)
    assert not p.event("login_failed", 6 * M)


def test_a_late_event_inside_the_window_still_counts():
    p = Partition(COUNT)
    p.event("login_failed", M)
    out = p.event("login_failed", 0)
    assert [e["ts"] for e in out[0]["evidence"]] == sorted(e["ts"] for e in out[0]["evidence"])


DWELL = rules("""
- id: pricing
  when: {dwell: {where: 'path startswith "/pricing"', at_least: 60s}}
  signal: pricing_hesitation
""")


def test_dwell_fires_when_the_watermark_passes_a_minute_in_the_section():
    # Given a visitor enters the pricing pages and keeps browsing them
    p = Partition(DWELL)
    p.event("page_view", 0, path="/pricing")
    p.event("page_view", 30 * S, path="/pricing/business")
    assert p.fired() == []
    # When another visitor's event moves the partition's event time past the minute
    p.event("page_view", 61 * S, visitor="v2", path="/")
    # Then the dwell fires at the minute, with the entry as evidence
    assert p.fired() == [("pricing", 60 * S)]
    assert p.signals[0]["evidence"][0]["path"] == "/pricing"


def test_leaving_the_section_before_the_minute_cancels_the_dwell():
    p = Partition(DWELL)
    p.event("page_view", 0, path="/pricing")
    p.event("page_view", 20 * S, path="/shop")
    p.event("page_view", 30 * S, path="/pricing")  # a new visit starts here
    p.tick(89 * S)
    assert p.fired() == []
    p.tick(90 * S)
    assert p.fired() == [("pricing", 90 * S)]


def test_an_idle_partition_fires_from_the_wall_clock_tick():
    p = Partition(DWELL, lateness_ms=5 * S)
    p.event("page_view", 0, path="/pricing")
    assert p.tick(64 * S) == []          # watermark = 59 s: not yet
    assert [s["rule_id"] for s in p.tick(65 * S)] == ["pricing"]


STALL = rules(cart_stall("3m"))


def test_absence_fires_when_the_awaited_event_does_not_come():
    p = Partition(STALL)
    p.event("add_to_cart", 0, value=80.0)
    p.event("checkout_start", 10 * S)
    p.event("page_view", 3 * M + 10 * S, visitor="v2")
    assert p.fired() == [("cart-stall", 3 * M + 10 * S)]
    assert [e["type"] for e in p.signals[0]["evidence"]] == ["add_to_cart", "checkout_start"]
    assert p.signals[0]["cart_value"] == 80.0


def test_absence_is_cancelled_by_the_awaited_event():
    p = Partition(STALL)
    p.event("add_to_cart", 0, value=80.0)
    p.event("checkout_start", 10 * S)
    p.event("purchase", 2 * M, value=80.0)
    p.tick(60 * M)
    assert p.fired() == []


def test_absence_is_cancelled_by_an_awaited_event_arriving_late_within_the_lateness():
    # Given 10 s allowed lateness and an event of another visitor right after the deadline
    p = Partition(STALL, lateness_ms=10 * S)
    p.event("add_to_cart", 0, value=80.0)
    p.event("checkout_start", 10 * S)
    p.event("page_view", 3 * M + 15 * S, visitor="v2")   # watermark 3m05s: the deadline 3m10s has not passed
    # When the purchase made at 3 minutes arrives late
    p.event("purchase", 3 * M, value=80.0)
    p.tick(60 * M)
    # Then no signal: the awaited event came in time, by event time
    assert p.fired() == []


def test_an_awaited_event_that_arrived_before_the_pattern_completed_prevents_the_timer():
    p = Partition(STALL)
    p.event("add_to_cart", 0, value=80.0)
    p.event("purchase", 20 * S, value=80.0)      # arrives first ...
    p.event("checkout_start", 10 * S)            # ... though checkout was earlier
    p.tick(60 * M)
    assert p.fired() == []


def test_the_guard_is_checked_when_the_absence_fires():
    p = Partition(STALL)
    p.event("add_to_cart", 0, value=20.0)
    p.event("checkout_start", 10 * S)
    p.tick(60 * M)
    assert p.fired() == []  # cart worth less than 50


SESSION = rules("""
- id: reset
  when: {event: page_view, where: 'path startswith "/account/password-reset"'}
  signal: login_trouble
  once_per_session: true
- id: engaged-returning
  when: {event: page_view, where: 'session.pages >= 3 and session.returning and session.duration_s >= 60'}
  signal: engaged
  once_per_session: true
""")


def test_once_per_session_rearms_after_twenty_idle_minutes():
    p = Partition(SESSION)
    p.event("page_view", 0, path="/account/password-reset")
    p.event("page_view", S, path="/account/password-reset")
    p.event("page_view", S + SESSION_GAP_MS + 1, path="/account/password-reset")
    assert [s["rule_id"] for s in p.signals] == ["reset", "reset"]
    assert p.signals[0]["session_id"] != p.signals[1]["session_id"]


def test_session_facts_pages_returning_and_time_on_site():
    p = Partition(SESSION)
    p.event("page_view", 0, path="/")
    for i, at in enumerate([SESSION_GAP_MS + M, SESSION_GAP_MS + M + 30 * S, SESSION_GAP_MS + 2 * M + 10 * S]):
        p.event("page_view", at, path=f"/p{i}")
    assert [s["rule_id"] for s in p.signals] == ["engaged-returning"]
    assert p.signals[0]["session_pages"] == 3


def test_duplicate_event_ids_are_dropped():
    p = Partition(SINGLE)
    p.event("search", 0, query="cancel", event_id="same")
    assert not p.event("search", S, query="cancel", event_id="same")


def test_event_breaking_the_contract_is_refused():
    p = Partition(SINGLE)
    with pytest.raises(InvalidEvent, match="visitor_id is empty"):
        p.detector.on_event(Tx(p.visitors, p.timers), 0, {"event_id": "e", "ts": 1, "visitor_id": "", "type": "x"})
    assert p.visitors == {} and p.timers == {} and p.detector.clocks == {}  # refused before anything changed


def test_state_stays_bounded_under_a_flood_of_events():
    # Given every stateful construct and one visitor sending thousands of matching events
    p = Partition(rules("""
- id: seq
  when: {sequence: [{event: a}, {event: b}, {event: c}], within: 1d}
  signal: s
- id: cnt
  when: {count: {event: a, at_least: 5, within: 1d}}
  signal: s
- id: gone
  when: {event: a, then_absent: {event: z, for: 1d}}
  signal: s
"""))
    for i in range(3000):
        p.event("a" if i % 3 else "b", i * S)
    state = p.visitors["v1"]
    assert len(state[SEEN]) == SEEN_IDS
    assert len(state[RULES]["seq"][BUFFER]) <= SEQUENCE_BUFFER
    assert len(state[RULES]["cnt"][WINDOW]) < 5
    assert len(state[TIMERS]) <= MAX_TIMERS


def test_idle_visitors_state_expires_after_the_ttl():
    p = Partition(SINGLE, ttl_ms=60 * M)
    p.event("search", 0, query="x")
    p.event("search", 30 * M, visitor="v2", query="x")
    assert set(p.visitors) == {"v1", "v2"}
    p.event("search", 61 * M, visitor="v3", query="x")
    assert set(p.visitors) == {"v2", "v3"}
    p.tick(200 * M)
    assert p.visitors == {}


@pytest.mark.parametrize("field, size, reason", [
    ("query", 1025, "query has 1,025 characters; at most 1,024"),
    ("path", 5000, "path has 5,000 characters; at most 2,048"),
    ("event_id", 300, "event_id has 300 characters; at most 256"),
])
def test_an_event_with_an_oversize_field_is_refused_before_any_rule_reads_it(field, size, reason):
    # Given a partition with a rule on the query; when an event carries an oversize field
    p = Partition(SINGLE)
    with pytest.raises(InvalidEvent) as refused:
        p.event("search", 0, **{"query": "cancel", field: "x" * size} if field != "event_id" else {"event_id": "e" * size})
    # Then it is refused with the reason (the agent dead-letters it) and nothing was stored
    assert str(refused.value) == reason and p.visitors == {}


ABSENCE_WITH_WHERE = rules(cart_stall("20s"))


@pytest.mark.parametrize("other_traffic_first", [False, True])
def test_an_awaited_event_after_the_window_never_cancels_whatever_the_other_traffic(other_traffic_first):
    # Given a cart of 60 and a checkout at 10 s: the purchase is awaited until 30 s
    p = Partition(ABSENCE_WITH_WHERE, lateness_ms=5 * S)
    p.event("add_to_cart", 0, value=30.0)
    p.event("add_to_cart", S, value=30.0)
    p.event("checkout_start", 10 * S)
    # When the purchase comes at 32 s (too late), before or after another visitor's event at 36 s moved the clock
    if other_traffic_first:
        p.event("page_view", 36 * S, visitor="someone-else", path="/")
    p.event("purchase", 32 * S, value=60.0)
    p.tick(60 * S)
    # Then the signal fires either way, at the deadline, reporting the cart as it was when the pattern completed
    assert p.fired() == [("cart-stall", 30 * S)]
    assert p.signals[0]["cart_value"] == 60.0


DWELL = rules("""
- id: pricing
  when: {dwell: {where: 'path startswith "/pricing"', at_least: 60s}}
  signal: pricing_hesitation
""")
YEAR_MS = 365 * 86_400_000


def _bounded(ruleset, wall_at: int) -> Partition:
    p = Partition(ruleset)
    p.detector.max_ahead_ms, p.detector.max_age_ms = 10 * M, 30 * 86_400_000
    p.detector.wall_ms = lambda: p.ts(wall_at)
    return p


@pytest.mark.parametrize("at, reason", [(500 * YEAR_MS, "ahead of the wall clock"), (-40 * 86_400_000, "days old")])
def test_an_event_dated_far_ahead_or_far_behind_is_refused_and_moves_no_clock(at, reason):
    # Given a visitor dwelling on pricing since 0 s (due at 60 s), the wall clock at 10 s
    p = _bounded(DWELL, wall_at=10 * S)
    p.event("page_view", 0, path="/pricing")
    # When another visitor's event dated centuries ahead (or weeks behind) arrives
    with pytest.raises(InvalidEvent) as refused:
        p.event("page_view", at, visitor="v-clock", path="/")
    # Then it is refused with the reason, the partition's clock did not move, and the dwell is still pending
    assert reason in str(refused.value)
    assert p.detector.max_ts[0] == p.ts(0) and p.fired() == []
    assert p.event("page_view", 30 * S, visitor="v2", path="/") == [] and p.tick(70 * S) and p.fired() == [("pricing", 60 * S)]


def test_a_clock_stored_far_ahead_is_set_back_to_the_wall_clock_on_restore():
    # Given a partition whose stored clock an earlier release moved centuries ahead, with a dwell pending
    p = Partition(DWELL)
    p.event("page_view", 0, path="/pricing")
    p.timers["0:clock"]["max"] = p.ts(500 * YEAR_MS)  # as an event dated then left it, before bounds
    restored = _bounded(DWELL, wall_at=5 * S)
    restored.visitors, restored.timers = p.visitors, p.timers
    # When a worker with bounds takes the partition over, then the clock is set back and the dwell waits its time
    assert restored.event("page_view", 6 * S, visitor="v2", path="/") == []
    assert restored.tick(70 * S) and restored.fired() == [("pricing", 60 * S)]


@pytest.mark.parametrize("other_traffic_first", [False, True])
def test_a_dwell_visit_ends_at_its_deadline_in_event_time_whatever_the_other_traffic(other_traffic_first):
    # Given a visitor on the pricing pages at 0 s (a 60 s dwell) and 5 s of allowed lateness
    p = Partition(DWELL, lateness_ms=5 * S)
    p.event("page_view", 0, path="/pricing")
    # When another visitor's event at 66 s moves the clock past the deadline, or does not, before
    # this visitor's next pricing page at 62 s arrives
    if other_traffic_first:
        p.event("page_view", 66 * S, visitor="someone-else", path="/")
    p.event("page_view", 62 * S, path="/pricing/business")
    p.tick(200 * S)
    # Then the first visit fires at 60 s and the page at 62 s starts the next one, either way
    assert [(rule, at) for rule, at in p.fired()] == [("pricing", 60 * S), ("pricing", 122 * S)]
