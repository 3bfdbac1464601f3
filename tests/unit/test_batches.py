"""How a stage takes its records: what is waiting, as one batch; a lone event at once; nothing held for an event that never comes."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from tests.support.stage import Stage, async_test


class FakeStream:
    """A stream whose queue says what `waiting` says, and whose events come from `source` (an asyncio.Queue)."""

    def __init__(self, source: asyncio.Queue):
        self.source, self.enable_acks = source, True
        self.channel = SimpleNamespace(empty=lambda: self.source.empty() and not self.claims_more)
        self.claims_more = False

    async def events(self):
        while True:
            yield await self.source.get()


async def take(engine, stream, n_batches: int, **kw) -> list:
    out = []
    async for batch in engine.batches(stream, 100, **kw):
        out.append(batch)
        if len(out) == n_batches:
            break
    return out


@async_test
async def test_what_is_waiting_is_one_batch_and_a_lone_event_goes_at_once(tmp_path):
    # Given five events waiting, then (later) one more
    engine, source = Stage(tmp_path).engine, asyncio.Queue()
    for i in range(5):
        source.put_nowait(i)
    stream = FakeStream(source)
    asyncio.get_running_loop().call_later(0.05, source.put_nowait, 5)
    # When the stage takes batches, then the five are one batch and the late one a batch of its own
    assert await take(engine, stream, 2) == [[0, 1, 2, 3, 4], [5]]
    # And Faust's own acks are off: the stage acks each batch once processed
    assert stream.enable_acks is False


@async_test
async def test_a_batch_is_not_held_for_an_event_that_does_not_come(tmp_path):
    # Given one event taken while the queue claims more, but Faust empties it (a stop or a rebalance)
    engine, source = Stage(tmp_path).engine, asyncio.Queue()
    source.put_nowait("e1")
    stream = FakeStream(source)
    stream.claims_more = True
    # When the stage takes a batch, then the one event comes out within the hold time, to be processed and acked
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await take(engine, stream, 1, hold_s=0.05) == [["e1"]]
    assert loop.time() - t0 < 1.0
