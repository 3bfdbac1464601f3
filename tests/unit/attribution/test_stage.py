"""Attribution on the after-decision runner: records of three topics in, attributions and dead letters out, state per key."""
from __future__ import annotations

import json

from streams.runtime.values import decode
from streams import topics
from streams.attribution.stage import FORGOTTEN, STAGE
from tests.support import wire
from tests.support.runners import after_decision, feed, sent
from tests.support.stage import T0, decision


def purchase(event_id: str, ts: int) -> bytes:
    ev = wire.interaction(event_id=event_id, visitor_id="v1", type_="purchase", ts=ts, customer_id="C1", value=80.0)
    return wire.encode("Interaction", ev)


def test_bad_records_are_dead_lettered_with_the_reason_and_the_next_ones_still_attributed(tmp_path):
    # Given the attribution stage
    runner = after_decision(tmp_path)
    # When garbage arrives on engage.decisions and a purchase without a key on engage.conversions,
    # followed by a decision and a purchase of C1
    feed(runner, [("engage.decisions", b"C1", b"not avro at all"),
                  ("engage.conversions", None, purchase("e0", T0 + 10)),
                  ("engage.decisions", b"C1", wire.encode("Decision", decision("sig-1"))),
                  ("engage.conversions", b"C1", purchase("e1", T0 + 60_000))])
    # Then the bad records are kept, whole, with the reason (the garbage decision by delivery too)
    dead = [d for _, d, _ in sent(runner, topics.DEADLETTER)]
    assert [(d["topic"], d["stage"]) for d in dead] == [("engage.decisions", "delivery"), ("engage.decisions", STAGE),
                                                        ("engage.conversions", STAGE)]
    assert dead[1]["value"] == b"not avro at all" and dead[1]["error"].startswith("DecodeError")
    assert "needs a key" in dead[2]["error"]
    # And nothing after them was lost: the decision is attributed its purchase, keyed by decision id
    key, last, _ = sent(runner, topics.ATTRIBUTIONS)[-1]
    assert key == last["decision_id"].encode() and last["purchases"] == 1 and last["revenue"] == 80.0


def test_a_keys_state_is_written_once_per_batch_after_the_attributions_were_acked(tmp_path):
    # Given the attribution stage
    runner = after_decision(tmp_path)
    # When a decision and two purchases of C1 come in one batch
    feed(runner, [("engage.decisions", b"C1", wire.encode("Decision", decision("sig-1"))),
                  ("engage.conversions", b"C1", purchase("e1", T0 + 60_000)),
                  ("engage.conversions", b"C1", purchase("e2", T0 + 90_000))])
    # Then C1's state goes once to the changelog, after every attribution revision was acked
    changelog = runner.changelog[topics.KEY_TO_ATTRIBUTIONS]
    writes = [(json.loads(key), decode(value)) for topic, _, key, value in runner.producer.sent if topic == changelog]
    assert [k for k, _ in writes] == ["C1"]
    kinds = [topic for what, topic in runner.log if what == "acked"]
    assert kinds.index(changelog) > max(i for i, t in enumerate(kinds) if t == "engage.attributions")
    assert [a["purchases"] for _, a, _ in sent(runner, topics.ATTRIBUTIONS)][-1] == 2
    # And RocksDB holds it with the changelog offset it reached
    db = runner.stores.dbs[0]
    assert decode(db.get(topics.KEY_TO_ATTRIBUTIONS, "C1")) == writes[0][1]
    assert db.offset(topics.KEY_TO_ATTRIBUTIONS) == 1


def test_a_forgotten_customers_later_records_change_nothing(tmp_path):
    # Given C1 was attributed a decision, then forgotten
    runner = after_decision(tmp_path)
    feed(runner, [("engage.decisions", b"C1", wire.encode("Decision", decision("sig-1")))])
    before = len(sent(runner, topics.ATTRIBUTIONS))
    feed(runner, [("engage.forget", b"C1", wire.encode("ForgetRequest", {"customer_id": "C1", "ts": T0 + 1,
                                                                        "requested_by": "test"}))])
    # When a purchase of theirs still arrives
    feed(runner, [("engage.conversions", b"C1", purchase("e1", T0 + 60_000))])
    # Then no attribution is revised, the state is the marker, and the forget is audited
    assert len(sent(runner, topics.ATTRIBUTIONS)) == before
    assert decode(runner.stores.dbs[0].get(topics.KEY_TO_ATTRIBUTIONS, "C1")) == {FORGOTTEN: T0 + 1}
    [(_, audit, _)] = sent(runner, topics.AUDIT)
    assert audit["stage"] == STAGE and audit["detail"].startswith("deleted attribution state")
