"""Decides how `make chaos` faults the pipeline and accounts for what comes out: nothing lost, what is repeated, how long it takes to recover.

On a broker of its own (it stops and freezes it), each fault runs on a fresh app id and topic
prefix, under a seeded simulator stream at a fixed rate:

  kill-cycles    `kill -9` of one of two workers (its whole process group, as a container kill),
                 restarted on its own state folder once the other has taken over; N cycles
  broker-stop    the broker stopped (SIGTERM) for 30 s, then started again on its data
  broker-freeze  the broker frozen (SIGSTOP) for 20 s, then SIGCONT
  state-deleted  the only worker stopped, its RocksDB folder deleted, and started again

Ground truth is what the rules imply for the events the topic holds: the pure Detector
(streams/detection/backtest.py) over every stored event, partition by partition in offset order,
after a page view dated 9 minutes ahead on every partition has moved each partition's clock past
the pending timers, live as in the Detector. Each signal has one decision, whose id follows from
the signal's; each decision to act one delivery, whose id follows from the decision's. Reported per
fault: decisions lost (must be 0), decisions invented, decision records repeated by at-least-once
delivery (same id), deliveries lost, delivery records repeated, and deliveries an adapter would show
twice after its dedupe (the adapter kit's SeenIds over the delivery topic in time order: must be 0);
and the time to recover: from the fault's end (the kill, the broker back, the thaw, the restart)
until a probe sent then to every partition (a search to cancel, by a new visitor) has its decision.
Nothing here asserts; the figures go to bench/results/.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

from streams import clients, topics
from streams.admin import ensure_topics, wait_for_broker
from streams.settings import REPO_ROOT, Settings
from streams.tools import localkafka
from streams.tools.procs import free_port, http_get, spawn, stop_process, wait_until

SESSION_TIMEOUT = "6s"  # the broker's least: a killed worker's partitions move after 6 s
CHAOS_PARTITIONS = 8
CLOCK_AHEAD_MS = 540_000  # the final clock events: 9 minutes ahead (the worker refuses beyond 10)


FAULTS = ("kill_cycles", "broker_stop", "broker_freeze", "state_deleted")  # `--only` names; run_chaos runs them


class ChaosError(RuntimeError):
    """The suite could not run (no broker of its own, a worker that never became ready)."""


class Workers:
    """The workers of one fault's pipeline, each on its own state folder and port."""

    def __init__(self, settings: Settings, work: Path):
        self.settings, self.work = settings, work
        self.procs: dict[int, object] = {}
        self.ports: dict[int, int] = {}

    def env(self, i: int) -> dict:
        from streams.tools.bench import worker_env

        return {**worker_env(self.settings.with_(data_dir=self.state(i))), "ENGAGE_HTTP_PORT": str(self.ports[i]),
                "ENGAGE_SESSION_TIMEOUT": SESSION_TIMEOUT}

    def state(self, i: int) -> Path:
        return self.work / f"state-{i}"

    def start(self, i: int, wait_ready_s: float = 300) -> None:
        self.ports.setdefault(i, free_port())
        self.procs[i] = spawn(["worker"], self.work / f"worker-{i}.log", env=self.env(i))
        if wait_ready_s and not wait_until(
                lambda: self.procs[i].poll() is None and http_get(self.ports[i], "/ready")[0] == 200, wait_ready_s):
            raise ChaosError(f"worker {i} did not become ready; see {self.work / f'worker-{i}.log'}")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)

    def stop(self, i: int) -> None:
        stop_process(self.procs[i])

    def restarts(self) -> dict:
        """What the workers' logs say happened inside them: stage processes started again, and why."""
        import re

        text = "".join(f.read_text(errors="replace") for f in self.work.glob("worker-*.log"))
        # the errors the workers logged, once each, without their times and process ids (the logs hold
        # no record contents: ids and reasons only)
        lines = text.splitlines()
        found = {line.split("[ERROR]", 1)[1] for line in lines if "[ERROR]" in line
                 and "Connection refused" not in line and "Connect call failed" not in line}  # the outage itself
        for i, line in enumerate(lines):  # a process that died of an exception: the exception's line
            if line.startswith("Traceback (most recent call last)"):
                found |= {next((x for x in lines[i + 1:] if x and not x[0].isspace()), "?")}
        errors = sorted({re.sub(r"\d{3,}", "N", e.strip())[:240] for e in found})
        stuck = text.count("the stage starts again with a new one")
        # counted where they end (each stage process logs its own end; the worker's "started again" lines are
        # rate-limited like every repeated complaint, streams/logfilter.py)
        return {"stage_processes_ended": stuck + text.count("Traceback (most recent call last)"),
                "consumers_found_stuck": stuck,
                "errors_logged": errors[:30]}

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop_process(proc)


class Decided(threading.Thread):
    """Follows the decisions topic from its start: which visitors have a decision, and when it came."""

    def __init__(self, settings: Settings):
        super().__init__(daemon=True)
        self.settings, self.halt = settings, threading.Event()
        self.visitors: dict[str, float] = {}  # visitor id -> monotonic time of its first decision
        self.lock = threading.Lock()

    def run(self) -> None:
        from confluent_kafka import TopicPartition

        codec = clients.codec(self.settings)
        name = self.settings.topic(topics.DECISIONS.name)
        c = clients.consumer(self.settings, clients.throwaway_group("chaos-decided"), log_level=None)
        try:
            c.assign([TopicPartition(name, p, 0) for p in range(self.settings.partitions)])
            while not self.halt.is_set():
                for m in c.consume(500, 0.5):
                    if m.error() or m.value() is None:
                        continue
                    visitor = codec.decode(name, topics.DECISIONS.schema, m.value())["visitor_id"]
                    with self.lock:
                        self.visitors.setdefault(visitor, time.monotonic())
        finally:
            c.close()

    def when(self, visitor: str) -> float | None:
        with self.lock:
            return self.visitors.get(visitor)


class Probe:
    """A search to cancel by a new visitor on every partition, and the time until each has its decision."""

    def __init__(self, settings: Settings, decided: Decided):
        self.settings, self.decided = settings, decided
        self.codec = clients.codec(settings)
        self.producer = clients.producer(settings)

    def send(self) -> tuple[float, list[str]]:
        visitors = []
        for p in range(self.settings.partitions):
            visitors.append(next(v for v in (f"probe-{uuid.uuid4().hex[:10]}" for _ in range(100_000))
                                 if clients.partition_of(v, self.settings.partitions) == p))
        name, now = self.settings.topic(topics.EVENTS.name), int(time.time() * 1000)
        t0 = time.monotonic()
        for v in visitors:
            event = {"event_id": f"{v}-1", "ts": now, "visitor_id": v, "customer_id": None, "channel": "web",
                     "type": "search", "path": "/help", "query": "cancel my contract", "value": None, "attributes": {}}
            self.producer.produce(name, key=v.encode(), value=self.codec.encode(name, topics.EVENTS.schema, event))
        self.producer.poll(0)
        return t0, visitors

    def recovered_s(self, t0: float, visitors: list[str], timeout_s: float = 180) -> float | None:
        """Seconds from `t0` until every probe has its decision (None: not within `timeout_s`)."""
        if not wait_until(lambda: all(self.decided.when(v) is not None for v in visitors), timeout_s, 0.2):
            return None
        return round(max(self.decided.when(v) for v in visitors) - t0, 1)

    def close(self) -> None:
        self.producer.flush(30)


class Stream(threading.Thread):
    """The simulator at a fixed rate, `count` events, in a thread (its producer buffers through outages)."""

    def __init__(self, settings: Settings, rate: float, count: int, seed: int):
        super().__init__(daemon=True)
        self.settings, self.rate, self.count, self.seed = settings, rate, count, seed
        self.sent = 0
        self.halt = threading.Event()

    def run(self) -> None:
        from streams.tools.simulator import run_simulator

        self.sent = run_simulator(self.settings, rate=self.rate, duration_s=None, seed=self.seed, customers=2_000,
                                  count=self.count, stop=self.halt, quiet=True,
                                  flush_s=300)  # through an outage: what was sent must reach the topic


def _advance_clocks(settings: Settings) -> None:
    """A page view 9 minutes ahead on every partition: each partition's clock passes its pending timers."""
    codec, producer = clients.codec(settings), clients.producer(settings)
    name, ts = settings.topic(topics.EVENTS.name), int(time.time() * 1000) + CLOCK_AHEAD_MS
    for p in range(settings.partitions):
        visitor = f"clock-{p}-{uuid.uuid4().hex[:6]}"
        event = {"event_id": f"{visitor}-0", "ts": ts, "visitor_id": visitor, "customer_id": None, "channel": "web",
                 "type": "page_view", "path": "/", "query": None, "value": None, "attributes": {}}
        producer.produce(name, key=visitor.encode(), value=codec.encode(name, topics.EVENTS.schema, event), partition=p)
    producer.flush(30)


def _settled(settings: Settings, quiet_s: float = 10.0, timeout_s: float = 600.0) -> bool:
    """Every group has read everything on every topic it reads, and nothing new came for `quiet_s`."""
    from streams.replay.run import group_state

    admin = clients.admin(settings, quiet=True)
    last, since = None, time.monotonic()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = group_state(settings, admin)
        except Exception:  # noqa: BLE001 - a group rebalancing: ask again
            time.sleep(1)
            continue
        lag, produced = state[1], state[2]
        if lag == 0 and produced == last:
            if time.monotonic() - since >= quiet_s:
                return True
        else:
            last, since = produced, time.monotonic()
        time.sleep(1)
    return False


def account(settings: Settings) -> dict:
    """What the rules imply for the stored events, against the decisions and deliveries on the topics."""
    from streams.detection.rules import load_detection

    codec = clients.codec(settings)

    def records(spec) -> list[tuple[int, int, int, dict]]:
        name = settings.topic(spec.name)
        out = []
        for p, offset, ts, _key, value in clients.read_all(settings, name, timeout_s=600):
            if value is not None:
                out.append((p, offset, ts, codec.decode(name, spec.schema, value)))
        return out

    return {**tally(records(topics.EVENTS), records(topics.DECISIONS), records(topics.DELIVERY),
                    load_detection(REPO_ROOT / "rules" / "detection.yaml"), settings.allowed_lateness_ms),
            "dead_letters": len(records(topics.DEADLETTER))}


def tally(events: list[tuple], decisions: list[tuple], deliveries: list[tuple], rules, lateness_ms: int) -> dict:
    """The accounting, on (partition, offset, timestamp, record) tuples as read from the three topics."""
    from streams.adapters.kit import SEEN_IDS, SeenIds
    from streams.decision.policy import decision_id
    from streams.delivery.render import delivery_id
    from streams.detection.backtest import run_backtest

    implied: list[dict] = []
    run_backtest(((p, ev) for p, _o, _t, ev in sorted(events, key=lambda r: (r[0], r[1]))), rules,
                 lateness_ms=lateness_ms, signals=implied)
    expected = {decision_id(s["signal_id"]) for s in implied}
    by_id: dict[str, dict] = {}
    changed = 0
    for *_, d in decisions:
        changed += by_id.setdefault(d["decision_id"], d) != d
    acts = {delivery_id(i) for i, d in by_id.items() if d["outcome"] == "act"}
    delivered = {d["delivery_id"] for *_, d in deliveries}
    # one adapter takes them in about this order; it drops an id it has seen, so what it shows twice is an
    # id it let through twice (forgotten in between: more than SEEN_IDS other ids came between the two)
    passed: dict[str, int] = {}
    seen = SeenIds(SEEN_IDS)
    for *_, d in sorted(deliveries, key=lambda r: (r[2], r[0], r[1])):
        if seen.add(d["delivery_id"]):
            passed[d["delivery_id"]] = passed.get(d["delivery_id"], 0) + 1
    return {
        "events": len(events), "signals_implied": len(implied),
        "decisions_expected": len(expected), "decisions_lost": len(expected - set(by_id)),
        "decisions_invented": len(set(by_id) - expected), "decision_records": len(decisions),
        "decision_records_repeated": len(decisions) - len(by_id), "decisions_repeated_differently": changed,
        "deliveries_expected": len(acts), "deliveries_lost": len(acts - delivered),
        "deliveries_invented": len(delivered - acts), "delivery_records": len(deliveries),
        "delivery_records_repeated": len(deliveries) - len(delivered),
        "deliveries_an_adapter_shows_twice": sum(n > 1 for n in passed.values()),
    }


# --- the faults ------------------------------------------------------------------------------------

class Fault:
    """One fault's pipeline (its own app id and prefix), its workers, the simulator stream, the probes; `finish`
    lets the stream end, moves the clocks on, waits for the pipeline to settle and accounts for it."""

    def __init__(self, base: Settings, work: Path, name: str, events: int, rate: float, seed: int):
        run = f"{name}-{uuid.uuid4().hex[:6]}"
        self.settings = base.with_(topic_prefix=f"chaos-{run}.", app_id=f"engage-chaos-{run}",
                                   partitions=CHAOS_PARTITIONS)
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        ensure_topics(self.settings)
        self.events, self.rate = events, rate
        self.workers, self.decided = Workers(self.settings, folder), Decided(self.settings)
        self.decided.start()
        self.probe = Probe(self.settings, self.decided)
        self.stream = Stream(self.settings, rate, events, seed=seed)

    def finish(self, stream_timeout_s: float) -> dict:
        self.stream.join(timeout=max(stream_timeout_s, self.events / self.rate * 2))
        _advance_clocks(self.settings)
        return {"rate": self.rate, "events_sent": self.stream.sent, "settled": _settled(self.settings),
                **self.workers.restarts(), **account(self.settings)}

    def __enter__(self) -> "Fault":
        return self

    def __exit__(self, *_) -> None:
        self.stream.halt.set()
        self.probe.close()
        self.decided.halt.set()
        self.workers.stop_all()


def _spread(xs: list[float | None]) -> dict:
    got = [x for x in xs if x is not None]
    return {"n": len(xs), "not_recovered": len(xs) - len(got),
            "min": min(got, default=None), "median": statistics.median(got) if got else None, "max": max(got, default=None)}


def kill_cycles(base: Settings, work: Path, events: int, rate: float, cycles: int, log) -> dict:
    """`cycles` times: kill -9 one of two workers (in turn), probe, restart it once the probes are decided."""
    with Fault(base, work, "kill-cycles", events, rate, seed=11) as f:
        f.workers.start(0)
        f.workers.start(1)
        f.stream.start()
        recovery, started = [], time.monotonic()
        for n in range(cycles):
            time.sleep(2.0)
            doomed = n % 2
            f.workers.kill(doomed)
            t0, visitors = f.probe.send()
            recovery.append(f.probe.recovered_s(t0, visitors))
            log(f"kill-cycles: {n + 1}/{cycles} recovered in {recovery[-1]} s, {f.stream.sent or '...'} events sent")
            f.workers.start(doomed)
        cycles_s = time.monotonic() - started
        return {"workers": 2, "cycles": cycles, "cycles_seconds": round(cycles_s, 1), "recovery_s": _spread(recovery),
                **f.finish(60.0)}


def broker_fault(base: Settings, work: Path, broker: localkafka.LocalBroker, kind: str, events: int, rate: float,
                 outage_s: float, log) -> dict:
    """The broker stopped (`stop`) or frozen (`freeze`) for `outage_s` mid-stream, one worker running."""
    with Fault(base, work, f"broker-{kind}", events, rate, seed=12) as f:
        f.workers.start(0)
        f.stream.start()
        time.sleep(min(20.0, events / rate / 3))
        pid = broker.pid()
        log(f"broker-{kind}: {'stopping' if kind == 'stop' else 'freezing'} the broker for {outage_s:g} s")
        if kind == "stop":
            localkafka.down(broker)
            time.sleep(outage_s)
            localkafka.up(broker)
        else:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(outage_s)
            os.kill(pid, signal.SIGCONT)
        t0, visitors = f.probe.send()
        recovered = f.probe.recovered_s(t0, visitors, timeout_s=300)
        alive = f.workers.procs[0].poll() is None
        log(f"broker-{kind}: recovered in {recovered} s; worker {'alive' if alive else 'exited'}")
        accounted = f.finish(120.0)
        return {"workers": 1, "outage_s": outage_s, "worker_survived": f.workers.procs[0].poll() is None,
                "recovery_s": recovered, **accounted}


def state_deleted(base: Settings, work: Path, events: int, rate: float, log) -> dict:
    """The only worker stopped mid-stream, its RocksDB folder deleted, and started again: all from the changelogs."""
    with Fault(base, work, "state-deleted", events, rate, seed=13) as f:
        f.workers.start(0)
        f.stream.start()
        time.sleep(events / rate / 2)
        f.workers.stop(0)
        state = f.workers.state(0)
        deleted = sum(p.stat().st_size for p in state.rglob("*") if p.is_file())
        shutil.rmtree(state)
        log(f"state-deleted: worker stopped, {deleted / 1e6:.1f} MB of state deleted, starting it again")
        t0 = time.monotonic()
        f.workers.start(0, wait_ready_s=0)
        _, visitors = f.probe.send()
        recovered = f.probe.recovered_s(t0, visitors, timeout_s=300)
        return {"workers": 1, "state_deleted_bytes": deleted, "recovery_s": recovered, **f.finish(120.0)}


def run_chaos(settings: Settings, events: int, cycles: int, rate: float, only: list[str] | None,
              out: Path | None) -> dict:
    """The four faults on a broker of the suite's own; results written to bench/results/."""
    from streams.tools.bench import machine, write_results

    if settings.external_kafka:
        raise ChaosError("chaos stops and freezes its broker, so it starts its own: unset KAFKA_BOOTSTRAP_SERVERS")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="engage-chaos-"))
    broker = localkafka.LocalBroker(port=19492, data_dir=work / "kafka")

    def log(text: str) -> None:
        print(f"[chaos] {text}", flush=True)

    log("starting a local Kafka broker ...")
    localkafka.up(broker)
    base = settings.with_(bootstrap_servers=broker.bootstrap, data_dir=work / "state")
    wait_for_broker(base, 60)
    result: dict = {"run": run_id, "machine": machine(), "partitions": CHAOS_PARTITIONS,
                    "session_timeout": SESSION_TIMEOUT, "exactly_once": settings.exactly_once}
    small = max(1_000, events // 5)
    faults = {
        "kill_cycles": lambda: kill_cycles(base, work, events, rate, cycles, log),
        "broker_stop": lambda: broker_fault(base, work, broker, "stop", small, rate, 30.0, log),
        "broker_freeze": lambda: broker_fault(base, work, broker, "freeze", small, rate, 20.0, log),
        "state_deleted": lambda: state_deleted(base, work, small, rate, log),
    }
    try:
        for name, fault in faults.items():
            if only and name not in only:
                continue
            log(f"{name} ...")
            try:
                result[name] = fault()
            except ChaosError as exc:
                result[name] = {"error": str(exc)}
            log(f"{name}: {json.dumps(result[name])}")
    finally:
        if broker.pid() is not None:
            os.kill(broker.pid(), signal.SIGCONT)  # never leave it frozen
        localkafka.down(broker)
        shutil.rmtree(work, ignore_errors=True)
    path = write_results(result, "chaos-exactly-once" if settings.exactly_once else "chaos", run_id, out)
    log(f"written to {path}")
    return result
