"""Under ENGAGE_EXACTLY_ONCE a batch's outputs, state and offsets are one transaction: kills repeat nothing a reader sees."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from streams import clients, topics
from streams.runtime.runner import Record, transact
from tests.integration.conftest import Reader
from tests.integration.journeys import assert_every_signal_decided_once, assert_state_in_its_partition, stream_of_journeys

pytestmark = pytest.mark.integration
EXACTLY_ONCE = {"ENGAGE_EXACTLY_ONCE": "on"}


def _ids_once(pipe, topic: str, schema: str, field: str) -> int:
    """Every record of `topic` has an id of its own (read_committed, as every reader here); how many there are."""
    reader = Reader(pipe, topic, schema)
    try:
        reader.settle(3)
        ids = [r[field] for r, _ in reader.records]
    finally:
        reader.close()
    repeated = len(ids) - len(set(ids))
    assert repeated == 0, f"{repeated} of {len(ids)} records on {topic} repeat an id\n{pipe.logs()[-3000:]}"
    return len(ids)


def test_workers_killed_mid_stream_under_exactly_once_repeat_no_record(new_pipeline):
    # Given a worker under exactly-once processing a stream of 90 visitors' journeys
    pipe = new_pipeline(partitions=2)
    first = pipe.start_worker(state_dir="state-a", env=EXACTLY_ONCE)
    stream = stream_of_journeys(pipe, seed=31, n_visitors=90)
    events, produce = stream.events, stream.produce
    third = len(events) // 3
    produce.events(events[:third])
    # When it is killed (SIGKILL) while events come, and starts again on the same state folder,
    killer = threading.Thread(target=lambda: (time.sleep(0.3), pipe.kill(first)))
    killer.start()
    produce.events(events[third:2 * third], pause_s=0.002)
    killer.join()
    second = pipe.start_worker(state_dir="state-a", env=EXACTLY_ONCE)
    # and that one is killed too while events come, and a worker with an empty state folder takes over
    # (its tables come from the changelogs, written in transactions; what the dead one left open is
    # aborted by the coordinator after the transaction timeout)
    killer = threading.Thread(target=lambda: (time.sleep(0.3), pipe.kill(second)))
    killer.start()
    produce.events(events[2 * third:], pause_s=0.002)
    produce.advance_clocks(events[-1]["ts"] + 600_000)
    killer.join()
    pipe.start_worker(state_dir="state-b", env=EXACTLY_ONCE)
    # Then every implied signal is decided, delivered when acted on and attributed, and the groups'
    # committed offsets reach the ends of topics that end with transaction markers
    assert_every_signal_decided_once(pipe, stream.signals)
    # And no signal, decision, delivery or attribution was read twice, though batches were cut short twice
    assert _ids_once(pipe, "engage.signals", "Signal", "signal_id") == len(stream.signals)
    assert _ids_once(pipe, "engage.decisions", "Decision", "decision_id") == len(stream.signals)
    _ids_once(pipe, "engage.delivery", "Delivery", "delivery_id")
    _ids_once(pipe, "engage.attributions", "Attribution", "decision_id")
    assert_state_in_its_partition(pipe)
    # And each worker's stages fenced the producer of the same state folder before them (not a new id per start)
    ids = list((pipe.workdir / "state-a").rglob("transactional.id"))
    assert len(ids) >= 3, "each stage keeps its transactional id in its state folder"


def _raw(pipe, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record of `topic` a read_committed reader sees."""
    from confluent_kafka import Consumer

    c = Consumer({**pipe.client_conf, "group.id": f"raw-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([pipe.topic(topic)])
    out, quiet_until = [], time.monotonic() + 5
    try:
        while time.monotonic() < quiet_until:
            m = c.poll(0.2)
            if m is not None and not m.error():
                out.append((m.key(), m.value()))
    finally:
        c.close()
    return out


def test_a_send_the_broker_refuses_aborts_the_transaction_and_its_batch_goes_again(new_pipeline):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    from streams.runtime.runner import dead_letter_item
    from tests.support import wire

    # Given a dead-letter topic that takes records of 8,000 bytes at most (a reference to a record is about 4 KB), and a transactional producer
    pipe = new_pipeline(partitions=1)
    settings, codec = pipe.settings, clients.codec(pipe.settings)
    change = ConfigEntry("max.message.bytes", "8000", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic(topics.DEADLETTER.name),
                              incremental_configs=[change])
    admin = AdminClient(pipe.client_conf)
    for f in admin.incremental_alter_configs([resource]).values():
        f.result(30)
    producer = Producer({**pipe.client_conf, "transactional.id": f"test-{uuid.uuid4().hex}",
                         "transaction.timeout.ms": 10_000})
    producer.init_transactions(30)
    # When a batch of an output, the dead letter of a 20 KB record and 5,000 outputs more is handed over in one
    # transaction (the refusal may come while the records after it are still being handed to the producer)
    bad = Record(settings.topic(topics.EVENTS.name), 0, 7, b"visitor", b"x" * 20_000)
    dead = dead_letter_item(settings, codec, "detection", bad, ValueError("not an Interaction"), False)
    signals = settings.topic(topics.SIGNALS.name)
    after = [(signals, 0, b"visitor", f"output {i}".encode()) for i in range(5_000)]
    items = [(signals, 0, b"visitor", b"an output"), dead, *after]
    give_up = threading.Event()
    timer = threading.Timer(60, give_up.set)  # a transaction sent again for good ends the test (Stopped)
    timer.start()
    try:
        offsets = transact(producer, items, {}, None, give_up, codec, "test")
    finally:
        timer.cancel()
    # Then the refused dead letter aborted the first transaction and the second carried it as a reference
    assert all(o is not None and o >= 0 for o in offsets), offsets
    letters = _raw(pipe, "engage.deadletter")
    assert len(letters) == 1, "the aborted transaction's dead letter is never read"
    letter = wire.decode("DeadLetter", letters[0][1])
    assert letter["truncated"] is True and letter["value_length"] == 20_000 and letter["offset"] == 7
    # And the outputs of the aborted transaction are read once each, in order, from the one that was committed
    assert _raw(pipe, "engage.signals") == [(b"visitor", b"an output")] + [(k, v) for _t, _p, k, v in after]
