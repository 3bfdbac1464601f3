"""A runner's consumer and producer, faked: what it sends, in which order, and what it commits, without a broker."""
from __future__ import annotations


class FakeProducer:
    """Takes records; a flush acks them (offsets per topic and partition), but fails the first `failures` of them."""

    def __init__(self, log: list, failures: int = 0):
        self.log, self.failures = log, failures
        self.queue: list = []
        self.sent: list[tuple[str, int | None, bytes | None, bytes | None]] = []
        self.next_offset: dict = {}
        self.headers: list[dict] = []  # of each record in `sent`
        self._queued_headers: list[dict] = []
        self.rounds: list[list[str]] = []  # the topics of each flush's records: one round of acks each

    def produce(self, topic, value=None, key=None, on_delivery=None, partition=None, headers=None):
        self.queue.append((topic, partition, key, value, on_delivery))
        self._queued_headers.append(dict(headers or []))

    def poll(self, timeout=0):
        return 0

    def flush(self, timeout=None):
        if self.queue:
            self.rounds.append([q[0] for q in self.queue])
        for (topic, partition, key, value, cb), headers in zip(self.queue, self._queued_headers):
            if self.failures:
                self.failures -= 1
                cb("broker down", None)
                continue
            p = 0 if partition is None else partition
            offset = self.next_offset.get((topic, p), 0)
            self.next_offset[(topic, p)] = offset + 1
            self.sent.append((topic, partition, key, value))
            self.headers.append(headers)
            self.log.append(("acked", topic))
            if cb is not None:
                cb(None, _Msg(offset))
        self.queue.clear()
        self._queued_headers.clear()
        return 0


class _Msg:
    def __init__(self, offset):
        self._offset = offset

    def offset(self):
        return self._offset


class Message:
    """A confluent-kafka Message as a consumer returns it."""

    def __init__(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, headers=None):
        self._t, self._p, self._o, self._k, self._v, self._h = topic, partition, offset, key, value, headers

    def error(self):
        return None

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def key(self):
        return self._k

    def value(self):
        return self._v

    def headers(self):
        return self._h


class FakeConsumer:
    def __init__(self, log: list):
        self.log = log
        self.commits: list[dict] = []

    def commit(self, offsets=None, asynchronous=True):
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self.log.append(("commit", None))


def after_decision(tmp_path, actions=None, **settings_over):
    """The after-decision runner (delivery, attribution, learning) on the test actions, over the fakes."""
    from streams import clients
    from streams.after_decision import build_runner
    from streams.rules.book import RuleBook
    from streams.settings import Settings
    from tests.support.stage import ACTIONS

    settings = Settings(data_dir=tmp_path / "state", **settings_over)
    runner = build_runner(settings, clients.codec(settings), RuleBook(actions or ACTIONS))
    runner.log = []
    runner.consumer, runner.producer = FakeConsumer(runner.log), FakeProducer(runner.log)
    return runner


def feed(runner, records) -> None:
    """One batch of (topic, key, value bytes[, partition]) records, offsets counted per topic and partition, handed
    over as the runner's loop does when nothing more is waiting (see `handed`)."""
    from streams.runtime.runner import Record

    batch = []
    for topic, key, value, *rest in records:
        p = rest[0] if rest else 0
        offset = runner.__dict__.setdefault("_offsets", {}).get((topic, p), 0)
        runner._offsets[(topic, p)] = offset + 1
        batch.append(Record(topic, p, offset, key, value))
    handed(runner, batch)


def sent(runner, spec) -> list[tuple[bytes | None, dict | None, dict]]:
    """(key, decoded record, headers) of what the runner sent to `spec`'s topic, in order."""
    from tests.support import wire

    name = runner.settings.topic(spec.name)
    return [(key, None if value is None else wire.decode(spec.schema, value), headers)
            for (topic, _, key, value), headers in zip(runner.producer.sent, runner.producer.headers) if topic == name]


class DecisionStage:
    """The decision runner (decide, contact ledger, pacer) over the fakes: records in as raw bytes, one batch
    each unless fed together; what it sends decoded again with the contract's schema."""

    def __init__(self, tmp_path, actions=None, explore: bool = False, models=None):
        from streams import clients
        from streams.decision.agent import build_runner
        from streams.decision.models import ModelBook
        from streams.rules.book import RuleBook
        from streams.settings import Settings
        from tests.support.stage import ACTIONS

        settings = Settings(data_dir=tmp_path / "state", explore=explore)
        self.codec = clients.codec(settings)
        self.runner = build_runner(settings, self.codec, actions if isinstance(actions, RuleBook)
                                   else RuleBook(actions or ACTIONS), models or ModelBook())
        self.runner.log = []
        self.runner.consumer, self.runner.producer = FakeConsumer(self.runner.log), FakeProducer(self.runner.log)

    def encode(self, spec, record: dict) -> bytes:
        return self.codec.encode(self.runner.settings.topic(spec.name), spec.schema, record)

    def put(self, topic: str, key: bytes | None, value: bytes | None, partition: int = 0) -> int:
        """One record as its own batch; returns its offset."""
        offset = self.runner.__dict__.setdefault("_offsets", {}).get((topic, partition), 0)
        feed(self.runner, [(topic, key, value, partition)])
        return offset

    def out(self, spec) -> list[tuple[bytes | None, dict | None, dict]]:
        return sent(self.runner, spec)

    def decided(self) -> list[tuple[bytes, dict, str]]:
        """Every decision made, in order, as (key, decision, where it went): offers that need an agent go to
        their skill's pacer (engage.pacing, keyed by skill), the others to engage.decisions."""
        from streams import topics
        from tests.support import wire

        out = []
        for topic, _, key, value in self.runner.producer.sent:
            if topic == topics.DECISIONS.name:
                out.append((key, wire.decode(topics.DECISIONS.schema, value), topic))
            elif topic == topics.PACING.name:  # internal; its schema names Decision, which wire does not resolve
                rec = self.codec.decode(topic, topics.PACING.schema, value)
                if rec["kind"] == "candidate":
                    out.append((key, rec["decision"], topic))
        return out

    def stored(self, table: str, key: str, partition: int = 0):
        """`key`'s value in `table` as written to RocksDB (after the batch's outputs were acked)."""
        from streams.runtime.values import decode

        return decode(self.runner.stores.open(partition).get(table, key))

    def ledger(self, key: str, partition: int = 0) -> dict | None:
        from streams import topics

        return self.stored(topics.CUSTOMER_TO_CONTACTS, key, partition)


class DataStage:
    """The data runner (re-keying, identity, joins, journeys, merges, forgetting) over the fakes: records in as
    raw bytes, one batch each unless fed together; what it sends decoded again with the contract's schema."""

    def __init__(self, tmp_path, customers=None, segments=None, **settings):
        from streams import clients
        from streams.data.agent import build_runner
        from streams.data.customer_rules import CustomerRuleSet
        from streams.rules.book import RuleBook
        from streams.settings import Settings
        from tests.support.stage import SEGMENTS

        settings = Settings(data_dir=tmp_path / "state", **settings)
        self.codec = clients.codec(settings)
        customers = customers or CustomerRuleSet(name="customer", version="none", rules=())
        self.runner = build_runner(settings, self.codec, segments if isinstance(segments, RuleBook)
                                   else RuleBook(segments or SEGMENTS),
                                   customers if isinstance(customers, RuleBook) else RuleBook(customers))
        self.runner.log = []
        self.runner.consumer, self.runner.producer = FakeConsumer(self.runner.log), FakeProducer(self.runner.log)

    def encode(self, spec, record: dict) -> bytes:
        return self.codec.encode(self.runner.settings.topic(spec.name), spec.schema, record)

    def put(self, spec, key: bytes | str | None, record: dict | bytes | None, partition: int = 0) -> int:
        """One record of `spec` as its own batch (a dict is encoded with the topic's schema; None: a tombstone);
        returns its offset."""
        topic = self.runner.settings.topic(spec.name)
        offset = self.runner.__dict__.setdefault("_offsets", {}).get((topic, partition), 0)
        value = self.encode(spec, record) if isinstance(record, dict) else record
        feed(self.runner, [(topic, key.encode() if isinstance(key, str) else key, value, partition)])
        return offset

    def out(self, spec) -> list[tuple[bytes | None, dict | None, dict]]:
        """(key, decoded record, headers) of what the runner sent to `spec`'s topic, in order."""
        name = self.runner.settings.topic(spec.name)
        return [(key, None if value is None else self.codec.decode(name, spec.schema, value), headers)
                for (topic, _, key, value), headers in zip(self.runner.producer.sent, self.runner.producer.headers)
                if topic == name]

    def changelog(self, table: str) -> list[tuple[str, object]]:
        """(key, value or None for a deletion) of what went to `table`'s changelog, in order."""
        import json

        from streams.runtime.values import decode

        name = self.runner.changelog[table]
        return [(json.loads(key), decode(value))
                for topic, _, key, value in self.runner.producer.sent if topic == name]

    def stored(self, table: str, key: str, partition: int = 0):
        """`key`'s value in `table` as written to RocksDB (after the batch's outputs were acked)."""
        from streams.runtime.values import decode

        return decode(self.runner.stores.open(partition).get(table, key))


def handed(runner, records) -> None:
    """A batch as a runner's loop hands it over when nothing more is waiting: processed (its outputs acked), its held
    state released (the changelog acked, then RocksDB), then the commit if one is due."""
    import time

    runner.process(records)
    runner.release_held()
    runner._commit_due(time.monotonic())
