"""Decides what runs after a decision, in one process of its own: delivery, attribution and the uplift learner.

They read the decisions, outcomes, conversions, forget requests and attributions, and nothing they
keep is read by the other stages or the context service, so they run on a runner of their own
(streams/runtime/), in consumer group `<app id>-after-decision`, beside the Faust app: each
decision is read and decoded once for both delivery and attribution, each key's state written
once per batch, and every output and state write acked before the offsets are committed. Measured
at 1,000 events/s offered (`make bench`), the three took ~380 of the ~870 records a second the
Faust app read, and ~280 of its ~670 changelog writes a second.
"""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.runtime.process import ChildService
from streams.settings import Settings

NAME = "after-decision"


def build_runner(settings: Settings, codec, book, *, consumer=None, producer=None):
    """The runner over the three stages' handlers; `book`: the action rules running now."""
    from streams.attribution import stage as attribution
    from streams.decision import learner
    from streams.delivery import stage as delivery
    from streams.runtime.stage import StageRunner

    learning, learned = (learner.handlers(), learner.TABLES) if settings.learn else ([], [])
    return StageRunner(settings, codec, NAME, delivery.handlers() + attribution.handlers(settings, book)
                       + learning, attribution.TABLES + learned,
                       # earlier releases' app read the attributions only for the learner: its commits there mark an upgrade
                       ran_on_faust=topics.ATTRIBUTIONS if settings.learn else None, consumer=consumer, producer=producer)


def build_after_decision(settings: Settings):
    """In the child: the action rules (from rules/ or engage.rules, followed live), a codec, the runner."""
    from streams import clients
    from streams.decision.actions import load_actions
    from streams.rules.book import RuleBook, start_following
    from streams.schemas import look_up_writer_schemas

    book = RuleBook(load_actions(settings.rules_dir / "actions.yaml"))
    codec = clients.codec(settings)
    look_up_writer_schemas(settings, codec)
    start_following(settings, [book], codec)
    return build_runner(settings, codec, book)


def register(engine: Engine) -> ChildService:
    """Add the three stages to the worker's app, in their own process on the worker's settings."""
    service = ChildService(engine.settings, NAME, build_after_decision)
    engine.app.service(service)
    return service
