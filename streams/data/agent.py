"""Decides how the data stage runs on Faust: profiles kept in a RocksDB table, signals joined with them."""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.codec import DecodeError
from streams.data.enrich import enrich, validate_profile

STAGE = "data"


def register(engine: Engine):
    app = engine.app
    customer_to_profile = app.Table("customer_to_profile", default=None, partitions=engine.settings.partitions,
                                    key_type=str)

    @app.agent(engine.topic[topics.PROFILES.name], name="store_profiles")
    async def store_profiles(stream):
        async for event in stream.events():
            msg = event.message
            if msg.value is None and msg.key is not None:
                customer_to_profile.pop(msg.key.decode("utf-8", "replace"), None)  # tombstone: the customer was deleted
                continue
            try:
                profile = engine.decode(topics.PROFILES, msg.value)
                validate_profile(profile)
                if msg.key is None or msg.key.decode("utf-8", "replace") != profile["customer_id"]:
                    raise ValueError("the record key must be the customer_id")
            except (DecodeError, ValueError) as exc:
                await engine.dead_letter(STAGE, msg, exc)
                continue
            customer_to_profile[profile["customer_id"]] = profile

    @app.agent(engine.topic[topics.SIGNALS.name], name="route_signals")
    async def route_signals(stream):
        async for event in stream.events():
            msg = event.message
            try:
                signal = engine.decode(topics.SIGNALS, msg.value)
            except DecodeError as exc:
                await engine.dead_letter(STAGE, msg, exc)
                continue
            if signal["customer_id"]:
                # re-key so the join happens on the partition that holds this customer's profile
                await engine.send(topics.SIGNALS_BY_CUSTOMER, signal["customer_id"], signal)
            else:
                enriched = enrich(signal, None)
                await engine.send(topics.ENRICHED, enriched["key"], enriched)

    @app.agent(engine.topic[topics.SIGNALS_BY_CUSTOMER.name], name="enrich_signals")
    async def enrich_signals(stream):
        async for event in stream.events():
            msg = event.message
            try:
                signal = engine.decode(topics.SIGNALS_BY_CUSTOMER, msg.value)
            except DecodeError as exc:
                await engine.dead_letter(STAGE, msg, exc)
                continue
            enriched = enrich(signal, customer_to_profile.get(signal["customer_id"]))
            await engine.send(topics.ENRICHED, enriched["key"], enriched)

    return customer_to_profile
