"""Decides how detection runs inside a worker: its runner in a child process, started and stopped with the Faust app.

Detection is not a Faust agent (runner.py says why, with the figures): it has its own consumer
group, state and changelogs, in a process of its own (streams/runtime/process.py). Purchases,
cancellations and calls also go to engage.conversions under the keys decisions use, for
attribution, and failed logins to the known customer's journey (engage.journey-moves): detection is
where a visitor's customer id is known.
"""
from __future__ import annotations

from streams.app import Engine
from streams.runtime.process import ChildService
from streams.settings import Settings


def build_detection(settings: Settings):
    """In the child: the rules (from rules/ or engage.rules, followed live), a codec, the runner."""
    from streams import clients
    from streams.detection.rules import load_detection
    from streams.detection.runner import DetectionRunner
    from streams.rules.book import RuleBook, start_following
    from streams.schemas import look_up_writer_schemas

    book = RuleBook(load_detection(settings.rules_dir / "detection.yaml"))
    codec = clients.codec(settings)
    look_up_writer_schemas(settings, codec)
    start_following(settings, [book], codec)
    return DetectionRunner(settings, codec, book.rules)


def register(engine: Engine) -> ChildService:
    """Add detection to the worker's app, in its own process on the worker's settings."""
    service = ChildService(engine.settings, "detection", build_detection)
    engine.app.service(service)
    return service
