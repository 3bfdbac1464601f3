"""Decides what one worker runs: detection, and delivery with attribution and learning, each in a child process on its own consumer; data and decision on one Faust app; the rules from rules/ or engage.rules."""
from __future__ import annotations

from streams import after_decision
from streams.app import Engine, build_app
from streams.data import agent as data_agent
from streams.data import context
from streams.data.customer_rules import load_customer_rules
from streams.data.value import load_segments
from streams.decision import agent as decision_agent
from streams.decision.actions import load_actions
from streams.decision.models import ModelBook
from streams.detection import agent as detection_agent
from streams.rules.book import RuleBook
from streams.detection.rules import load_detection
from streams.settings import Settings


def build_worker(settings: Settings, models: ModelBook | None = None, actions: RuleBook | None = None,
                 segments: RuleBook | None = None, customers: RuleBook | None = None) -> Engine:
    """Build the app with every stage registered; raises RuleError if a rule file is invalid."""
    # detection's process loads its rules itself; checked here too, so a bad file stops the worker at once
    load_detection(settings.rules_dir / "detection.yaml")
    actions = actions or RuleBook(load_actions(settings.rules_dir / "actions.yaml"))
    segments = segments or RuleBook(load_segments(settings.rules_dir / "segments.yaml"))
    customers = customers or RuleBook(load_customer_rules(settings.rules_dir / "customer.yaml"))
    engine = build_app(settings)
    engine.detection = detection_agent.register(engine)
    data = data_agent.register(engine, segments, customers)
    _, customer_to_contacts = decision_agent.register(engine, actions, models)
    if settings.http_port:
        context.register(engine, data, customer_to_contacts, segments)
    engine.after_decision = after_decision.register(engine)
    return engine


def run_worker(settings: Settings) -> None:
    from streams import statedir
    from streams.admin import ensure_topics, wait_for_broker
    from streams.decision import models as model_follower
    from streams.schemas import look_up_writer_schemas
    from streams.rules.book import start_following

    # its own RocksDB folder, whatever other workers run from the same checkout (held until exit)
    state = statedir.claim(settings.data_dir)
    settings = settings.with_(data_dir=state.path)
    if settings.http_port:  # worker-N of a checkout listens on the N-th port from ENGAGE_HTTP_PORT
        settings = settings.with_(http_port=settings.http_port + statedir.slot_of(state.path))
    # the files are the rule sets until a version is published to engage.rules; then the latest valid one
    actions = RuleBook(load_actions(settings.rules_dir / "actions.yaml"))
    segments = RuleBook(load_segments(settings.rules_dir / "segments.yaml"))
    customers = RuleBook(load_customer_rules(settings.rules_dir / "customer.yaml"))
    models = ModelBook()
    engine = build_worker(settings, models, actions, segments, customers)
    look_up_writer_schemas(settings, engine.codec)
    wait_for_broker(settings)
    ensure_topics(settings)
    start_following(settings, [actions, segments, customers], engine.codec)
    # the uplift model learned so far, before the first decision (a restart decides with the same model)
    model_follower.start_following(settings, models, engine.codec)
    worker = _make_worker_class()(engine.app, loglevel=settings.log_level, quiet=True)
    # while Faust restores its own tables (see ChildService.start_now)
    engine.detection.start_now()
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

