"""What every stage shares: a record's table writes leave Faust's buffer before the record is acked."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from streams.app import build_app
from streams.settings import Settings


class GivingUpBuffer:
    """Faust's ProducerBuffer as it behaves on a busy loop: flush() hands over one write and returns,
    as flush_atmost does when 100 ms pass without progress, while writes are still waiting."""

    def __init__(self, waiting: int):
        self.size, self.flushes = waiting, 0

    async def flush(self) -> None:
        self.flushes += 1
        await asyncio.sleep(0)
        self.size -= 1


def test_state_is_handed_over_even_when_fausts_flush_gives_up_early(tmp_path):
    # Given an engine whose producer buffer still holds 3 table writes and whose flush gives up after each
    engine = build_app(Settings(store_url="memory://", data_dir=tmp_path / "state"))
    buffer = GivingUpBuffer(waiting=3)
    engine.app._producer = SimpleNamespace(buffer=buffer)
    # When a stage finishes a record
    asyncio.run(engine.state_handed_over())
    # Then it waited until every write was handed over, not for one flush
    assert buffer.size == 0 and buffer.flushes == 3
