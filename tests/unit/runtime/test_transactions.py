"""Under exactly-once, what a batch's transaction does with each kind of failure: ask again, abort and resend, or start the stage again."""
import threading

import pytest
from confluent_kafka import KafkaError, KafkaException

from streams.runtime import runner as runner_module
from streams.runtime.runner import Stopped, TransactionFailed, transact
from streams.settings import Settings


class FakeProducer:
    """A transactional producer whose calls fail as scripted: `fail[name]` is a list of errors raised in turn."""

    def __init__(self, **fail):
        self.fail = {k: list(v) for k, v in fail.items()}
        self.calls: list[str] = []
        self.sent: list[tuple] = []
        self.committed: list[list] = []
        self._open: list[tuple] = []
        self._acks: list = []

    def _call(self, name):
        self.calls.append(name)
        errors = self.fail.get(name)
        if errors:
            raise KafkaException(errors.pop(0))

    def begin_transaction(self):
        self._call("begin")
        self._open, self._acks = [], []

    def produce(self, topic, value=None, key=None, on_delivery=None, **kw):
        self._open.append((topic, key, value))
        self._acks.append(on_delivery)

    def send_offsets_to_transaction(self, offsets, metadata, timeout):
        self._call("send_offsets")
        self._offsets = [(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def commit_transaction(self, timeout):
        self._call("commit")
        for i, ack in enumerate(self._acks):
            ack(None, _Msg(len(self.sent) + i))
        self.sent += self._open
        self.committed.append(getattr(self, "_offsets", []))

    def abort_transaction(self, timeout):
        self._call("abort")
        self._open = []

    def poll(self, timeout=0):
        return 0


class RefusingProducer(FakeProducer):
    """The broker refuses the first send of records over `limit` bytes; the transaction then takes no more records
    (librdkafka's _STATE), the failed send's report comes, and the abort purges the rest of the batch."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.failed = limit, False

    def produce(self, topic, value=None, key=None, on_delivery=None, **kw):
        if self.failed:
            raise KafkaException(KafkaError(KafkaError._STATE, "Operation not valid in state AbortableError"))
        if len(value or b"") > self.limit:
            self.failed = True
            self._refused = on_delivery
            return
        super().produce(topic, value=value, key=key, on_delivery=on_delivery, **kw)

    def abort_transaction(self, timeout):
        super().abort_transaction(timeout)
        for ack in self._acks:  # what was queued is purged
            ack(KafkaError(KafkaError._PURGE_QUEUE, "purged"), None)
        self._refused(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large"), None)
        self.failed = False


class _Msg:
    def __init__(self, offset):
        self._offset = offset

    def offset(self):
        return self._offset


def abortable(code=KafkaError._MSG_TIMED_OUT):
    return KafkaError(code, "failed", txn_requires_abort=True)


ITEMS = [("engage.signals", 0, b"v", b"out"), ("engage-visitor-changelog", 0, b"v", b"state")]
OFFSETS = {("engage.events", 0): 42}


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setattr(runner_module.threading.Event, "wait", lambda self, t=None: self.is_set())


def test_a_retriable_commit_is_asked_again_and_the_batch_is_committed_once():
    # Given a commit the coordinator times out once (retriable)
    producer = FakeProducer(commit=[KafkaError(KafkaError._TIMED_OUT, "slow", retriable=True)])
    # When a batch is handed over
    offsets = transact(producer, list(ITEMS), OFFSETS, lambda: "group", threading.Event(), None, "test")
    # Then the commit is asked again, nothing is aborted, and the records and offsets are committed once
    assert producer.calls == ["begin", "send_offsets", "commit", "commit"]
    assert producer.sent == [("engage.signals", b"v", b"out"), ("engage-visitor-changelog", b"v", b"state")]
    assert producer.committed == [[("engage.events", 0, 42)]] and offsets == [0, 1]


def test_a_transaction_that_must_be_aborted_is_sent_again_whole_in_a_new_one():
    # Given a send that times out (the broker away past the transaction timeout): the transaction must be aborted
    producer = FakeProducer(commit=[abortable()])
    aborted, committed = _count("aborted"), _count("committed")
    # When a batch is handed over
    transact(producer, list(ITEMS), OFFSETS, lambda: "group", threading.Event(), None, "test")
    # Then it is aborted and the same records and offsets go again in a new transaction, committed once
    assert producer.calls == ["begin", "send_offsets", "commit", "abort", "begin", "send_offsets", "commit"]
    assert len(producer.sent) == 2 and producer.committed == [[("engage.events", 0, 42)]]
    # and the stage's metrics count one aborted and one committed transaction
    assert (_count("aborted") - aborted, _count("committed") - committed) == (1, 1)


def _count(result: str) -> float:
    from streams import metrics

    return metrics.m().transactions.labels("test", result)._value.get()


@pytest.mark.parametrize("code", [KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID,
                                  KafkaError.REBALANCE_IN_PROGRESS])
def test_offsets_refused_because_the_group_moved_on_start_the_stage_again(code):
    # Given a group that rebalanced while the batch was worked on: its offsets are refused for this generation
    producer = FakeProducer(send_offsets=[abortable(code)])
    # When the batch is handed over, Then nothing is committed and the stage is told to start again (its memory
    # may be ahead of what is committed, and the partitions may be another worker's now)
    with pytest.raises(TransactionFailed, match="transaction refused"):
        transact(producer, list(ITEMS), OFFSETS, lambda: "group", threading.Event(), None, "test")
    assert producer.committed == []


def test_a_fenced_producer_starts_the_stage_again():
    # Given another producer with this transactional id (a second process on the same state folder)
    producer = FakeProducer(commit=[KafkaError(KafkaError._FENCED, "fenced", fatal=True)])
    with pytest.raises(TransactionFailed):
        transact(producer, list(ITEMS), OFFSETS, lambda: "group", threading.Event(), None, "test")
    assert producer.committed == []


def test_a_stage_asked_to_stop_while_the_broker_is_away_aborts_and_stops():
    # Given a commit that keeps timing out, and a stage asked to stop
    producer = FakeProducer(commit=[KafkaError(KafkaError._TIMED_OUT, "away", retriable=True)] * 5)
    stop = threading.Event()
    stop.set()
    # When a batch is handed over, Then it stops with the transaction aborted, nothing committed
    with pytest.raises(Stopped):
        transact(producer, list(ITEMS), OFFSETS, lambda: "group", stop, None, "test")
    assert producer.calls[-1] == "abort" and producer.committed == []


def test_exactly_once_is_a_switch_and_off_by_default():
    assert Settings.from_env({}).exactly_once is False
    assert Settings.from_env({"ENGAGE_EXACTLY_ONCE": "on"}).exactly_once is True
    with pytest.raises(ValueError, match="ENGAGE_EXACTLY_ONCE must be on or off"):
        Settings.from_env({"ENGAGE_EXACTLY_ONCE": "sometimes"})


def test_a_stage_keeps_its_transactional_id_in_its_state_folder(tmp_path):
    from tests.support.runners import after_decision

    # Given a stage on a state folder, Then its transactional id is its group's and the same when it starts again
    first = after_decision(tmp_path).transactional_id()
    assert first.startswith("engage-") and first == after_decision(tmp_path).transactional_id()
    # and a stage on another folder has another
    assert after_decision(tmp_path / "other").transactional_id() != first


def test_a_dead_workers_open_transaction_ends_no_later_than_its_partitions_move():
    from streams.runtime.runner import transaction_timeout_ms

    # Given the default session timeout (45 s), Then transactions time out after Kafka Streams' 10 s
    assert transaction_timeout_ms(Settings()) == 10_000
    # Given 6 s sessions, Then after 6 s: the readers of a dead worker's partitions wait no longer than the move
    assert transaction_timeout_ms(Settings(session_timeout_ms=6_000)) == 6_000


def test_a_transaction_that_cannot_even_be_aborted_starts_the_stage_again():
    # Given a send that timed out, and a producer the coordinator fenced meanwhile (it ended the transaction itself)
    producer = FakeProducer(commit=[abortable()], abort=[KafkaError(KafkaError._FENCED, "fenced", fatal=True)])
    # When the batch is handed over, Then the stage starts again, nothing committed
    with pytest.raises(TransactionFailed, match="not aborted"):
        transact(producer, list(ITEMS), OFFSETS, lambda: "group", threading.Event(), None, "test")
    assert producer.committed == []


def test_a_refused_dead_letter_mid_batch_aborts_and_only_it_goes_again_as_a_reference():
    from streams import clients, topics
    from streams.runtime.runner import Record, dead_letter_item

    # Given a batch with a dead letter of a 20 KB record the broker refuses, between two others, and a dead letter
    # of a small record after it (purged with the aborted transaction, not refused)
    settings = Settings()
    codec = clients.codec(settings)
    events = settings.topic(topics.EVENTS.name)
    big = dead_letter_item(settings, codec, "detection", Record(events, 0, 7, b"v", b"x" * 20_000), ValueError("bad"), False)
    small = dead_letter_item(settings, codec, "detection", Record(events, 0, 8, b"v", b"y"), ValueError("bad"), False)
    items = [ITEMS[0], big, ITEMS[1], small]
    producer = RefusingProducer(limit=8_000)
    # When it is handed over
    transact(producer, items, OFFSETS, lambda: "group", threading.Event(), codec, "test")
    # Then the first transaction is aborted (the records after the refusal were not taken) and the second commits
    # every record, the refused dead letter as a reference and the purged one whole, with the offsets, once
    assert producer.calls == ["begin", "abort", "begin", "send_offsets", "commit"]
    assert producer.committed == [[("engage.events", 0, 42)]] and len(producer.sent) == 4
    sent = {(t, k): v for t, k, v in producer.sent}
    assert items[1][4]["truncated"] is True and len(items[1][3]) < 8_000
    assert items[3][4]["truncated"] is False and items[3][4]["value"] == b"y"
    assert len(sent) == 3  # both dead letters share topic and key: the last one kept in this view
