"""Metric names and labels, what an output counts as, and when a worker is ready (a stuck partition found)."""
from __future__ import annotations

import re

from prometheus_client import REGISTRY

from streams import metrics
from streams.settings import Settings
from streams.codec import DecodeError
from streams.metrics import readiness

NOW = 1_800_000_000.0


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_documented_metric_exists_with_its_labels():
    # Given the metrics the module's docstring documents, When they are made
    m = metrics.m()
    documented = dict(re.findall(r"^  (engage_\w+)\{([\w,]+)\}", metrics.__doc__, re.M))
    made = {}
    for metric in vars(m).values():
        name = metric._name + ("_total" if metric._type == "counter" else "")
        made[name] = ",".join(metric._labelnames)
    # Then each is made, with the documented labels, and nothing undocumented
    assert made == documented


def test_an_output_is_counted_by_what_it_says():
    # Given a signal, a decision stopped by a gate and a delivery, When they are produced
    before = (value("engage_signals_total", rule="r-x"), value("engage_decisions_total", outcome="suppressed", gate="min_gap"),
              value("engage_deliveries_total", channel="sms"))
    batch = metrics.Batch()
    metrics.count_output(batch, "engage.signals", {"rule_id": "r-x", "ts": (NOW - 2) * 1000}, NOW)
    metrics.count_output(batch, "engage.decisions", {"outcome": "suppressed", "gate": "min_gap", "signal_ts": NOW * 1000}, NOW)
    metrics.count_output(batch, "engage.delivery", {"channel": "sms", "signal_ts": NOW * 1000}, NOW)
    metrics.count_output(batch, "engage.delivery", None, NOW)  # a tombstone: nothing
    assert value("engage_signals_total", rule="r-x") == before[0]  # nothing until the batch is handed over
    batch.flush()
    # Then each is counted once under its own labels
    after = (value("engage_signals_total", rule="r-x"), value("engage_decisions_total", outcome="suppressed", gate="min_gap"),
             value("engage_deliveries_total", channel="sms"))
    assert [a - b for a, b in zip(after, before)] == [1, 1, 1]
    assert value("engage_event_time_lag_seconds_bucket", output="signal", le="2.5") >= 1


def test_dead_letters_are_classed_by_reason():
    assert metrics.reason_class(DecodeError("bad bytes"), False) == "undecodable"
    assert metrics.reason_class(ValueError("a decision to act needs a channel"), False) == "invalid"
    assert metrics.reason_class(RuntimeError("ours"), True) == "fault"


def test_topics_are_named_without_the_deployments_prefix():
    assert metrics.logical("acme.engage.events", ("acme.",)) == "engage.events"
    assert metrics.logical("engage.events", ()) == "engage.events"
    # a shadow run: its own prefix, and the live one it reads the events from (none here)
    shadow = Settings.from_env({"ENGAGE_TOPIC_PREFIX": "shadow.", "ENGAGE_INPUT_PREFIX": ""})
    assert metrics.logical(shadow.topic("engage.events"), shadow.prefixes) == "engage.events"
    assert metrics.logical(shadow.topic("engage.decisions"), shadow.prefixes) == "engage.decisions"


def ready_stages(*stages):
    return [("engage_stage_ready", {"stage": s}, 1.0) for s in stages]


def held(stage, topic, p, progress_s, is_held=1.0):
    labels = {"stage": stage, "topic": topic, "partition": str(p)}
    return [("engage_partition_held", labels, is_held), ("engage_partition_progress_seconds", labels, progress_s)]


def test_a_worker_is_ready_once_every_stage_is_assigned_and_restored():
    # Given three stages ready and one still restoring
    found = readiness(ready_stages("detection", "data", "decision") + [("engage_stage_ready", {"stage": "after-decision"}, 0.0)],
                      NOW, 60)
    # Then not ready, saying which
    assert not found.ready and found.reasons == ["after-decision has no partitions assigned and restored yet"]
    # And once it is, ready
    assert readiness(ready_stages(*metrics.STAGES), NOW, 60).ready


def test_a_held_partition_that_has_not_moved_on_for_too_long_makes_the_worker_not_ready():
    # Given every stage ready, detection's partition 0 still for 90 s with records to read, partition 1 fine
    found = readiness(ready_stages(*metrics.STAGES) + held("detection", "engage.events", 0, NOW - 90)
                      + held("detection", "engage.events", 1, NOW - 1), NOW, 60)
    # Then not ready, naming that partition alone
    assert not found.ready and found.reasons == ["detection has not moved on engage.events[0] for 90 s"]
    # And a partition this worker no longer holds, however old its time, does not count; nor one under the limit
    assert readiness(ready_stages(*metrics.STAGES) + held("detection", "engage.events", 0, NOW - 900, is_held=0.0),
                     NOW, 60).ready
    assert readiness(ready_stages(*metrics.STAGES) + held("detection", "engage.events", 0, NOW - 59), NOW, 60).ready


def test_a_batch_observes_a_histogram_exactly_as_observing_each_value_would():
    # Given two histograms of the same buckets, and values on, between and beyond the bounds
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    one = Histogram("one_seconds", "", buckets=metrics.BUCKETS, registry=registry)
    many = Histogram("many_seconds", "", buckets=metrics.BUCKETS, registry=registry)
    values = [0.0, 0.005, 0.007, 0.1, 0.1000001, 2.5, 59.0, 60.0, 61.0, 1e9]
    # When one observes each value and the other all at once
    for v in values:
        one.observe(v)
    metrics.observe_all(many, values)
    # Then every bucket, the count and the sum are the same
    def samples(h):
        return [(s.name.split("_seconds")[1], s.labels.get("le"), s.value) for s in h.collect()[0].samples
                if not s.name.endswith("_created")]
    assert samples(one) == samples(many)
