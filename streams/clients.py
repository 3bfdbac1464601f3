"""Decides how every Kafka client and codec of the engine is built: one place for brokers, security, partitioner and wire format.

Workers (Faust over aiokafka), the CLI, the adapters and the tools (confluent-kafka over librdkafka)
all connect through here, so a cluster that needs SASL or TLS is configured once, from the
environment (see `KafkaSecurity` in settings.py and the README's "Point it at your own Kafka").
"""
from __future__ import annotations

import uuid
from typing import Any

from streams.codec import RegistryCodec, SchemaStore, SingleObjectCodec
from streams.settings import Settings

# Kafka's Java clients, Kafka Connect and aiokafka (under Faust) place keys with murmur2;
# librdkafka-based clients (confluent-kafka) default to CRC32. Stages join topics partition by
# partition (a profile and a customer's signals must land on the same partition number), so every
# producer of ours uses murmur2, and producers in other languages must too.
PRODUCER_PARTITIONER = {"partitioner": "murmur2_random"}


def librdkafka_config(settings: Settings) -> dict[str, Any]:
    """The connection part of every confluent-kafka client's configuration: brokers and security."""
    sec = settings.security
    conf: dict[str, Any] = {"bootstrap.servers": settings.bootstrap_servers, "security.protocol": sec.protocol}
    if sec.sasl:
        conf.update({"sasl.mechanisms": sec.sasl_mechanism, "sasl.username": sec.sasl_username,
                     "sasl.password": sec.sasl_password})
    if sec.ssl:
        optional = {"ssl.ca.location": sec.ssl_ca_location, "ssl.certificate.location": sec.ssl_certificate_location,
                    "ssl.key.location": sec.ssl_key_location, "ssl.key.password": sec.ssl_key_password}
        conf.update({k: str(v) for k, v in optional.items() if v is not None})
    return conf


def throwaway_group(prefix: str) -> str:
    """A consumer group name of its own for a reader that assigns partitions and never commits."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def consumer(settings: Settings, group: str, *, offset_reset: str = "earliest", auto_commit: bool = False,
             log_level: int | None = 3, **extra: Any):
    """A confluent-kafka Consumer in `group`; by default it commits only when told, and logs errors only."""
    from confluent_kafka import Consumer

    conf = {**librdkafka_config(settings), "group.id": group, "auto.offset.reset": offset_reset,
            "enable.auto.commit": auto_commit, **extra}
    if log_level is not None:
        conf["log_level"] = log_level
    return Consumer(conf)


def producer(settings: Settings, **extra: Any):
    """A confluent-kafka Producer that partitions like the engine (murmur2), waits for all replicas and never duplicates."""
    from confluent_kafka import Producer

    return Producer({**librdkafka_config(settings), **PRODUCER_PARTITIONER, "acks": "all", "enable.idempotence": True,
                     **extra})


def admin(settings: Settings, quiet: bool = False, **extra: Any):
    """An AdminClient; `quiet` silences librdkafka's own logging (refused connections while a broker starts)."""
    from confluent_kafka.admin import AdminClient

    conf = {**librdkafka_config(settings), **extra}
    if quiet:
        conf["log_level"] = 0
    return AdminClient(conf)


def codec(settings: Settings):
    """The wire format: Avro single-object encoding, or Confluent Schema Registry framing when SCHEMA_REGISTRY_URL is set."""
    store = SchemaStore(settings.schemas_dir)
    return RegistryCodec(store, settings.schema_registry_url) if settings.schema_registry_url else SingleObjectCodec(store)


def faust_broker(settings: Settings) -> dict[str, Any]:
    """The `broker` and `broker_credentials` options of the Faust app (aiokafka), from the same settings."""
    url = ";".join(f"kafka://{h.strip()}" for h in settings.bootstrap_servers.split(",") if h.strip())
    return {"broker": url, "broker_credentials": _faust_credentials(settings)}


def _faust_credentials(settings: Settings):
    import faust

    sec = settings.security
    context = None
    if sec.ssl:
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=str(sec.ssl_ca_location) if sec.ssl_ca_location else None,
            certfile=str(sec.ssl_certificate_location) if sec.ssl_certificate_location else None,
            keyfile=str(sec.ssl_key_location) if sec.ssl_key_location else None,
            password=sec.ssl_key_password)
    if sec.sasl:
        return faust.SASLCredentials(username=sec.sasl_username, password=sec.sasl_password,
                                     mechanism=sec.sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None
