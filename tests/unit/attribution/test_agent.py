"""The attribution agent on Faust's test context: records of three topics in, attributions and dead letters out."""
from __future__ import annotations

from streams import topics
from streams.attribution import agent as attribution_agent
from streams.attribution.agent import STAGE
from tests.support import wire
from tests.support.stage import ACTIONS, T0, Stage, async_test, decision, put_on


def purchase(event_id: str, ts: int) -> bytes:
    ev = wire.interaction(event_id=event_id, visitor_id="v1", type_="purchase", ts=ts, customer_id="C1", value=80.0)
    return wire.encode("Interaction", ev)


@async_test
async def test_bad_records_are_dead_lettered_with_the_reason_and_the_next_ones_still_attributed(tmp_path):
    # Given the attribution stage
    st = Stage(tmp_path)
    agent, table = attribution_agent.register(st.engine, ACTIONS)
    st.without_changelog(table)
    async with agent.test_context() as inbox:
        # When garbage arrives on engage.decisions and a purchase without a key on engage.conversions,
        await put_on(inbox, "engage.decisions", b"C1", b"not avro at all")
        await put_on(inbox, "engage.conversions", None, purchase("e0", T0 + 10))
        # followed by a decision and a purchase of C1
        await put_on(inbox, "engage.decisions", b"C1", st.engine.encode(topics.DECISIONS, decision("sig-1")))
        await put_on(inbox, "engage.conversions", b"C1", purchase("e1", T0 + 60_000))
        dead = await st.wait_out(topics.DEADLETTER, 2)
        out = await st.wait_out(topics.ATTRIBUTIONS, 2)
    # Then both bad records are kept, whole, with the reason
    assert [(d["topic"], d["stage"]) for _, d, _ in dead] == [("engage.decisions", STAGE), ("engage.conversions", STAGE)]
    assert dead[0][1]["value"] == b"not avro at all" and dead[0][1]["error"].startswith("DecodeError")
    assert "needs a key" in dead[1][1]["error"]
    # And nothing after them was lost: the decision is attributed its purchase, keyed by decision id
    key, last, _ = out[-1]
    assert key == last["decision_id"].encode() and last["purchases"] == 1 and last["revenue"] == 80.0
