"""Faust's recovery must seek stream partitions to their committed offsets before it resumes them."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.tables.recovery import Recovery
from faust.types import TP

from streams import faust_fixes


EVENTS_0 = TP("events", 0)


class FakeConsumer:
    """Records the order of the calls recovery makes."""

    def __init__(self, calls):
        self.calls = calls
        # an ack of a queued record skipped after the revocation, and a gap, both from before the seek
        self._acked, self._acked_index, self._gap = {EVENTS_0: [7]}, {EVENTS_0: {7}}, {EVENTS_0: object()}
        self._read_offset = {EVENTS_0: 5}

    def assignment(self):
        return {EVENTS_0, TP("changelog", 0)}

    def resume_partitions(self, tps):
        self.calls.append(("resume", sorted(tp.topic for tp in tps)))

    async def perform_seek(self):
        await asyncio.sleep(0)  # fetching could happen here, were the partitions already resumed
        self.calls.append(("seek", dict(self._acked)))

    def resume_flow(self):
        self.calls.append(("flow",))


def _recovery(calls):
    async def noop(*_, **__):
        return None

    async def wait(coro, timeout=None):
        await coro

    app = SimpleNamespace(consumer=FakeConsumer(calls), consumer_generation_id=0,
                          conf=SimpleNamespace(broker_request_timeout=1.0),
                          on_rebalance_complete=SimpleNamespace(send=noop),
                          flow_control=SimpleNamespace(resume=lambda: calls.append(("flow-control",))),
                          _fetcher=SimpleNamespace(maybe_start=noop), on_rebalance_end=lambda: None,
                          assignor=SimpleNamespace(assigned_standbys=lambda: []))
    log = SimpleNamespace(info=lambda *a: None, warning=lambda *a: None, dev=lambda *a: None)
    tables = SimpleNamespace(on_actives_ready=lambda: None, on_standbys_ready=lambda: None, values=lambda: [])
    return SimpleNamespace(app=app, log=log, tables=tables, _wait=wait, completed=SimpleNamespace(set=lambda: None),
                           _is_changelog_tp=lambda tp: tp.topic == "changelog", _set_recovery_ended=lambda: None,
                           actives_for_table={}, standbys_for_table={})


def test_the_fix_is_in_place_for_the_installed_faust():
    # Given the engine's start-up corrections; When they are applied (build_app does)
    faust_fixes.apply()
    # Then both recovery paths are the corrected ones (or Faust no longer resumes before seeking)
    for name in ("_resume_streams", "on_recovery_completed"):
        method = getattr(Recovery, name)
        assert method is getattr(faust_fixes, name) or not faust_fixes._resumes_before_seeking(method)


def test_after_restoring_tables_stream_partitions_are_sought_before_they_resume():
    # Given a recovery that has restored the tables of an assignment of one stream and one changelog partition
    calls: list = []
    # When it completes
    asyncio.run(Recovery.on_recovery_completed(_recovery(calls)))
    # Then the stream partition is sought to its committed offset before it is resumed, and only it,
    # with the acks counted before the seek forgotten (its records come again from the committed offset)
    assert calls.index(("seek", {})) < calls.index(("resume", ["events"]))


def test_without_tables_to_restore_stream_partitions_are_sought_before_they_resume():
    calls: list = []
    asyncio.run(Recovery._resume_streams(_recovery(calls)))
    assert calls.index(("seek", {})) < calls.index(("resume", ["events"])) < calls.index(("flow-control",))


def test_a_commits_flush_waits_for_every_table_write_queued_before_it_even_when_the_client_is_slow():
    # Given Faust's producer buffer holding three table writes, each taking 250 ms to hand to the Kafka
    # client (a busy worker); Faust's own flush gave up after 100 ms without progress
    from faust.transport.producer import ProducerBuffer

    faust_fixes.apply()
    handed: list[str] = []

    class SlowChannel:
        async def publish_message(self, fut, wait=False):
            await asyncio.sleep(0.25)
            handed.append(fut.name)

    def write(name):
        return SimpleNamespace(name=name, message=SimpleNamespace(channel=SlowChannel()))

    async def scenario():
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()
        try:
            for name in ("a", "b", "c"):
                buffer.put(write(name))
            # When a commit flushes, and another write is queued while it waits
            flushing = asyncio.ensure_future(buffer.flush())
            await asyncio.sleep(0.05)
            buffer.put(write("later"))
            await flushing
            # Then the flush returned once the three earlier writes were handed over, not before
            at_return = list(handed)
            await buffer.flush()
            return at_return
        finally:
            await buffer.stop()

    at_return = asyncio.run(scenario())
    assert at_return == ["a", "b", "c"]
    assert handed == ["a", "b", "c", "later"]


class _Record(SimpleNamespace):
    pass


def _consumer_with_a_batch(batch: dict, active: set, calls: list):
    """A Faust consumer whose next fetch returns `batch` while only `active` partitions are active."""
    async def wait_next_records(timeout):
        return batch, active

    async def call_thread(fn, thread, spans):
        calls.append(spans)

    return SimpleNamespace(
        _wait_next_records=wait_next_records, should_stop=False, flow_active=True, _buffered_partitions=set(),
        app=SimpleNamespace(consumer_generation_id=3, monitor=SimpleNamespace(track_tp_end_offset=lambda *a: None)),
        scheduler=SimpleNamespace(iterate=lambda recs: ((tp, r) for tp, rs in recs.items() for r in rs)),
        _to_message=lambda tp, r: (tp, r.offset), highwater=lambda tp: 0, _thread=SimpleNamespace(call_thread=call_thread))


def test_records_fetched_for_a_partition_paused_meanwhile_are_fetched_again_not_dropped():
    # Given a fetch that returns records 74..76 of events[2], paused by a rebalance while the fetch was under
    # way, and 10..11 of events[0], still active
    calls: list = []
    paused, active = TP("events", 2), TP("events", 0)
    batch = {paused: [_Record(offset=o) for o in (74, 75, 76)], active: [_Record(offset=o) for o in (10, 11)]}
    consumer = _consumer_with_a_batch(batch, active={active}, calls=calls)

    async def drain():
        return [m async for m in faust_fixes.getmany(consumer, 1.0)]

    # When Faust drains the batch
    delivered = asyncio.run(drain())
    # Then the active partition's records are delivered, and the paused one is moved back to 74 (Faust
    # dropped them, with the client's position already at 77: a gap it would have counted as acked)
    assert delivered == [(active, (active, 10)), (active, (active, 11))]
    assert calls == [{paused: (74, 76)}]


def test_a_partition_is_moved_back_only_if_nothing_moved_it_since():
    # Given two partitions with undelivered records: one still just past the batch, one sought since
    # (the recovery's seek to the committed offset)
    sought = []
    untouched, sought_since = TP("events", 2), TP("events", 3)
    states = {untouched: SimpleNamespace(has_valid_position=True, position=77),
              sought_since: SimpleNamespace(has_valid_position=True, position=60)}
    consumer = SimpleNamespace(
        _subscription=SimpleNamespace(_assigned_state=lambda tp: states[tp]),
        _fetcher=SimpleNamespace(seek_to=lambda tp, offset: sought.append((tp, offset))))
    thread = SimpleNamespace(_ensure_consumer=lambda: consumer)
    # When they are rewound
    asyncio.run(faust_fixes._rewind_untouched(thread, {untouched: (74, 76), sought_since: (74, 76)}))
    # Then only the untouched one goes back to its first undelivered record; the other keeps its seek
    assert sought == [(untouched, 74)]
