"""Decides how `make bench` measures fail-over: from `kill -9` of one of two workers to the first decision on a partition it held.

On the restore phase's state (~100,000 visitors and customers), two workers share the partitions;
one is killed with SIGKILL (it leaves no group: the others notice after the session timeout, 6 s
here, the broker's least) and a probe (a search to cancel, by a new visitor whose events go to a
partition the killed worker held) is sent at once. Measured: the seconds until the probe's decision
is on engage.decisions, and the changelog records the survivor read again to take the partitions
over, without standby replicas and with one (ENGAGE_STANDBY_REPLICAS=1).
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

from streams import clients, topics
from streams.settings import Settings
from streams.tools.procs import free_port, http_get, spawn, stop_process, wait_until

SESSION_TIMEOUT = "6s"
STAGES = ("detection", "data", "decision", "after-decision")


def _sample(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _one(settings: Settings, work: Path, worker_env, standbys: int) -> dict:
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    ports = [free_port(), free_port()]
    procs = []
    # the one to be killed first, alone until ready: the survivor then never held its partitions (one started
    # first would have restored every partition, and kept the folders of those it handed over: warm by chance)
    for i in (1, 0):
        env = {**worker_env(settings.with_(data_dir=work / f"failover-{standbys}-{i}")), "ENGAGE_HTTP_PORT": str(ports[i]),
               "ENGAGE_STANDBY_REPLICAS": str(standbys), "ENGAGE_SESSION_TIMEOUT": SESSION_TIMEOUT}
        procs.append(spawn(["worker"], work / f"worker-failover-{standbys}-{i}.log", env=env))
        if i == 1 and not wait_until(lambda: http_get(ports[1], "/ready")[0] == 200, 600):
            stop_process(procs[0])
            return {"error": "the first worker never became ready"}
    survivor_port, doomed = ports[0], procs[0]
    codec = clients.codec(settings)
    decisions = Consumer({**clients.librdkafka_config(settings), "group.id": f"bench-failover-{uuid.uuid4().hex[:6]}"})
    try:
        def ready() -> bool:
            if not all(http_get(p, "/ready")[0] == 200 for p in ports):
                return False
            text = http_get(survivor_port, "/metrics")[1]
            held = _sample(text, "engage_partition_held", stage="detection", topic="engage.events")
            return 0 < held < settings.partitions and (not standbys or all(
                _sample(http_get(p, "/metrics")[1], "engage_standby_partitions", stage=s) > 0 for p in ports for s in STAGES))
        if not wait_until(ready, 600):
            return {"error": "the two workers never both became ready"}
        time.sleep(5 if standbys else 1)  # the standbys' last catch-up
        text = http_get(survivor_port, "/metrics")[1]
        theirs = [p for p in range(settings.partitions)
                  if _sample(text, "engage_partition_held", stage="detection", topic="engage.events", partition=str(p)) < 1]
        restored = {s: _sample(text, "engage_restored_records_total", stage=s) for s in STAGES}
        name = settings.topic(topics.DECISIONS.name)
        decisions.assign([TopicPartition(name, p, OFFSET_END) for p in range(settings.partitions)])
        decisions.consume(100, 1.0)
        visitor = next(v for v in (f"failover-{uuid.uuid4().hex[:10]}" for _ in range(10_000))
                       if clients.partition_of(v, settings.partitions) in theirs)
        now = int(time.time() * 1000)
        event = {"event_id": f"{visitor}-1", "ts": now, "visitor_id": visitor, "customer_id": None, "channel": "web",
                 "type": "search", "path": "/help", "query": "cancel my contract", "value": None, "attributes": {}}
        producer = Producer({**clients.librdkafka_config(settings), **clients.PRODUCER_PARTITIONER})
        # When the other worker is killed, and the probe is sent at once
        os.killpg(doomed.pid, signal.SIGKILL)
        t0 = time.monotonic()
        events = settings.topic(topics.EVENTS.name)
        producer.produce(events, key=visitor.encode(), value=codec.encode(events, topics.EVENTS.schema, event))
        producer.flush(10)
        decided = None
        while decided is None and time.monotonic() - t0 < 180:
            for m in decisions.consume(500, 0.5):
                if m.error() or m.value() is None:
                    continue
                if codec.decode(name, topics.DECISIONS.schema, m.value())["visitor_id"] == visitor:
                    decided = time.monotonic() - t0
        text = http_get(survivor_port, "/metrics")[1]
        return {"standby_replicas": standbys, "session_timeout": SESSION_TIMEOUT, "partitions_moved": len(theirs),
                "kill_to_decision_s": round(decided, 1) if decided is not None else None,
                "records_read_again": {s: int(_sample(text, "engage_restored_records_total", stage=s) - restored[s])
                                       for s in STAGES}}
    finally:
        decisions.close()
        for proc in procs:
            stop_process(proc)


def failover_phase(settings: Settings, work: Path, worker_env) -> dict:
    """Both measurements, on the same state: without standby replicas, then with one."""
    out = {}
    for standbys in (0, 1):
        print(f"[bench] fail-over: kill -9 of one of two workers, {standbys} standby replica(s) ...", flush=True)
        out[f"standby_{standbys}"] = _one(settings, work, worker_env, standbys)
    return out

