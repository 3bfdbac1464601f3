"""Decides what one worker process runs: the four stages on one Faust app, with the rules from rules/."""
from __future__ import annotations

from streams.app import Engine, build_app
from streams.data import agent as data_agent
from streams.decision import agent as decision_agent
from streams.decision.actions import load_actions
from streams.delivery import agent as delivery_agent
from streams.detection import agent as detection_agent
from streams.detection.rules import load_detection
from streams.settings import Settings


def build_worker(settings: Settings) -> Engine:
    """Build the app with every stage registered; raises RuleError if a rule file is invalid."""
    detection_rules = load_detection(settings.rules_dir / "detection.yaml")
    actions = load_actions(settings.rules_dir / "actions.yaml")
    engine = build_app(settings)
    detection_agent.register(engine, detection_rules)
    data_agent.register(engine)
    decision_agent.register(engine, actions)
    delivery_agent.register(engine)
    return engine


def run_worker(settings: Settings) -> None:
    import faust

    from streams.admin import ensure_topics, wait_for_broker

    engine = build_worker(settings)
    wait_for_broker(settings)
    ensure_topics(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(engine.app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()
