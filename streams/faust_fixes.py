"""Decides which Faust defects the engine corrects at start-up, and corrects them: stream partitions are
sought to their committed offsets before they are resumed, and a commit flushes every table write made
before it.

faust-streaming 0.15.3 (`Recovery.on_recovery_completed` and `Recovery._resume_streams`) resumes the
stream partitions and only then seeks them to the committed offsets. Flow is already on during table
recovery, so records fetched in between are processed, then the seek goes back, and Faust's own offset
bookkeeping (the last read offset, gaps, acks) sees them out of order: records re-fetched below the
last read offset are dropped, never acked, and the partition's commit stops there for good; or
duplicated acks make it crawl one offset per commit. Seen here in the restart test: a worker that
restored its tables from the changelogs skipped 7 events of one partition and never committed past
them (the ordering PR faust-streaming#217 meant to establish: seek, then resume).

Faust's commit flushes its producer buffer (table changelog writes) first, but `ProducerBuffer.flush`
gives up once 100 ms pass without a write handed to the Kafka client (`flush_atmost`), and then the
offsets are committed anyway: on a busy worker, offsets ahead of their state. A worker killed then
restores older state than its offsets say (a count that straddles the kill comes back short). The
corrected flush waits until every write queued before it was handed over; writes queued while it
waits are the next commit's.

`Consumer.getmany` drops the records the Kafka client returns for a partition Faust paused while the
fetch was under way (its set of active partitions is the live one, and a rebalance pauses every
partition), and the client's position has already moved past them: when the partition resumes, Faust
sees a gap, counts it as acknowledged and commits past records nobody processed. Seen here in the
rebalance test: after a second worker joined and the first left, 20 to 30 events of each partition
the remaining worker took over were skipped. The corrected getmany moves the client back to the first
record it did not deliver, unless something else (a seek to the committed offsets) moved it since.

Each method is replaced only while the installed Faust still has the defect (checked in its source),
so an upgrade that fixes it upstream switches the correction off by itself.
"""
from __future__ import annotations

import asyncio
import inspect
import logging

log = logging.getLogger(__name__)


def _resumes_before_seeking(fn) -> bool:
    source = inspect.getsource(fn)
    resume, seek = source.find("consumer.resume_partitions("), source.find("consumer.perform_seek()")
    return 0 <= resume < seek


def _forget_acks(consumer, tps) -> None:
    """Acks counted before the seek are of records that come again from the committed offset.

    Between a revocation (which clears them) and the queues being emptied, agents ack the queued
    records they skip; left in place, those acks would let the next commit pass records re-delivered
    but not yet processed (the head-gap check in `Consumer._new_offset` only holds back gaps over one).
    """
    for tp in tps:
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._gap.pop(tp, None)


async def _seek_then_resume(self, consumer, assignment) -> None:
    """The correction itself: stream partitions, still paused, are sought to their committed offsets
    (acks counted before the seek forgotten), and only then resumed."""
    streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
    if assignment:
        _forget_acks(consumer, streams)
        self.log.info("Seek stream partitions to committed offsets.")
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
        # where each stream partition resumes: Faust only says that it seeks
        log.info("stream partitions resume at %s", ", ".join(
            f"{tp.topic}[{tp.partition}]@{consumer._read_offset.get(tp)}" for tp in sorted(streams)))
    consumer.resume_partitions(streams)


async def _resume_streams(self, generation_id: int = 0) -> None:
    """Faust 0.15.3's Recovery._resume_streams, with the seek before the resume."""
    app = self.app
    consumer = app.consumer
    await app.on_rebalance_complete.send()
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning("Recovery rebalancing again")
        return
    await _seek_then_resume(self, consumer, assignment)
    if not assignment:
        self.log.info("Resuming streams with empty assignment")
    self.completed.set()
    self.log.info("Resuming flow...")
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


async def on_recovery_completed(self, generation_id: int = 0) -> None:
    """Faust 0.15.3's Recovery.on_recovery_completed, with the seek before the resume."""
    app = self.app
    consumer = app.consumer
    self.log.info("Restore complete!")
    await app.on_rebalance_complete.send()
    self._set_recovery_ended()
    callback_coros = [asyncio.ensure_future(table.on_recovery_completed(self.actives_for_table[table],
                                                                         self.standbys_for_table[table]))
                      for table in self.tables.values()]
    if callback_coros:
        await asyncio.wait(callback_coros)
    assignment = consumer.assignment()
    if app.consumer_generation_id != generation_id:
        self.log.warning(f"Recovery rebalancing again app id {app.consumer_generation_id} param {generation_id}")
        return
    await _seek_then_resume(self, consumer, assignment)
    self.completed.set()
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    self.tables.on_actives_ready()
    if not app.assignor.assigned_standbys():
        self.tables.on_standbys_ready()
    app.on_rebalance_end()
    self.log.info("Worker ready")


# -- producer buffer: a flush hands over everything queued before it ---------------------------------
def _gives_up_after_a_pause(flush_atmost) -> bool:
    source = inspect.getsource(flush_atmost)
    return "except asyncio.TimeoutError:" in source and "return flushed_messages" in source


def _make_buffer_methods(original_put, original_flush):
    def put(self, fut) -> None:
        self.engage_queued = getattr(self, "engage_queued", 0) + 1
        original_put(self, fut)

    async def _send_pending(self, fut) -> None:
        try:
            await fut.message.channel.publish_message(fut, wait=False)
        finally:
            # one task sends, in queue order: a count says how many of the queued writes are handed over
            self.engage_handed = getattr(self, "engage_handed", 0) + 1

    async def flush(self) -> None:
        if self.app is None or self.app.conf.producer_threaded:
            await original_flush(self)  # another queue, not counted here
            return
        target = getattr(self, "engage_queued", 0)
        while getattr(self, "engage_handed", 0) < target:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")  # as Faust's own flush
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
            except asyncio.TimeoutError:
                pass  # a wake-up that may have come between the check and the clear: look again

    return put, _send_pending, flush


def _fix_producer_buffer() -> list[str]:
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer, "engage_fixed", False):
        return ["ProducerBuffer.flush"]
    if not _gives_up_after_a_pause(ProducerBuffer.flush_atmost):
        return []
    put, send_pending, flush = _make_buffer_methods(ProducerBuffer.put, ProducerBuffer.flush)
    ProducerBuffer.put, ProducerBuffer._send_pending, ProducerBuffer.flush = put, send_pending, flush
    ProducerBuffer.engage_fixed = True
    return ["ProducerBuffer.flush"]


# -- consumer: records fetched but not delivered are fetched again -----------------------------------
def _drops_undelivered(getmany) -> bool:
    source = inspect.getsource(getmany)
    return "yield tp, to_message(tp, record)" in source and "seek_to" not in source


async def _rewind_untouched(thread, spans: dict) -> None:
    """In the consumer's own thread, with no await: move each partition back to the first record Faust did
    not deliver, if its position is still just past the batch (else a seek moved it since: leave it)."""
    consumer = thread._ensure_consumer()
    for tp, (first, last) in spans.items():
        try:
            state = consumer._subscription._assigned_state(tp)
        except Exception:  # noqa: BLE001 - no longer assigned: whoever owns it reads from the committed offset
            continue
        if state.has_valid_position and state.position == last + 1:
            consumer._fetcher.seek_to(tp, first)
            log.info("%s[%d]: %d fetched records Faust did not deliver are fetched again from %d",
                     tp.topic, tp.partition, last + 1 - first, first)


async def getmany(self, timeout: float):
    """Faust 0.15.3's Consumer.getmany; records it does not deliver are fetched again (see the module)."""
    records, active_partitions = await self._wait_next_records(timeout)
    generation_id = self.app.consumer_generation_id
    if records is None or self.should_stop:
        return
    delivered: dict = {}  # tp -> last offset delivered from this batch
    if self.flow_active:
        to_message = self._to_message
        for tp, record in self.scheduler.iterate(records):
            if not self.flow_active or self.app.consumer_generation_id != generation_id:
                break  # a rebalance began: what is left of the batch is rewound below
            if active_partitions is None or tp in active_partitions or tp in self._buffered_partitions:
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                delivered[tp] = record.offset
                yield tp, to_message(tp, record)
        spans = {}
        for tp, batch in records.items():
            done = delivered.get(tp, -1)
            if done < batch[-1].offset:  # the usual case, all delivered, costs one comparison per partition
                spans[tp] = (next(r.offset for r in batch if r.offset > done), batch[-1].offset)
        if spans:
            await self._thread.call_thread(_rewind_untouched, self._thread, spans)
    else:
        self.log.dev("getmany called while flow not active. Seek back to committed offsets.")
        try:
            await self.perform_seek()
        except Exception as ex:  # noqa: BLE001 - as Faust: a failed seek is retried by the next rebalance
            self.log.warning(f"exception performing seek when flow not active {ex}")


def _replace(owner, name: str, fixed, defective) -> list[str]:
    """Put `fixed` in place of owner.name if the installed method is `defective`; the name if it is in place."""
    current = getattr(owner, name)
    if current is not fixed:
        if not defective(current):
            return []
        setattr(owner, name, fixed)
    return [f"{owner.__name__}.{name}"]


def apply() -> list[str]:
    """Correct what the installed Faust still gets wrong; returns the names of the methods replaced."""
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    replaced = _replace(Recovery, "_resume_streams", _resume_streams, _resumes_before_seeking)
    replaced += _replace(Recovery, "on_recovery_completed", on_recovery_completed, _resumes_before_seeking)
    replaced += _fix_producer_buffer()
    replaced += _replace(Consumer, "getmany", getmany, _drops_undelivered)
    if replaced:
        log.debug("Faust defects corrected: %s", ", ".join(replaced))
    return replaced
