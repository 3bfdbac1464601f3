"""The adapter kit over fake clients: its channels only, each delivery once, expired ones reported, retries, refusals, commits after outcomes."""
from __future__ import annotations

import io
import threading

from confluent_kafka import OFFSET_END, OFFSET_INVALID, TopicPartition

from streams import topics
from streams.adapters import kit
from streams.adapters.console import Console
from streams.settings import Settings
from tests.support import wire
from tests.support.runners import FakeProducer, Message
from tests.support.stage import T0

NOW_S = T0 / 1000


class Consumer:
    def __init__(self, log: list, msgs: list[Message]):
        self.log, self.msgs, self.committed = log, list(msgs), []

    def subscribe(self, topics_, on_assign=None):
        pass

    def poll(self, timeout):
        return self.msgs.pop(0) if self.msgs else None

    def commit(self, msg, asynchronous=True):
        self.committed.append(msg.offset())
        self.log.append(("commit", msg.offset()))

    def close(self):
        pass


def delivery(n: int, channel: str = "email", expires_in_ms: int = 60_000, **over) -> dict:
    d = {"delivery_id": f"dl-{n}", "decision_id": f"dc-{n}", "key": "C1", "ts": T0, "expires_at": T0 + expires_in_ms,
         "signal_ts": T0, "visitor_id": "v1", "customer_id": "C1", "channel": channel, "action_id": "retention-mail",
         "skill": None, "message": "Hi Sara", "reason": "Searched for how to cancel", "context": {}}
    d.update(over)
    return d


class Mail(kit.Adapter):
    """A channel that refuses, or is busy for the first `busy` attempts, by delivery id."""

    name = "mail"
    channels = frozenset({"email"})

    def __init__(self, busy: int = 0, refuse: tuple = (), fault: tuple = ()):
        self.busy, self.refuse, self.fault, self.sent = busy, refuse, fault, []

    def deliver(self, d: dict) -> list[str]:
        if d["delivery_id"] in self.refuse:
            raise kit.Refused("550 no such mailbox")
        if d["delivery_id"] in self.fault:
            raise KeyError("a bug of the adapter's")
        if self.busy:
            self.busy -= 1
            raise kit.Retry("421 try again later")
        self.sent.append(d["delivery_id"])
        return ["shown"]


def _loop(tmp_path, adapter, msgs, producer_failures: int = 0, stop=None):
    log: list = []
    consumer, producer = Consumer(log, msgs), FakeProducer(log, failures=producer_failures)
    loop = kit.AdapterLoop(Settings(data_dir=tmp_path), adapter, stop=stop, consumer=consumer, producer=producer,
                           clock=lambda: NOW_S)
    loop.pauses = []
    loop.stop.wait = lambda s: loop.pauses.append(s) or loop.stop.is_set()  # no real sleeping in tests
    return loop, consumer, producer, log


def _outcomes(producer) -> list[tuple[str, str]]:
    return [(o["delivery_id"], o["type"]) for o in
            (wire.decode("Outcome", v) for t, _, _, v in producer.sent if t == "engage.outcomes")]


def _dead(producer) -> list[dict]:
    return [wire.decode("DeadLetter", v) for t, _, _, v in producer.sent if t == "engage.deadletter"]


def _msg(offset: int, d: dict | None, channel: str | None = None, raw: bytes | None = None) -> Message:
    """A record of engage.delivery with the channel header a worker sets."""
    channel = channel or (d or {}).get("channel")
    return Message("engage.delivery", 0, offset, b"C1", raw if raw is not None else wire.encode("Delivery", d),
                   [("channel", channel.encode())] if channel else None)


def test_only_its_channels_deliveries_are_delivered_and_others_are_not_even_decoded(tmp_path):
    # Given a mail adapter, and a chat delivery whose bytes are not even Avro, then a mail delivery
    adapter = Mail()
    loop, consumer, producer, _ = _loop(tmp_path, adapter, [_msg(0, None, channel="chat", raw=b"\x00not avro"),
                                                            _msg(1, delivery(1))])
    # When the adapter runs
    loop.run(max_deliveries=1)
    # Then the chat record is skipped by its header (no dead letter) and committed; the mail one is sent
    assert adapter.sent == ["dl-1"] and _dead(producer) == []
    assert _outcomes(producer) == [("dl-1", "shown")] and consumer.committed == [0, 1]


def test_a_repeated_delivery_is_delivered_once_and_an_expired_one_is_reported_not_sent(tmp_path):
    # Given the same delivery twice (a worker crashed after sending it), then one whose moment has passed
    adapter = Mail()
    msgs = [_msg(0, delivery(1)), _msg(1, delivery(1)), _msg(2, delivery(2, expires_in_ms=-1))]
    loop, consumer, producer, _ = _loop(tmp_path, adapter, msgs)
    # When the adapter has read all three
    for m in list(consumer.msgs):
        loop.handle(consumer.poll(0))
    # Then the first is sent once and reported shown, the expired one reported expired and not sent
    assert adapter.sent == ["dl-1"]
    assert _outcomes(producer) == [("dl-1", "shown"), ("dl-2", "expired")]
    assert consumer.committed == [0, 1, 2]


def test_a_busy_channel_is_tried_again_with_growing_pauses_and_a_refusal_is_dead_lettered_and_failed(tmp_path):
    # Given a channel busy for two attempts, then a delivery to an address it refuses, then a fault of the adapter's
    adapter = Mail(busy=2, refuse=("dl-2",), fault=("dl-3",))
    msgs = [_msg(0, delivery(1)), _msg(1, delivery(2)), _msg(2, delivery(3))]
    loop, consumer, producer, _ = _loop(tmp_path, adapter, msgs)
    # When the adapter reads them
    for _ in range(3):
        loop.handle(consumer.poll(0))
    # Then the first goes out on the third attempt, after pauses of 0.5 s and 1 s
    assert adapter.sent == ["dl-1"] and loop.pauses == [kit.FIRST_PAUSE_S, 2 * kit.FIRST_PAUSE_S]
    # And the refused and the faulty ones are dead-lettered with the reason and reported failed
    assert _outcomes(producer) == [("dl-1", "shown"), ("dl-2", "failed"), ("dl-3", "failed")]
    dead = _dead(producer)
    assert [d["offset"] for d in dead] == [1, 2] and "550 no such mailbox" in dead[0]["error"]
    assert dead[0]["stage"] == "adapter-mail" and dead[1]["error"].startswith("KeyError")


def test_a_channel_still_busy_after_the_last_attempt_fails_the_delivery(tmp_path):
    adapter = Mail(busy=kit.MAX_ATTEMPTS)
    loop, consumer, producer, _ = _loop(tmp_path, adapter, [_msg(0, delivery(1))])
    loop.handle(consumer.poll(0))
    assert adapter.sent == [] and len(loop.pauses) == kit.MAX_ATTEMPTS - 1
    assert _outcomes(producer) == [("dl-1", "failed")]
    assert f"after {kit.MAX_ATTEMPTS} attempts" in _dead(producer)[0]["error"]


def test_the_offset_is_committed_only_after_the_outcome_was_acked_even_when_the_broker_fails_it_first(tmp_path):
    # Given a broker that fails the first send of the outcome
    loop, consumer, producer, log = _loop(tmp_path, Mail(), [_msg(0, delivery(1))], producer_failures=1)
    # When the delivery is handled
    loop.handle(consumer.poll(0))
    # Then the outcome is sent again, and the commit comes after its ack
    assert _outcomes(producer) == [("dl-1", "shown")]
    assert log == [("acked", "engage.outcomes"), ("commit", 0)]


def test_a_stop_while_the_channel_is_busy_commits_nothing(tmp_path):
    # Given a busy channel, and the adapter asked to stop while it waits to try again
    stop = threading.Event()
    adapter = Mail(busy=1)
    loop, consumer, producer, _ = _loop(tmp_path, adapter, [_msg(0, delivery(1))], stop=stop)
    loop.stop.wait = lambda s: (stop.set(), True)[1]
    # When it runs
    loop.run()
    # Then nothing is sent or committed: the delivery is read again next time
    assert producer.sent == [] and consumer.committed == []


def test_the_console_prints_every_channels_offers_with_the_reason(tmp_path):
    out = io.StringIO()
    loop, consumer, producer, _ = _loop(tmp_path, Console(out), [_msg(0, delivery(1, channel="chat")),
                                                                 _msg(1, delivery(2, channel="voice_callback"))])
    assert loop.run(max_deliveries=2) == 2
    assert out.getvalue().count("why:      Searched for how to cancel") == 2
    assert _outcomes(producer) == [("dl-1", "shown"), ("dl-2", "shown")]
    assert {o["source"] for o in (wire.decode("Outcome", v) for t, _, _, v in producer.sent)} == {"console"}


def test_a_channel_header_is_read_as_text():
    assert kit.channel_of([("other", b"x"), ("channel", b"email")]) == "email"
    assert kit.channel_of(None) is None
    assert topics.OUTCOMES.schema == "Outcome"


class Assigning:
    """What the kit's on_assign sees of a consumer: committed offsets, offsets by time, the assignment made."""

    def __init__(self, committed: dict[int, int], by_time: dict[int, int]):
        self._committed, self.by_time, self.assigned, self.asked = committed, by_time, None, None

    def committed(self, partitions, timeout=None):
        return [TopicPartition(tp.topic, tp.partition, self._committed[tp.partition]) for tp in partitions]

    def offsets_for_times(self, partitions, timeout=None):
        self.asked = [(tp.partition, tp.offset) for tp in partitions]
        return [TopicPartition(tp.topic, tp.partition, self.by_time[tp.partition]) for tp in partitions]

    def assign(self, partitions):
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]


def test_a_new_group_starts_at_the_deliveries_made_since_the_adapter_started_not_at_the_end():
    # Given an adapter started at T0, and three partitions: one its group committed on, two it never did
    # (one with deliveries since T0 from offset 42, one with none since)
    loop = kit.AdapterLoop(Settings(), Console(io.StringIO()), consumer=Consumer([], []), producer=FakeProducer([]),
                           clock=lambda: NOW_S)
    consumer = Assigning(committed={0: 7, 1: OFFSET_INVALID, 2: OFFSET_INVALID}, by_time={1: 42, 2: -1})
    # When the partitions are assigned
    loop._on_assign(consumer, [TopicPartition("engage.delivery", p, OFFSET_INVALID) for p in range(3)])
    # Then the new ones are looked up by the adapter's start time: one starts at 42, the other at its end,
    # and the committed one where the group left it
    assert consumer.asked == [(1, T0), (2, T0)]
    assert consumer.assigned == [(0, OFFSET_INVALID), (1, 42), (2, OFFSET_END)]
