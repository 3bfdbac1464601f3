"""Decides how the data stage runs inside a worker: its runner (stage.py's handlers) in a child process of its own, sweeping its partitions hourly.

The data stage is not a Faust agent. After the decision stage left Faust it was all the app still
read (~480 records a second at 1,000 events/s offered, `make bench` 2026-12-01) and the whole
pipeline waited on it. It runs as handlers (stage.py) on a runner (streams/runtime/), in consumer
group `<app id>-data`, in a process of its own; its tables keep the changelogs the Faust tables
of earlier releases wrote. Its consumer's client.id names the worker's HTTP address, so the
context service finds which worker holds a key's tables (streams/data/context.py).
"""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.runtime.process import ChildService
from streams.runtime.stage import StageRunner
from streams.settings import Settings

NAME = "data"
SWEEP_EVERY_S = 3600.0


class DataRunner(StageRunner):
    """The data stage's runner: every partition it holds is swept once it is assigned and then hourly.

    A sweep is a record on engage.data-sweeps sent to the partition it is about, so it is handled in
    the partition's order like any other record (its deletions go to the changelog with the batch).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.swept: dict[int, float] = {}  # partition -> when this runner last sent its sweep

    def idle(self, now: float) -> None:
        due = sorted(p for p in self.assigned if now - self.swept.get(p, float("-inf")) >= SWEEP_EVERY_S)
        if not due:
            return
        topic = self.settings.topic(topics.DATA_SWEEPS.name)
        wall_ts = int(now * 1000)
        self.send_aside([(topic, p, None, self.codec.encode(topic, topics.DATA_SWEEPS.schema, {
            "partition": p, "wall_ts": wall_ts, "watermark_ts": wall_ts, "idle_ms": 0})) for p in due])
        for p in due:
            self.swept[p] = now


def build_runner(settings: Settings, codec, segments, customers, *, consumer=None, producer=None) -> DataRunner:
    """The runner over the data stage's handlers; `segments`, `customers`: books of the segment and customer rules."""
    from streams.data import stage
    from streams.runtime import reader

    return DataRunner(settings, codec, NAME, stage.handlers(settings, segments, customers), stage.TABLES,
                      # of the data stage's inputs, only route_signals read the signals in earlier releases' app
                      ran_on_faust=topics.SIGNALS, client_id=reader.member_name(settings, NAME), consumer=consumer,
                      producer=producer)


def build_data(settings: Settings):
    """In the child: the segment and customer rules (from rules/ or engage.rules, followed live), a codec, the runner."""
    from streams import clients
    from streams.data.customer_rules import load_customer_rules
    from streams.data.value import load_segments
    from streams.rules.book import RuleBook, start_following
    from streams.schemas import look_up_writer_schemas

    segments = RuleBook(load_segments(settings.rules_dir / "segments.yaml"))
    customers = RuleBook(load_customer_rules(settings.rules_dir / "customer.yaml"))
    codec = clients.codec(settings)
    look_up_writer_schemas(settings, codec)
    start_following(settings, [segments, customers], codec)
    return build_runner(settings, codec, segments, customers)


def register(engine: Engine) -> ChildService:
    """Add the data stage to the worker's app, in its own process on the worker's settings."""
    service = ChildService(engine.settings, NAME, build_data)
    engine.app.service(service)
    return service

