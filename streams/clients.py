"""Decides how every Kafka client and codec of the engine is built: one place for brokers, security, partitioner and wire format.

Workers (Faust over aiokafka), the CLI, the adapters and the tools (confluent-kafka over librdkafka)
all connect through here, so a cluster that needs SASL or TLS is configured once, from the
environment (see `KafkaSecurity` in settings.py and the README's "Point it at your own Kafka").
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from streams.codec import RegistryCodec, SchemaStore, SingleObjectCodec
from streams.settings import Settings

# Kafka's Java clients, Kafka Connect and aiokafka (under Faust) place keys with murmur2;
# librdkafka-based clients (confluent-kafka) default to CRC32. Stages join topics partition by
# partition (a profile and a customer's signals must land on the same partition number), so every
# producer of ours uses murmur2, and producers in other languages must too.
PRODUCER_PARTITIONER = {"partitioner": "murmur2_random"}


def partition_of(key: str, partitions: int) -> int:
    """The partition the engine's producers put `key` on (murmur2, as Kafka's Java clients)."""
    from aiokafka.partitioner import murmur2

    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


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


def produce_when_room(producer, topic: str, *, pause_s: float = 0.05, **kwargs: Any) -> None:
    """`producer.produce(topic, **kwargs)`, serving the client's delivery reports while its queue is full (BufferError)."""
    while True:
        try:
            producer.produce(topic, **kwargs)
            return
        except BufferError:  # the client's queue is full: let it send
            producer.poll(pause_s)


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


class ReadError(ValueError):
    """A topic could not be read; the message names it and why."""


class SendError(ValueError):
    """A record could not be written; the message names the topic and why."""


def send_one(settings: Settings, topic: str, key: bytes, value: bytes, timeout_s: float = 15.0) -> None:
    """Write one record and wait until the brokers have it (the CLI's publish and register); SendError if not."""
    from confluent_kafka import KafkaException

    errors: list = []
    sender = producer(settings)
    try:
        sender.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: errors.append(err) if err else None)
    except KafkaException as exc:  # e.g. larger than the producer's message.max.bytes
        raise SendError(f"could not publish to {topic}: {exc.args[0].str()} ({len(value):,} bytes)") from None
    if sender.flush(timeout_s) or errors:
        reason = errors[0].str() if errors else "timed out"
        raise SendError(f"could not publish to {topic}: {reason} ({len(value):,} bytes; the topic's "
                        "max.message.bytes must allow it)")


def watermarks(consumer, tp, deadline: float) -> tuple[int, int]:
    """The partition's watermarks, waiting out retriable errors: a topic created a moment ago has no
    leader yet (NOT_LEADER_FOR_PARTITION), and a worker started with the broker reads it right away."""
    from confluent_kafka import KafkaError, KafkaException

    # librdkafka does not flag these as retriable here, yet they pass as soon as the leader is elected
    settling = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError._TIMED_OUT}
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            err = exc.args[0]
            if not (err.retriable() or err.code() in settling) or time.monotonic() >= deadline:
                raise ReadError(f"cannot read {tp.topic}: {exc.args[0].str()}") from None
            time.sleep(0.2)


def passed_end(c, topic: str, ends: dict[int, int]) -> list[int]:
    """The partitions of `topic` whose end (partition -> offset) the consumer `c` has passed though no record reached
    it: a topic written in transactions (ENGAGE_EXACTLY_ONCE) ends with a commit marker, which no record is, and
    aborted records are never read; the consumer's position moves past both."""
    from confluent_kafka import TopicPartition

    return [tp.partition for tp in c.position([TopicPartition(topic, p) for p in ends])
            if tp.offset >= 0 and tp.offset >= ends[tp.partition]]


def read_to_end(settings: Settings, topic: str, start: int = 0, timeout_s: float = 10.0,
                group_prefix: str = "engage-reader") -> list[tuple[int, bytes | None, bytes | None]]:
    """(offset, key, value) of every record of partition 0 of `topic` from `start` to its end now.

    For the one-partition, compacted topics read whole (engage.rules, engage.schemas); no group offsets.
    """
    from confluent_kafka import TopicPartition

    out: list[tuple[int, bytes | None, bytes | None]] = []
    c = consumer(settings, throwaway_group(group_prefix))
    try:
        deadline = time.monotonic() + timeout_s
        low, high = watermarks(c, TopicPartition(topic, 0), deadline)
        start = max(start, low)
        if high <= start:
            return out
        c.assign([TopicPartition(topic, 0, start)])
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                if passed_end(c, topic, {0: high}):
                    return out
                continue
            if msg.error():
                continue
            out.append((msg.offset(), msg.key(), msg.value()))
            if msg.offset() + 1 >= high:
                return out
        raise ReadError(f"could not read {topic} to its end within {timeout_s:.0f}s")
    finally:
        c.close()


def read_all(settings: Settings, topic: str, timeout_s: float = 120.0,
             group_prefix: str = "engage-reader") -> list[tuple[int, int, int, bytes | None, bytes | None]]:
    """(partition, offset, timestamp ms, key, value) of every record of every partition of `topic`, to its end now.

    By assignment, to the end offsets taken first, so no group join can cut the read short; for the
    report and the benchmarks, which read a whole topic once.
    """
    return [(m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
            for m in read_messages(settings, topic, timeout_s=timeout_s, group_prefix=group_prefix)]


def read_messages(settings: Settings, topic: str, since_ms: int | None = None, stop=None, timeout_s: float = 120.0,
                  group_prefix: str = "engage-reader"):
    """Every record (a confluent-kafka Message) of every partition of `topic` from the first at or after `since_ms`
    (None: the first kept) to the end offsets taken at the start; `stop(timestamp ms)` true ends a partition's
    read there. Partitions interleave; each partition's records come in order. Raises ReadError past `timeout_s`."""
    from confluent_kafka import TopicPartition

    c = consumer(settings, throwaway_group(group_prefix), log_level=None)
    try:
        deadline = time.monotonic() + timeout_s
        meta = c.list_topics(topic, timeout=max(1.0, deadline - time.monotonic()))
        found = meta.topics.get(topic)
        if found is None or found.error is not None:
            raise ReadError(f"no topic {topic}")
        ranges = {p: watermarks(c, TopicPartition(topic, p), deadline) for p in found.partitions}
        starts = {p: low for p, (low, _high) in ranges.items()}
        if since_ms is not None:
            at = c.offsets_for_times([TopicPartition(topic, p, max(0, since_ms)) for p in ranges],
                                     timeout=max(1.0, deadline - time.monotonic()))
            # no record at or after since_ms: nothing to read there
            starts = {tp.partition: ranges[tp.partition][1] if tp.offset < 0 else max(tp.offset, ranges[tp.partition][0])
                      for tp in at}
        todo = {p: high for p, (_low, high) in ranges.items() if high > starts[p]}
        if not todo:
            return
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        while todo:
            if time.monotonic() >= deadline:
                raise ReadError(f"could not read {topic} to its end within {timeout_s:.0f}s")
            msg = c.poll(0.5)
            if msg is None:
                for p in passed_end(c, topic, todo):
                    todo.pop(p)
                continue
            if msg.error() or msg.partition() not in todo:
                continue
            if stop is not None and stop(msg.timestamp()[1]):
                c.pause([TopicPartition(topic, msg.partition())])
                todo.pop(msg.partition())
                continue
            yield msg
            if msg.offset() + 1 >= todo[msg.partition()]:
                todo.pop(msg.partition())
    finally:
        c.close()


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
