"""Anchor: a plain confluent-kafka loop with the state in a dict (no durability: the floor of the cost)."""
from __future__ import annotations

import json

from confluent_kafka import Consumer, Producer

from common import Clock, args, decode, step

a = args()
c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": a.out.stem, "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
p = Producer({"bootstrap.servers": a.bootstrap, "linger.ms": 5})
c.subscribe([a.topic])
state: dict = {}
clock = Clock(a.events)
done = False
while not done:
    msgs = c.consume(500, 1.0)
    for m in msgs:
        if m.error():
            continue
        key = m.key()
        s, emit = step(state.get(key), decode(m.value()))
        state[key] = s
        if emit:
            p.produce(a.topic + ".anchor-out", key=key, value=json.dumps(s).encode())
        done = clock.saw()
    p.poll(0)
    if msgs:
        c.commit(asynchronous=True)
p.flush(30)
clock.write(a.out, "plain confluent-kafka loop, dict state")
c.close()
