"""The state detection keeps in its tables reads the same after a refactor: stored JSON is a contract with running workers.

A worker restored from a changelog written by an earlier release must go on from that state: the
fixture was written by the code before the state got names (one-letter keys, timers as lists).
"""
import json
from pathlib import Path

from streams.detection.rules import load_detection
from streams.settings import REPO_ROOT
from tests.unit.detection.harness import M, S, Partition

FIXTURE = Path(__file__).parent / "fixtures" / "state_before_names.json"
RULES = load_detection(REPO_ROOT / "tests" / "unit" / "detection" / "fixtures" / "detection_rules.yaml")


def journeys(p: Partition) -> None:
    """Three visitors with state of every kind: count windows, a sequence buffer, pending absence and dwell
    timers, a rule fired once this session, a known customer, a cart, a duplicate, an expiry queue."""
    p.event("page_view", 0, visitor="v1", path="/shop/x200", value=999.0, customer_id="C1")
    p.event("add_to_cart", 10 * S, visitor="v1", value=60.0)
    p.event("checkout_start", 20 * S, visitor="v1")                      # cart-stall waits 3 minutes
    p.event("login_failed", 25 * S, visitor="v2")                        # one of two
    p.event("page_view", 30 * S, visitor="v2", path="/account/password-reset")  # fires, once per session
    p.event("search", 31 * S, visitor="v2", path="/help", query="router")  # one of three help searches
    p.event("add_to_cart", 38 * S, visitor="v3", value=20.0)             # a sequence's first step
    p.event("page_view", 40 * S, visitor="v3", path="/pricing/plans")   # pricing dwell starts
    p.event("page_view", 42 * S, visitor="v3", path="/pricing/plans", event_id="e8")  # a producer duplicate


def without_timer_views(state: dict) -> dict:
    """The state as the fixture's code wrote it: a timer since carries an 8th field, the session view when it was set."""
    for visitor in state["visitors"].values():
        for timer in visitor["t"]:
            assert isinstance(timer[7], dict) and {"pages", "cart", "session_id"} <= set(timer[7])
        visitor["t"] = [timer[:7] for timer in visitor["t"]]
    return state


def test_the_same_journeys_store_the_same_json_as_before():
    # Given the journeys that wrote the fixture, when today's code runs them
    p = Partition(RULES)
    journeys(p)
    # Then what it stores is what the earlier code stored, key for key (timers have one field more)
    stored = json.loads(FIXTURE.read_text())
    assert without_timer_views(json.loads(json.dumps({"visitors": p.visitors, "timers": p.timers}))) == stored["state"]
    assert p.fired() == [tuple(f) for f in stored["fired"]]


def test_state_written_before_goes_on_firing_the_pending_timers():
    # Given a partition restored from state the earlier code wrote
    stored = json.loads(FIXTURE.read_text())
    p = Partition(RULES)
    p.visitors, p.timers = stored["state"]["visitors"], stored["state"]["timers"]
    p.detector.max_ts[0] = max(v["last"] for v in p.visitors.values())
    # When its clock passes the deadlines, then the absence and the dwell fire as they would have
    p.tick(4 * M)
    assert p.fired() == [tuple(f) for f in stored["fired_after"]]
    # And a later event of a restored visitor is still counted with the one before it
    assert [s["rule_id"] for s in p.event("login_failed", 4 * M + S, visitor="v2")] == ["login-trouble"]
    # And a duplicate of a stored event id is still dropped
    assert p.event("page_view", 5 * M, visitor="v3", path="/pricing/plans", event_id="e8") == []


def test_the_tables_json_codec_stores_named_state_as_the_same_json():
    # Given today's state of the journeys (timers are Timer tuples in memory)
    from faust.serializers import codecs

    p = Partition(RULES)
    journeys(p)
    # When Faust's table codec (json) writes and reads it, then the stored form is the fixture's
    json_codec = codecs.get_codec("json")
    stored = json.loads(FIXTURE.read_text())["state"]
    written = {table: {key: json_codec.loads(json_codec.dumps(value)) for key, value in records.items()}
               for table, records in (("visitors", p.visitors), ("timers", p.timers))}
    assert without_timer_views(written) == stored
