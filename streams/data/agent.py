"""Decides how the data stage runs on Faust: profiles kept in a RocksDB table, signals joined with them."""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.data.enrich import enrich, validate_profile

STAGE = "data"


def _check_profile(msg, profile: dict) -> None:
    validate_profile(profile)
    if msg.key is None or msg.key.decode("utf-8", "replace") != profile["customer_id"]:
        raise ValueError("the record key must be the customer_id")


def register(engine: Engine):
    app = engine.app
    customer_to_profile = app.Table(topics.CUSTOMER_TO_PROFILE, default=None, partitions=engine.settings.partitions,
                                    key_type=str)  # values are JSON (Faust's default for untyped tables)

    @app.agent(engine.topic[topics.PROFILES.name], name="store_profiles")
    async def store_profiles(stream):
        async for msg, profile in engine.records(stream, topics.PROFILES, STAGE, _check_profile, tombstones=True):
            async with engine.guard(STAGE, msg):
                if profile is None:
                    customer_to_profile.pop(msg.key.decode("utf-8", "replace"), None)  # the customer was deleted
                else:
                    customer_to_profile[profile["customer_id"]] = profile

    @app.agent(engine.topic[topics.SIGNALS.name], name="route_signals")
    async def route_signals(stream):
        async for msg, signal in engine.records(stream, topics.SIGNALS, STAGE):
            async with engine.guard(STAGE, msg):
                if signal["customer_id"]:
                    # re-key so the join happens on the partition that holds this customer's profile
                    await engine.send(topics.SIGNALS_BY_CUSTOMER, signal["customer_id"], signal)
                else:
                    enriched = enrich(signal, None)
                    await engine.send(topics.ENRICHED, enriched["key"], enriched)

    @app.agent(engine.topic[topics.SIGNALS_BY_CUSTOMER.name], name="enrich_signals")
    async def enrich_signals(stream):
        async for msg, signal in engine.records(stream, topics.SIGNALS_BY_CUSTOMER, STAGE):
            async with engine.guard(STAGE, msg):
                enriched = enrich(signal, customer_to_profile.get(signal["customer_id"]))
                await engine.send(topics.ENRICHED, enriched["key"], enriched)

    return store_profiles, route_signals, enrich_signals, customer_to_profile
