"""The fault suite's accounting: what the rules imply for the stored events, against what came out."""
from streams.adapters import kit
from streams.decision.policy import decision_id
from streams.delivery.render import delivery_id
from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.rules import load_detection
from streams.settings import REPO_ROOT
from streams.tools.chaos import tally
from tests.support import wire

RULES = load_detection(REPO_ROOT / "rules" / "detection.yaml")
T0 = 1_700_000_000_000


def cancel_search(visitor: str, ts: int) -> dict:
    return wire.interaction(event_id=f"{visitor}-{ts}", visitor_id=visitor, type_="search", ts=ts, path="/help",
                            query="cancel my contract")


def stored(records: list[dict], partition: int = 0) -> list[tuple]:
    return [(partition, offset, T0 + offset, r) for offset, r in enumerate(records)]


def test_lost_invented_and_repeated_decisions_and_deliveries_are_told_apart(monkeypatch):
    # Given two visitors' searches to cancel, which the rules turn into two signals
    events = [cancel_search("v1", T0), cancel_search("v2", T0 + 1000)]
    tx, detector = Tx({}, {}), Detector(lambda: RULES)
    signals = [s for ev in events for s in detector.on_event(tx, 0, ev).signals]
    assert len(signals) == 2
    d1, d2 = (decision_id(s["signal_id"]) for s in signals)
    # and on the topics: v1's decision twice (at-least-once, the same record), v2's never, one nobody implied
    act = {"decision_id": d1, "outcome": "act"}
    decisions = stored([act, dict(act), {"decision_id": "d-nobody", "outcome": "control"}])
    # and v1's delivery twice, with another between: an adapter remembering one id forgets it in between
    monkeypatch.setattr(kit, "SEEN_IDS", 1)
    deliveries = stored([{"delivery_id": delivery_id(d1)}, {"delivery_id": "other"}, {"delivery_id": delivery_id(d1)}])
    # When they are accounted for
    got = tally(stored(events), decisions, deliveries, RULES, 5_000)
    # Then each kind is counted once, and the ids say which is which
    assert (got["signals_implied"], got["decisions_expected"]) == (2, 2)
    assert (got["decisions_lost"], got["decisions_invented"], got["decision_records_repeated"]) == (1, 1, 1)
    assert got["decisions_repeated_differently"] == 0
    assert (got["deliveries_expected"], got["deliveries_lost"], got["deliveries_invented"]) == (1, 0, 1)
    assert (got["delivery_records_repeated"], got["deliveries_an_adapter_shows_twice"]) == (1, 1)
    assert d2 not in {d["decision_id"] for *_, d in decisions}


def test_a_repeat_the_adapter_remembers_is_shown_once(monkeypatch):
    # Given one delivery on the topic twice in a row (a worker that crashed after sending it)
    monkeypatch.setattr(kit, "SEEN_IDS", 100)
    deliveries = stored([{"delivery_id": "x"}, {"delivery_id": "x"}])
    # Then the record is repeated, but an adapter shows it once
    got = tally([], [], deliveries, RULES, 5_000)
    assert got["delivery_records_repeated"] == 1 and got["deliveries_an_adapter_shows_twice"] == 0
