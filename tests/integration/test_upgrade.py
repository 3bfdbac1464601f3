"""A worker upgraded from a release that ran detection, the decision or the data stage as Faust agents: it goes on where that one stopped."""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams import clients
from streams.admin import ensure_topics
from tests.integration.conftest import Producer_

pytestmark = pytest.mark.integration


def _committed_by_the_apps_group(pipe, topic: str) -> None:
    """What an earlier release's app did: its own group (the app id) committed every record now on `topic`."""
    earlier = Consumer({**pipe.client_conf, "group.id": pipe.settings.app_id, "enable.auto.commit": False})
    ends = [TopicPartition(topic, p, clients.watermarks(earlier, TopicPartition(topic, p), time.monotonic() + 30)[1])
            for p in range(pipe.settings.partitions)]
    earlier.commit(offsets=ends, asynchronous=False)
    earlier.close()


def test_events_the_apps_group_committed_are_not_read_again_by_detections_own_group(new_pipeline, reader):
    # Given events an earlier release already processed: committed by the app's own group (where
    # detection ran as a Faust agent), and detection's own group has never committed
    pipe = new_pipeline(partitions=2)
    ensure_topics(pipe.settings)
    produce = Producer_(pipe)
    now = int(time.time() * 1000)
    old = f"V-old-{uuid.uuid4().hex[:6]}"
    produce.event(event_id=f"{old}-1", visitor_id=old, type_="search", ts=now, query="cancel my contract", path="/help")
    events = pipe.topic("engage.events")
    _committed_by_the_apps_group(pipe, events)
    signals = reader(pipe, "engage.signals", "Signal")
    # When the upgraded worker starts and a new visitor searches to cancel
    pipe.start_worker()
    new = f"V-new-{uuid.uuid4().hex[:6]}"
    produce.event(event_id=f"{new}-1", visitor_id=new, type_="search", ts=now + 1000, query="cancel my contract",
                  path="/help")
    # Then the new search raises its signal, and the search already processed before the upgrade raises none
    assert signals.wait_for(lambda s: s["visitor_id"] == new, timeout_s=60)
    signals.settle(3)
    assert [s for s, _ in signals.records if s["visitor_id"] == old] == []


def test_signals_the_apps_group_committed_are_not_decided_again_by_the_decision_runners_group(new_pipeline, reader):
    # Given an enriched signal an earlier release already decided: committed by the app's own group (where
    # the decision stage ran as a Faust agent), and the decision runner's group has never committed
    from streams import topics
    from tests.support.stage import enriched, signal

    pipe = new_pipeline(partitions=2)
    ensure_topics(pipe.settings)
    produce = Producer_(pipe)
    now = int(time.time() * 1000)
    old = f"V-old-{uuid.uuid4().hex[:6]}"
    sig = signal(f"sig-{old}", visitor_id=old, customer_id=None, ts=now)
    name = pipe.topic("engage.enriched")
    # engage.enriched is internal and its schema names Signal, which the independent encoder does not resolve
    produce.raw("engage.enriched", old.encode(),
                clients.codec(pipe.settings).encode(name, topics.ENRICHED.schema, enriched(sig, None)))
    _committed_by_the_apps_group(pipe, name)
    decisions = reader(pipe, "engage.decisions", "Decision")
    # When the upgraded worker starts and a new visitor searches to cancel
    pipe.start_worker()
    new = f"V-new-{uuid.uuid4().hex[:6]}"
    produce.event(event_id=f"{new}-1", visitor_id=new, type_="search", ts=now + 1000, query="cancel my contract",
                  path="/help")
    # Then the new visitor's signal is decided, and the one decided before the upgrade is not decided again
    assert decisions.wait_for(lambda d: d["visitor_id"] == new, timeout_s=60)
    decisions.settle(3)
    assert [d for d, _ in decisions.records if d["visitor_id"] == old] == []


def test_the_data_runner_goes_on_where_the_apps_group_stopped_with_the_faust_tables_state(new_pipeline, reader):
    # Given what an earlier release, with the data stage as Faust agents in the app's own group, left behind:
    # C-up's profile in the customer_to_profile table's changelog (as Faust's tables wrote it), and a
    # signal it already enriched (committed by the app's group); the data runner's group has never committed
    import json

    from streams import topics
    from streams.clients import partition_of
    from tests.support.stage import profile, signal

    pipe = new_pipeline(partitions=2)
    ensure_topics(pipe.settings)
    now = int(time.time() * 1000)
    customer = f"C-up-{uuid.uuid4().hex[:6]}"
    changelog = topics.changelog(pipe.settings.app_id, topics.CUSTOMER_TO_PROFILE)
    writer = clients.producer(pipe.settings)
    writer.produce(changelog, key=json.dumps(customer).encode(), partition=partition_of(customer, 2),
                   value=json.dumps(profile(customer, display_name="Ada")).encode())
    old = f"V-old-{uuid.uuid4().hex[:6]}"
    name = pipe.topic("engage.signals")
    writer.produce(name, key=old.encode(), partition=partition_of(old, 2),
                   value=clients.codec(pipe.settings).encode(name, topics.SIGNALS.schema,
                                                             signal(f"sig-{old}", visitor_id=old, customer_id=None,
                                                                    ts=now)))
    assert writer.flush(30) == 0
    _committed_by_the_apps_group(pipe, name)
    decisions = reader(pipe, "engage.decisions", "Decision")
    # When the upgraded worker starts and C-up, logged in, searches how to cancel
    pipe.start_worker()
    Producer_(pipe).event(event_id=f"{customer}-1", visitor_id=f"V-{customer}", customer_id=customer, type_="search",
                          ts=now + 1000, query="cancel my contract", path="/help")
    # Then C-up's signal is decided as a known customer's (joined with the profile the Faust table kept), and
    # the signal enriched before the upgrade is not enriched, so not decided, again
    assert decisions.wait_for(lambda d: d["customer_id"] == customer, timeout_s=60)
    [mine] = [d for d, _ in decisions.records if d["customer_id"] == customer]
    assert mine["known"] is True
    decisions.settle(3)
    assert [d for d, _ in decisions.records if d["visitor_id"] == old] == []
