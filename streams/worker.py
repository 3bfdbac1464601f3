"""Decides what one worker runs: detection, data, decision, and delivery with attribution and learning, each in a child process on its own consumer; the context service on the Faust app's web server; the rules from rules/ or engage.rules."""
from __future__ import annotations

from streams import after_decision, topics
from streams.app import Engine, build_app
from streams.data import agent as data_agent
from streams.data import context
from streams.data.customer_rules import load_customer_rules
from streams.data.value import load_segments
from streams.decision import agent as decision_agent
from streams.decision.actions import load_actions
from streams.detection import agent as detection_agent
from streams.rules.book import RuleBook
from streams.detection.rules import load_detection
from streams.settings import Settings


def build_worker(settings: Settings, segments: RuleBook | None = None) -> Engine:
    """Build the app with every stage registered; raises RuleError if a rule file is invalid.

    `segments`: the segment rules the context service values customers with (followed by run_worker).
    """
    # the child processes load their rules themselves; checked here too, so a bad file stops the worker at once
    load_detection(settings.rules_dir / "detection.yaml")
    load_actions(settings.rules_dir / "actions.yaml")
    load_customer_rules(settings.rules_dir / "customer.yaml")
    segments = segments or RuleBook(load_segments(settings.rules_dir / "segments.yaml"))
    engine = build_app(settings)
    engine.detection = detection_agent.register(engine)
    engine.data = data_agent.register(engine)
    engine.decision = decision_agent.register(engine)
    if settings.http_port:
        from streams import health
        from streams.decision.contacts import ContactsReader

        health.register(engine)
        from streams.runtime.reader import StageReader

        context.register(engine, StageReader(settings, data_agent.NAME, topics.SIGNALS), ContactsReader(settings),
                         segments)
    engine.after_decision = after_decision.register(engine)
    return engine


def run_worker(settings: Settings) -> None:
    from streams import statedir
    from streams.admin import ensure_topics, wait_for_broker
    from streams.schemas import look_up_writer_schemas
    from streams.rules.book import start_following

    # its own RocksDB folder, whatever other workers run from the same checkout (held until exit)
    state = statedir.claim(settings.data_dir)
    settings = settings.with_(data_dir=state.path)
    # its processes' metrics, added up on /metrics: a folder of this worker's, named before any of them counts
    from streams import metrics

    metrics.use_folder(state.path / "metrics")
    if settings.http_port:  # worker-N of a checkout listens on the N-th port from ENGAGE_HTTP_PORT
        settings = settings.with_(http_port=settings.http_port + statedir.slot_of(state.path))
    # the files are the rule sets until a version is published to engage.rules; then the latest valid one
    segments = RuleBook(load_segments(settings.rules_dir / "segments.yaml"))
    engine = build_worker(settings, segments)
    look_up_writer_schemas(settings, engine.codec)
    wait_for_broker(settings)
    ensure_topics(settings)
    start_following(settings, [segments], engine.codec)
    worker = _make_worker_class()(engine.app, loglevel=settings.log_level, quiet=True)
    # at once, not when Faust starts its services (see ChildService.start_now)
    engine.detection.start_now()
    engine.data.start_now()
    engine.decision.start_now()
    engine.after_decision.start_now()

    @engine.app.task
    async def report_on_sigusr1():
        from streams import diagnose

        diagnose.install(engine.app)

    worker.execute_from_commandline()


def _make_worker_class():
    import logging

    import faust

    from streams import logfilter

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger, level):
            super().on_setup_root_logger(logger, level)
            # aiokafka and Faust log at debug level on every fetch and send; measured with py-spy
            # under load, building those records took ~5% of the worker's CPU: keep them off.
            for name in ("aiokafka", "faust", "mode"):
                logging.getLogger(name).setLevel(max(level or logging.WARNING, logging.INFO))
            # a broker outage makes the clients log every retry (~110,000 lines in 25 s): once per kind per 10 s
            logfilter.install(interval_s=10.0)

    return Worker

