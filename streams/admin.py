"""Decides how the engine's topics are created on a cluster: partitions, replication, compaction."""
from __future__ import annotations

import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from streams import clients, topics
from streams.settings import Settings


class KafkaUnavailable(RuntimeError):
    """No broker answered at the configured bootstrap servers."""


class CredentialsRefused(KafkaUnavailable):
    """The brokers answered and refused the credentials: waiting longer does not help."""


def wait_for_broker(settings: Settings, timeout_s: float = 60.0) -> None:
    """Return once an admin call succeeds; raise KafkaUnavailable after timeout_s, or at once if the
    brokers refuse the credentials (that does not pass by waiting)."""
    refused: list = []

    def on_error(err) -> None:
        if err.code() == KafkaError._AUTHENTICATION:
            refused.append(err)

    # quiet: refused connections are expected while a broker starts; this reports the outcome
    admin = clients.admin(settings, quiet=True, error_cb=on_error)
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        admin.poll(0)  # serves error_cb
        if refused:
            sec = settings.security
            raise CredentialsRefused(f"the brokers at {settings.bootstrap_servers} refused user {sec.sasl_username!r} "
                                   f"({sec.protocol}, {sec.sasl_mechanism}): {refused[0].str()}")
        try:
            # short calls, so a refusal of the credentials (reported between them) stops the wait soon
            md = admin.list_topics(timeout=min(2.0, max(0.5, deadline - time.monotonic())))
            if md.brokers:
                return
        except KafkaException as exc:
            last = exc
        time.sleep(0.5)
    raise KafkaUnavailable(f"no Kafka broker answered at {settings.bootstrap_servers} within {timeout_s:.0f}s"
                           + (f" ({last})" if last else ""))


def _wanted_topics(settings: Settings) -> dict[str, NewTopic]:
    """Every topic the engine needs, by name: the contract's topics and the tables' changelogs."""
    wanted = {}
    for spec in topics.ALL:
        config = {"cleanup.policy": "compact"} if spec.compacted else {}
        config.update(dict(spec.config))
        name = settings.topic(spec.name)
        wanted[name] = NewTopic(name, num_partitions=spec.partitions or settings.partitions,
                                replication_factor=settings.replication, config=config)
    for table in topics.TABLES:
        name = topics.changelog(settings.app_id, table)
        wanted[name] = NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.replication,
                                config={"cleanup.policy": "compact"})
    return wanted


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create every missing topic; returns the names created. Existing topics are left alone."""
    admin = clients.admin(settings)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = _wanted_topics(settings)
    missing = [topic for name, topic in wanted.items() if name not in existing]
    created = []
    if missing:
        for name, fut in admin.create_topics(missing, operation_timeout=timeout_s).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: another worker won the race
                    raise
    # wait until metadata shows them with a leader for every partition, so producers and readers
    # started right after do not race creation (a fresh partition answers NOT_LEADER for a moment)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not _all_led(admin.list_topics(timeout=5).topics, wanted):
        time.sleep(0.2)
    return created


def _all_led(found: dict, wanted: dict) -> bool:
    """Every wanted topic is in the metadata, and each of its partitions has a leader."""
    for name in wanted:
        meta = found.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            return False
        if any(part.leader < 0 or part.error is not None for part in meta.partitions.values()):
            return False
    return True
