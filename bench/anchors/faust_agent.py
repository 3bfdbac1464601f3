"""Anchor: a minimal faust-streaming agent with its state in a RocksDB table (changelog), per event or batched."""
from __future__ import annotations

import json
import os
import weakref

import faust
from faust import streams as faust_streams

from common import Clock, args, decode, step

a = args()
app = faust.App(f"anchor-{a.out.stem}", broker=f"kafka://{a.bootstrap}", store="rocksdb://", datadir=str(a.work),
                topic_partitions=a.partitions, key_serializer="raw", value_serializer="raw", web_enabled=False,
                consumer_auto_offset_reset="earliest")
visitors = app.Table("visitors", default=None, partitions=a.partitions)
source = app.topic(a.topic, key_serializer="raw", value_serializer="raw")
out = app.topic(a.topic + ".anchor-out", key_serializer="raw", value_serializer="raw")
clock = Clock(a.events)


def finish():
    clock.write(a.out, f"faust-streaming agent, {'batches of 500' if a.mode == 'batched' else 'one event at a time'}")
    os._exit(0)


if a.mode == "batched":
    @app.agent(source)
    async def process(stream):
        async for events in stream.take_events(500, within=0.05):
            seen: dict = {}
            for event in events:
                # a table reads and writes the partition of the current event: outside Faust's own
                # iteration, each key must be given its event (else all go to the last one's partition)
                faust_streams._current_event.set(weakref.ref(event))
                key = event.message.key.decode()
                s, emit = step(seen[key][0] if key in seen else visitors.get(key), decode(event.message.value))
                seen[key] = (s, event)
                if emit:
                    await out.send(key=key.encode(), value=json.dumps(s).encode())
            for key, (s, event) in seen.items():
                faust_streams._current_event.set(weakref.ref(event))
                visitors[key] = s
            if clock.saw(len(events)):
                finish()
else:
    @app.agent(source)
    async def process(stream):
        async for event in stream.events():
            key = event.message.key.decode()
            s, emit = step(visitors.get(key), decode(event.message.value))
            visitors[key] = s
            if emit:
                await out.send(key=key.encode(), value=json.dumps(s).encode())
            if clock.saw():
                finish()

if __name__ == "__main__":
    import sys

    sys.argv = [sys.argv[0], "worker", "-l", "warn"]
    app.main()
