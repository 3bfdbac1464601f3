"""Decides how the decision stage runs inside a worker: its runner (decide, contact ledger, pacer) in a child process of its own.

The decision stage is not a Faust agent: at 1,000 events/s offered it was ~190 of the ~480 records
a second the Faust app read, and its ledger ~180 of the app's ~350 changelog writes a second
(`make bench`, 2026-12-01). It runs as handlers (stage.py) on a runner (streams/runtime/), in
consumer group `<app id>-decision`, in a process of its own. Its consumer's client.id names the
worker's HTTP address, so the context service finds which worker holds a key's ledger
(contacts.py).
"""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.runtime.process import ChildService
from streams.settings import Settings

NAME = "decision"


def build_runner(settings: Settings, codec, book, models, *, consumer=None, producer=None):
    """The runner over the decision stage's handlers; `book`: the action rules, `models`: the uplift model."""
    from streams.decision import contacts, stage
    from streams.runtime.stage import StageRunner

    return StageRunner(settings, codec, NAME, stage.handlers(settings, book, models), stage.TABLES,
                       # only the decision stage read the enriched signals in earlier releases' app
                       ran_on_faust=topics.ENRICHED, client_id=contacts.member_name(settings), consumer=consumer,
                       producer=producer)


def build_decision(settings: Settings):
    """In the child: the action rules and the uplift model (each followed live), a codec, the runner."""
    from streams import clients
    from streams.decision import models as model_follower
    from streams.decision.actions import load_actions
    from streams.decision.models import ModelBook
    from streams.rules.book import RuleBook, start_following
    from streams.schemas import look_up_writer_schemas

    book = RuleBook(load_actions(settings.rules_dir / "actions.yaml"))
    models = ModelBook()
    codec = clients.codec(settings)
    look_up_writer_schemas(settings, codec)
    start_following(settings, [book], codec)
    # the model learned so far, before the first decision (a restart decides with the same model)
    model_follower.start_following(settings, models, codec)
    return build_runner(settings, codec, book, models)


def register(engine: Engine) -> ChildService:
    """Add the decision stage to the worker's app, in its own process on the worker's settings."""
    service = ChildService(engine.settings, NAME, build_decision)
    engine.app.service(service)
    return service
