"""Anchor: quix-streams (StreamingDataFrame, RocksDB state with changelog); run from its own environment."""
from __future__ import annotations

import json

from quixstreams import Application
from quixstreams.models import Deserializer

from common import Clock, args, decode, step

a = args()


class Interaction(Deserializer):
    def __call__(self, value: bytes, ctx):
        return decode(value)


app = Application(broker_address=a.bootstrap, consumer_group=f"anchor-{a.out.stem}", auto_offset_reset="earliest",
                  state_dir=str(a.work), loglevel="WARNING")
source = app.topic(a.topic, key_deserializer="bytes", value_deserializer=Interaction())
out = app.topic(a.topic + ".anchor-out", key_serializer="bytes", value_serializer="bytes")
clock = Clock(a.events)


def apply(ev: dict, state) -> bytes | None:
    s, emit = step(state.get("v"), ev)
    state.set("v", s)
    if clock.saw():
        clock.write(a.out, "quix-streams StreamingDataFrame, RocksDB state")
        app.stop()
    return json.dumps(s).encode() if emit else None


sdf = app.dataframe(source)
sdf = sdf.apply(apply, stateful=True).filter(lambda v: v is not None)
sdf.to_topic(out)
app.run()
