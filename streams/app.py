"""Decides how the Faust app is built: broker, RocksDB state, raw bytes on the wire, topics, codec."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import weakref
from dataclasses import dataclass, field

import faust
from faust import streams as faust_streams

from streams import clients, faust_fixes, topics
from streams.codec import DecodeError
from streams.deadletter import as_reference, dead_letter, log_dead_letter, log_fault
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Engine:
    """The Faust app and what every stage shares: settings, codec, topics."""

    settings: Settings
    app: faust.App
    codec: object
    topic: dict = field(default_factory=dict)  # contract name -> faust topic
    detection: object = None  # the service running detection's process (streams/detection/agent.py), in a worker
    data: object = None  # the one running the data stage (streams/data/agent.py)
    decision: object = None  # the one running the decision stage (streams/decision/agent.py)
    after_decision: object = None  # the one running delivery, attribution and learning (streams/after_decision.py)

    def encode(self, spec: topics.TopicSpec, record: dict) -> bytes:
        return self.codec.encode(self.settings.topic(spec.name), spec.schema, record)

    def decode(self, spec: topics.TopicSpec, data: bytes | None) -> dict:
        return self.codec.decode(self.settings.topic(spec.name), spec.schema, data)

    async def send(self, spec: topics.TopicSpec, key: str, record: dict, headers: dict | None = None) -> None:
        """Send and wait for the broker's ack, so an offset is only committed after its outputs exist."""
        await self.send_all([(spec, key, record, headers)])

    async def send_all(self, outputs) -> None:
        """Send (spec, key, record[, headers]) in order, then wait for every ack: one wait for a batch.

        A record None is a tombstone (a deletion on a compacted topic).

        A send the client gives up on is sent again, with a growing pause, until the broker takes it:
        the batch's offsets are acked only after this returns, so nothing is lost, and a record sent
        twice carries the same id (consumers drop such duplicates by id).
        """
        items = [(self.topic[o[0].name], o[1].encode(), None if o[2] is None else self.encode(o[0], o[2]),
                  [(k, v.encode()) for k, v in (o[3] if len(o) > 3 and o[3] else {}).items()]) for o in outputs]
        pause = 0.1
        while items:
            futs = [await topic.send(key=key, value=value, headers=headers) for topic, key, value, headers in items]
            results = await asyncio.gather(*futs, return_exceptions=True)
            failed = [item for item, res in zip(items, results) if isinstance(res, BaseException)]
            if any(isinstance(res, asyncio.CancelledError) for res in results):
                raise asyncio.CancelledError()
            if failed:
                log.error("%d of %d sends failed, sending them again: %s", len(failed), len(items),
                          type(next(r for r in results if isinstance(r, BaseException))).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
            items = failed

    async def batches(self, stream, most: int, linger_s: float = 0.005, hold_s: float = 0.05):
        """The stream's events in lists: what is already waiting, up to `most`, so a quiet stream hands on
        each event at once and a busy one works in batches (one state write per key, one wait for acks).

        After a batch of more than one event (a backlog, or traffic faster than one at a time), the
        next is taken `linger_s` later, so the fetcher fills the queue meanwhile and batches grow
        with the load; a lone event is never held. The events are not acked by Faust: the caller
        acks a list (`ack`) once its outputs were sent and its state written, so a committed offset
        never passes them; a list cut short by a stop or a rebalance is not acked, and is read again.

        Events taken are never held while waiting for more beyond `hold_s`: Faust empties the queues
        and suspends the flow when it stops or rebalances, and then waits for every event taken to
        be acked; a batch waiting for an event that will not come would hold it up forever.
        """
        stream.enable_acks = False
        events = stream.events().__aiter__()
        batch: list = []
        following = None  # the next event, being fetched
        try:
            while True:
                if following is None:
                    following = asyncio.ensure_future(events.__anext__())
                if batch:
                    done, _ = await asyncio.wait({following}, timeout=hold_s)
                    if not done:
                        yield batch
                        batch = []
                        continue
                try:
                    event = await following
                except StopAsyncIteration:
                    break
                finally:
                    if following.done():
                        following = None
                batch.append(event)
                if len(batch) >= most or stream.channel.empty():
                    busy = len(batch) > 1
                    yield batch
                    batch = []
                    if busy and linger_s:
                        await asyncio.sleep(linger_s)
        finally:
            if following is not None:
                following.cancel()

    async def handle_batches(self, stream, stage: str, handle) -> None:
        """Run `handle(message)` over the stream's records in batches and send what it returns.

        `handle` returns the (spec, key, record[, headers]) to send for one record, and raises a
        ValueError for bad input; either that or a fault of ours dead-letters the record alone. The
        batch's outputs go out together, and its offsets are acked after the broker has them all.
        """
        async for events in self.batches(stream, self.settings.batch_max):
            outputs, rejected = [], []
            for event in events:
                try:
                    self.in_partition_of(event)  # table reads go to this record's partition
                    outputs += handle(event.message)
                except ValueError as exc:
                    rejected.append((event.message, exc, False))
                except Exception as exc:  # noqa: BLE001 - a fault on one record: dead-lettered, not the stream
                    rejected.append((event.message, exc, True))
            await self.send_all(outputs)
            for message, exc, fault in rejected:
                await self.reject(stage, message, exc, fault=fault)
            await self.ack(stream, events)

    @staticmethod
    def in_partition_of(event) -> None:
        """Point Faust's tables at `event`'s partition, as while Faust iterates over it.

        A table reads and writes the RocksDB store and the changelog partition of the *current
        event* (faust 0.15.3: `Table.partition_for_key`, `RocksDB._get` and `_set`). Outside the
        stream's own iteration, as in a batch, that is the last event taken, whatever the key: a
        visitor of partition 3 would be read from partition 5's store (as new) and written to its
        changelog. So each record of a batch is processed, and each key written, with its own event.
        """
        faust_streams._current_event.set(weakref.ref(event))

    @staticmethod
    async def ack(stream, events) -> None:
        for event in events:
            await stream.ack(event)

    def channel_of(self, *specs: topics.TopicSpec):
        """One Faust channel over several co-partitioned topics, and physical topic name -> spec."""
        by_topic = {self.settings.topic(spec.name): spec for spec in specs}
        channel = self.app.topic(*by_topic, key_serializer="raw", value_serializer="raw", partitions=self.settings.partitions)
        return channel, by_topic

    def keyed_record(self, by_topic: dict, message, key_is: str) -> tuple[topics.TopicSpec, dict, str]:
        """(spec, decoded record, key) of a message of such a channel; a ValueError if it cannot be used."""
        spec = by_topic[message.topic]
        record = self.decode(spec, message.value)
        if message.key is None:
            raise ValueError(f"a record on {spec.name} needs a key ({key_is})")
        return spec, record, message.key.decode("utf-8", "replace")

    async def records(self, stream, spec: topics.TopicSpec, stage: str, check=None, tombstones: bool = False):
        """Yield (message, record) for every record of `stream` that decodes and passes `check`.

        A record that cannot be decoded, or that `check(message, record)` rejects with a
        ValueError, goes to the dead-letter topic with the reason and the stream goes on.
        """
        async for event in stream.events():
            msg = event.message
            if tombstones and msg.value is None and msg.key is not None:
                yield msg, None  # a compacted topic's delete marker
                continue
            try:
                record = self.decode(spec, msg.value)
                if check is not None:
                    check(msg, record)
            except (DecodeError, ValueError) as exc:
                await self.dead_letter(stage, msg, exc)
                continue
            yield msg, record

    @contextlib.asynccontextmanager
    async def guard(self, stage: str, message, on_fault=None):
        """Process one record; if that raises, dead-letter the record with the reason and go on.

        A ValueError is bad input. Anything else is a fault of ours on this record: Faust would
        restart the agent and ack, so lose, the record; kept on the dead-letter topic, it can be
        replayed once the fault is fixed. `on_fault()` then drops what the stage caches in memory,
        which the half-done record may have changed. Only cancellation (shutdown, rebalance) passes.
        """
        try:
            yield
        except asyncio.CancelledError:
            raise
        except ValueError as exc:
            await self.reject(stage, message, exc)
        except Exception as exc:  # noqa: BLE001 - see above: any fault, one record, not the stream
            if on_fault is not None:
                on_fault()
            await self.reject(stage, message, exc, fault=True)

    async def reject(self, stage: str, message, exc: Exception, fault: bool = False) -> None:
        """Dead-letter a record: bad input (`exc` says why), or a fault of ours on it (logged without the record)."""
        if not fault:
            await self.dead_letter(stage, message, exc)
            return
        await self.dead_letter(stage, message, log_fault(stage, message, exc), logged=True)

    async def dead_letter(self, stage: str, message, error: Exception | str, logged: bool = False) -> None:
        """Send the record to the dead-letter topic and wait for the ack; never raise (but for cancellation).

        A failed send is retried, as a reference if the record may be too large, with a growing pause:
        the partition waits rather than acking, so losing, a record it could not put anywhere.
        """
        record = dead_letter(stage, message.topic, message.partition, message.offset, message.key, message.value, error)
        if not logged:
            log_dead_letter(record)
        pause = 0.1
        for attempt in itertools.count():
            try:
                fut = await self.topic[topics.DEADLETTER.name].send(key=record["key"],
                                                                   value=self.encode(topics.DEADLETTER, record))
                await fut
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: retried, never raised into the agent
                if not record["truncated"]:
                    record = as_reference(record)  # e.g. the topic's max.message.bytes is lower than ours
                    continue
                if attempt < 3 or attempt % 50 == 0:
                    log.error("dead-letter send for %s[%d]@%d failed (attempt %d), retrying: %s", message.topic,
                              message.partition, message.offset, attempt + 1, type(exc).__name__)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)


def build_app(settings: Settings) -> Engine:
    faust_fixes.apply()  # stream partitions sought before they resume: see the module
    app = faust.App(
        settings.app_id,
        **clients.faust_broker(settings),  # brokers and SASL/TLS credentials, as every other client
        store=settings.store_url,  # rocksdb://: rocksdict is picked as the driver when installed
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        key_serializer="raw",
        value_serializer="raw",
        # Records are decoded inside the agents, so bad bytes reach the dead-letter topic
        # instead of stopping the stream.
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_ms / 1000.0,
        # a third of the session, as Kafka advises (Faust's default is a fixed 3 s)
        broker_heartbeat_interval=min(3.0, settings.session_timeout_ms / 3000.0),
        producer_acks=-1,
        # the context service (streams/data/context.py) only: Faust's own pages would show table
        # contents to anyone (/table) or describe the cluster (/router, /graph, /stats)
        web_enabled=settings.http_port > 0,
        web_port=settings.http_port or 6066,
        web_bind=settings.http_bind,
        canonical_url=settings.advertised_url,
        web_tables_enabled=False,
        web_router_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        table_cleanup_interval=60.0,
    )
    # Table writes wait in Faust's producer buffer for the changelog; above 100 the conductor drains it
    # before the next record and logs "producer buffer full" each time. A batch writes up to one
    # record per key at once: room for a few batches keeps the same back-pressure without the alarm.
    app.producer.buffer.max_messages = max(100, 4 * settings.batch_max)
    engine = Engine(settings=settings, app=app, codec=clients.codec(settings))
    for spec in topics.ALL:
        engine.topic[spec.name] = app.topic(settings.topic(spec.name), key_serializer="raw",
                                            value_serializer="raw", partitions=spec.partitions or settings.partitions,
                                            internal=False)
    return engine


__all__ = ["Engine", "build_app"]
