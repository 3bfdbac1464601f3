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
        def route(msg) -> list:
            signal = engine.decode(topics.SIGNALS, msg.value)
            if signal["customer_id"]:
                # re-key so the join happens on the partition that holds this customer's profile
                return [(topics.SIGNALS_BY_CUSTOMER, signal["customer_id"], signal)]
            enriched = enrich(signal, None)
            return [(topics.ENRICHED, enriched["key"], enriched)]

        await engine.handle_batches(stream, STAGE, route)

    @app.agent(engine.topic[topics.SIGNALS_BY_CUSTOMER.name], name="enrich_signals")
    async def enrich_signals(stream):
        def join(msg) -> list:
            signal = engine.decode(topics.SIGNALS_BY_CUSTOMER, msg.value)
            enriched = enrich(signal, customer_to_profile.get(signal["customer_id"]))
            return [(topics.ENRICHED, enriched["key"], enriched)]

        await engine.handle_batches(stream, STAGE, join)

    return store_profiles, route_signals, enrich_signals, customer_to_profile
