"""Decides what a rule set would have found in stored events: fires per rule, visitors, examples.

Runs the very Detector the workers run, over in-memory state, on a range of engage.events read
with a throwaway consumer: no live state, no consumer group offsets and no output topic is touched.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable

from streams import clients, topics
from streams.detection.visitor import InvalidEvent
from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.rules import DetectionRuleSet
from streams.settings import Settings, parse_duration_ms


class BacktestError(ValueError):
    """The range or the source cannot be read; the message says why."""


@dataclass
class RuleReport:
    rule_id: str
    signal: str
    fires: int = 0
    visitors: set = field(default_factory=set)
    examples: list = field(default_factory=list)


@dataclass
class Report:
    ruleset_version: str
    events: int = 0
    invalid: int = 0
    visitors: set = field(default_factory=set)
    first_ts: int | None = None
    last_ts: int | None = None
    rules: dict[str, RuleReport] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"ruleset_version": self.ruleset_version, "events": self.events, "invalid_events": self.invalid,
                "visitors": len(self.visitors), "from": _iso(self.first_ts), "to": _iso(self.last_ts),
                "rules": [{"rule_id": r.rule_id, "signal": r.signal, "fires": r.fires, "visitors": len(r.visitors),
                           "share_of_visitors": round(len(r.visitors) / len(self.visitors), 4) if self.visitors else 0.0,
                           "examples": r.examples} for r in self.rules.values()]}


def _iso(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat(timespec="seconds")


def run_backtest(events: Iterable[tuple[int, dict]], rules: DetectionRuleSet, lateness_ms: int = 5_000,
                 end_ts: int | None = None, examples: int = 3, signals: list | None = None) -> Report:
    """`events` are (partition, Interaction); timers still pending at `end_ts` fire if it has passed them.
    Every signal found is also appended to `signals` if given (the ground truth of `make chaos`)."""
    report = Report(rules.version, rules={r.id: RuleReport(r.id, r.signal) for r in rules.rules})
    detector = Detector(lambda: rules, lateness_ms=lateness_ms)
    stores: dict[int, Tx] = {}

    def record(found: list[dict]) -> None:
        if signals is not None:
            signals.extend(found)
        for s in found:
            r = report.rules[s["rule_id"]]
            r.fires += 1
            r.visitors.add(s["visitor_id"])
            if len(r.examples) < examples:
                r.examples.append({"visitor_id": s["visitor_id"], "at": _iso(s["ts"]),
                                   "evidence": evidence_steps(s)})

    for partition, ev in events:
        tx = stores.setdefault(partition, Tx({}, {}))
        try:
            found = detector.on_event(tx, partition, ev).signals
        except InvalidEvent:
            report.invalid += 1
            continue
        report.events += 1
        report.visitors.add(ev["visitor_id"])
        report.first_ts = ev["ts"] if report.first_ts is None else min(report.first_ts, ev["ts"])
        report.last_ts = ev["ts"] if report.last_ts is None else max(report.last_ts, ev["ts"])
        record(found)
        tx.apply()
    if end_ts is not None:  # the end of the range is the partitions' time: fire what was due by then
        for partition, tx in stores.items():
            record(detector.on_tick(tx, partition, max(0, end_ts - detector.max_ts.get(partition, end_ts))))
    return report


def parse_time(text: str, now_ms: int | None = None) -> int:
    """ISO 8601 (UTC unless it says otherwise), 'now', or a time ago such as 90m, 2h, 7d."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text == "now":
        return now_ms
    ago = parse_duration_ms(text)
    if ago is not None:
        return now_ms - ago
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BacktestError(f"not a time: {text!r} (use ISO 8601 such as 2026-11-23T09:00, 'now', or 90m / 2h / 7d ago)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def evidence_steps(signal: dict) -> list[str]:
    """A signal's evidence as a person reads it: each event's type, path and query."""
    return [" ".join(str(x) for x in (e["type"], e.get("path") or "", e.get("query") or "") if x)
            for e in signal["evidence"]]


def read_events(settings: Settings, from_ms: int, to_ms: int, codec, timeout_s: float = 30.0):
    """Yield (partition, Interaction) with from_ms <= ts < to_ms, partition by partition, without a consumer group."""
    from confluent_kafka import TopicPartition

    topic = settings.topic(topics.EVENTS.name)
    consumer = clients.consumer(settings, clients.throwaway_group("engage-backtest"))
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise BacktestError(f"topic {topic} not found at {settings.bootstrap_servers}")
        # a little before the range: message timestamps are producer time, the range is event time
        starts = consumer.offsets_for_times([TopicPartition(topic, p, max(0, from_ms - 3_600_000))
                                             for p in sorted(meta.partitions)], timeout=timeout_s)
        for tp in starts:
            low, high = clients.watermarks(consumer, TopicPartition(topic, tp.partition), time.monotonic() + timeout_s)
            start = tp.offset if tp.offset >= 0 else high
            if start >= high:
                continue
            consumer.assign([TopicPartition(topic, tp.partition, start)])
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None or msg.error():
                    continue
                deadline = time.monotonic() + timeout_s
                try:
                    ev = codec.decode(topic, topics.EVENTS.schema, msg.value())
                except ValueError:
                    ev = None
                if ev is not None and from_ms <= ev["ts"] < to_ms:
                    yield tp.partition, ev
                if msg.offset() + 1 >= high or msg.timestamp()[1] > to_ms + 3_600_000:
                    break
    finally:
        consumer.close()


def format_report(report: Report) -> str:
    d = report.as_dict()
    lines = [f"rule set {d['ruleset_version']}: {d['events']} events from {d['visitors']} visitors, {d['from']} .. {d['to']}"
             + (f" ({d['invalid_events']} invalid events skipped)" if d["invalid_events"] else "")]
    for r in d["rules"]:
        lines.append(f"  {r['rule_id']:28} -> {r['signal']:22} fires {r['fires']:6}  visitors {r['visitors']:6}"
                     f"  ({r['share_of_visitors']:.1%} of visitors)")
        for ex in r["examples"]:
            lines.append(f"      e.g. {ex['visitor_id']} at {ex['at']}: {' > '.join(ex['evidence'])}")
    return "\n".join(lines)
