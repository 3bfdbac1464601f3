"""Decides what the engine counts for Prometheus, how a worker's processes add up on one /metrics, and when a worker is ready.

A worker runs each stage in a child process; prometheus-client's multiprocess mode adds them up:
every process writes its samples to files in one folder (PROMETHEUS_MULTIPROC_DIR), which the
worker makes afresh and names in its environment before any of its processes imports
prometheus_client (`use_folder`), and the worker's /metrics reads them all. The collector and the
agent desktop serve /metrics beside their pages; the other adapters on ENGAGE_METRICS_PORT when
set (`serve`). They are one process each and use the default registry.

Metrics (labels in braces; topics by their names without the deployment's prefix):
  engage_records_consumed_total{stage,topic}       records a stage took
  engage_records_produced_total{stage,topic}       records a stage handed to the broker (acked)
  engage_signals_total{rule}                       signals raised, by detection rule
  engage_decisions_total{outcome,gate}             decisions, by outcome and the gate that stopped them
  engage_deliveries_total{channel}                 deliveries, by channel
  engage_dead_letters_total{stage,reason}          dead letters: undecodable, invalid (broke the contract), fault (ours)
  engage_adapter_outcomes_total{adapter,outcome}   outcomes an adapter reported
  engage_collector_requests_total{path,status}     requests the collector answered
  engage_hop_seconds{stage,topic}                  wall time from an input record's append to the broker acking what it led to
  engage_event_time_lag_seconds{output}            from the event's own time to its signal, decision or delivery
  engage_consumer_lag{stage,topic,partition}       records behind the partition's end
  engage_partition_held{stage,topic,partition}     1 while this worker holds the partition
  engage_partition_progress_seconds{stage,topic,partition}  when the partition last moved on or had nothing to read (Unix time)
  engage_stage_ready{stage}                        1 once the stage's partitions are assigned and their tables restored
  engage_restored_records_total{stage}             changelog records applied while restoring (taking partitions over)
  engage_standby_partitions{stage}                 partitions kept warm for another worker (ENGAGE_STANDBY_REPLICAS)
  engage_transactions_total{stage,result}          ENGAGE_EXACTLY_ONCE: batches' transactions committed, aborted
                                                   (sent again) or refused (the stage started again)
  engage_rules_version_info{kind,version}          the rule sets in use
"""
from __future__ import annotations

import bisect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
STAGES = ("detection", "data", "decision", "after-decision")
# latency buckets, seconds: from a few ms (a hop on a quiet machine) to a minute (a timer's deadline, a backlog)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def use_folder(path: Path) -> None:
    """Make `path` this process's (and its children's) metrics folder, emptied: call before prometheus_client is
    imported (it picks its storage when imported)."""
    path.mkdir(parents=True, exist_ok=True)
    for old in path.glob("*.db"):
        old.unlink()
    os.environ[ENV] = str(path)


def logical(topic: str, prefixes: tuple[str, ...]) -> str:
    """A topic's name as the contract names it (`engage.events`), without the deployment's prefixes (Settings.prefixes)."""
    for prefix in prefixes:
        if topic.startswith(prefix):
            return topic[len(prefix):]
    return topic


def reason_class(exc: Exception | None, fault: bool) -> str:
    if fault:
        return "fault"
    from streams.codec import DecodeError

    return "undecodable" if isinstance(exc, DecodeError) else "invalid"


class _Metrics:
    """The metric objects, made on first use (so that importing this module does not import prometheus_client)."""

    def __init__(self):
        from prometheus_client import Counter, Gauge, Histogram

        self.consumed = Counter("engage_records_consumed", "Records a stage took.", ["stage", "topic"])
        self.produced = Counter("engage_records_produced", "Records a stage handed to the broker.", ["stage", "topic"])
        self.signals = Counter("engage_signals", "Signals raised, by detection rule.", ["rule"])
        self.decisions = Counter("engage_decisions", "Decisions, by outcome and gate.", ["outcome", "gate"])
        self.deliveries = Counter("engage_deliveries", "Deliveries, by channel.", ["channel"])
        self.dead_letters = Counter("engage_dead_letters", "Dead letters, by stage and reason class.", ["stage", "reason"])
        self.adapter_outcomes = Counter("engage_adapter_outcomes", "Outcomes an adapter reported.", ["adapter", "outcome"])
        self.collector_requests = Counter("engage_collector_requests", "Requests the collector answered.",
                                          ["path", "status"])
        self.hop = Histogram("engage_hop_seconds", "Wall time from an input record's append to the broker acking "
                             "what it led to.", ["stage", "topic"], buckets=BUCKETS)
        self.event_lag = Histogram("engage_event_time_lag_seconds", "From the event's own time to its signal, "
                                   "decision or delivery.", ["output"], buckets=BUCKETS)
        self.lag = Gauge("engage_consumer_lag", "Records behind the partition's end.", ["stage", "topic", "partition"],
                         multiprocess_mode="livemax")
        self.held = Gauge("engage_partition_held", "1 while this worker holds the partition.",
                          ["stage", "topic", "partition"], multiprocess_mode="livemax")
        self.progress = Gauge("engage_partition_progress_seconds", "When the partition last moved on or had nothing "
                              "to read (Unix time).", ["stage", "topic", "partition"], multiprocess_mode="livemax")
        self.stage_ready = Gauge("engage_stage_ready", "1 once the stage's partitions are assigned and restored.",
                                 ["stage"], multiprocess_mode="livemax")
        self.restored = Counter("engage_restored_records", "Changelog records applied while restoring.", ["stage"])
        self.transactions = Counter("engage_transactions", "Kafka transactions a stage ended under ENGAGE_EXACTLY_ONCE, "
                                    "by result: committed, aborted (sent again), refused (the stage starts again).",
                                    ["stage", "result"])
        self.standbys = Gauge("engage_standby_partitions", "Partitions kept warm for another worker.", ["stage"],
                              multiprocess_mode="livemax")
        self.rules = Gauge("engage_rules_version_info", "The rule sets in use.", ["kind", "version"],
                           multiprocess_mode="livemax")


_metrics: _Metrics | None = None


def m() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


class Batch:
    """What one batch counts, added to the metrics at once when its outputs are acked: each series written
    once per batch, not once per record. In a worker every write is an update of a memory-mapped file
    under a lock. In `make bench`, the worker's CPU per event against the batched Faust anchor's was
    0.65-0.73x before metrics (bench-20261202-030955), 0.81-0.92x with a write per record (-041807),
    0.72-0.85x with a write per batch (-043102)."""

    def __init__(self):
        self.counts: dict[tuple, float] = {}
        self.observed: dict[tuple, list[float]] = {}

    def inc(self, metric, labels: tuple, n: float = 1) -> None:
        key = (metric, labels)
        self.counts[key] = self.counts.get(key, 0) + n

    def observe(self, histogram, labels: tuple, value: float) -> None:
        self.observed.setdefault((histogram, labels), []).append(value)

    def flush(self) -> None:
        for (metric, labels), n in self.counts.items():
            metric.labels(*labels).inc(n)
        for (histogram, labels), values in self.observed.items():
            observe_all(histogram.labels(*labels), values)
        self.counts.clear()
        self.observed.clear()


def observe_all(child, values: list[float]) -> None:
    """`child.observe(v)` for every value, with each bucket and the sum written once (prometheus-client's
    Histogram internals as of 0.26: `_upper_bounds`, `_buckets`, `_sum`; a unit test holds it to observe())."""
    bounds = child._upper_bounds
    counts = [0] * len(bounds)
    for v in values:
        counts[bisect.bisect_left(bounds, v)] += 1
    child._sum.inc(sum(values))
    for i, n in enumerate(counts):
        if n:
            child._buckets[i].inc(n)


# what an output says about the business, counted into its batch when a stage produces it
def count_output(batch: Batch, topic: str, record: dict | None, now_s: float) -> None:
    if record is None:
        return
    if topic == "engage.signals":
        batch.inc(m().signals, (record["rule_id"],))
        batch.observe(m().event_lag, ("signal",), max(0.0, now_s - record["ts"] / 1000))
    elif topic == "engage.decisions":
        batch.inc(m().decisions, (record["outcome"], record["gate"] or ""))
        batch.observe(m().event_lag, ("decision",), max(0.0, now_s - record["signal_ts"] / 1000))
    elif topic == "engage.delivery":
        batch.inc(m().deliveries, (record["channel"],))
        batch.observe(m().event_lag, ("delivery",), max(0.0, now_s - record["signal_ts"] / 1000))


def exposition() -> tuple[bytes, str]:
    """This process's metrics, or, in a worker, all its processes' added up: (body, content type)."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


def serve(port: int, bind: str) -> None:
    """/metrics of this process on its own port (an adapter's), in a thread; nothing if `port` is 0."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=bind)


def process_gone(pid: int) -> None:
    """A worker's child process exited: its live gauges no longer count."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# -- readiness -------------------------------------------------------------------------------------------

@dataclass
class Readiness:
    ready: bool
    reasons: list[str] = field(default_factory=list)
    stages: dict[str, bool] = field(default_factory=dict)


def readiness(samples: list[tuple[str, dict, float]], now_s: float, stuck_after_s: float,
              stages: tuple[str, ...] = STAGES) -> Readiness:
    """Is the worker ready, from its metric samples ((name, labels, value))? Every stage has its partitions
    assigned and restored, and no partition has had records to read without moving on for `stuck_after_s`
    (a consumer that stopped fetching, a stage stuck on a record, a process hung: its time stops moving)."""
    ready_by_stage = {s: False for s in stages}
    held = {_where(labels) for name, labels, value in samples if name == "engage_partition_held" and value >= 1}
    reasons = []
    for name, labels, value in samples:
        if name == "engage_stage_ready" and labels.get("stage") in ready_by_stage:
            ready_by_stage[labels["stage"]] = value >= 1
        elif name == "engage_partition_progress_seconds" and _where(labels) in held and now_s - value > stuck_after_s:
            reasons.append(f"{labels.get('stage')} has not moved on {labels.get('topic')}[{labels.get('partition')}] "
                           f"for {now_s - value:.0f} s")
    reasons[:0] = [f"{s} has no partitions assigned and restored yet" for s, ok in ready_by_stage.items() if not ok]
    return Readiness(not reasons, reasons, ready_by_stage)


def _where(labels: dict) -> tuple:
    return labels.get("stage"), labels.get("topic"), labels.get("partition")


def samples() -> list[tuple[str, dict, float]]:
    """The readiness gauges of every process of this worker."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    if os.environ.get(ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry  # noqa: N811 - one process: the default registry
    out = []
    for family in registry.collect():
        if family.name in ("engage_stage_ready", "engage_partition_progress_seconds", "engage_partition_held"):
            out.extend((s.name, dict(s.labels), s.value) for s in family.samples)
    return out


def check_ready(stuck_after_s: float) -> Readiness:
    return readiness(samples(), time.time(), stuck_after_s)
