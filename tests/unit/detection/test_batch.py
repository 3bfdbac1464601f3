"""Detection in batches gives what it gives one record at a time, writes each key once, and leaves a faulty record out."""
from __future__ import annotations

import json
import random
from types import SimpleNamespace

from streams import topics
from streams.codec import DecodeError
from streams.detection import encoding
from streams.detection.batch import EVENT, TICK, run_batch
from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.rules import load_detection
from streams.detection.state import Timer
from streams.settings import REPO_ROOT
from streams.tools.simulator import Traffic

RULES = load_detection(REPO_ROOT / "rules" / "detection.yaml")


class CountingStore(dict):
    """A table that counts the writes each key gets."""

    def __init__(self):
        super().__init__()
        self.writes: dict[str, int] = {}

    def __setitem__(self, key, value):
        self.writes[key] = self.writes.get(key, 0) + 1
        super().__setitem__(key, value)


def traffic(n: int, seed: int = 5) -> list:
    ts = iter(range(1_700_000_000_000, 1_800_000_000_000, 400))
    evs = list(Traffic(seed=seed, customers=60, now_ms=lambda: next(ts)).events(n))
    return [SimpleNamespace(partition=hash(ev["visitor_id"]) % 2, value=ev) for ev in evs]


def read(msg):
    if msg.value == "garbage":
        raise DecodeError("not Avro")
    if "idle_ms" in msg.value:
        return TICK, msg.value
    return EVENT, msg.value


def run(messages, sizes, detector=None, stores=None):
    detector = detector or Detector(lambda: RULES)
    visitors, timers = stores or (CountingStore(), CountingStore())
    outputs, rejected, i = [], [], 0
    while i < len(messages):
        n = sizes()
        batch = run_batch(detector, lambda: Tx(visitors, timers), messages[i:i + n], read)
        outputs += batch.outputs
        rejected += [(i + j, fault) for j, _, fault in batch.rejected]
        batch.tx.apply()
        i += n
    return outputs, rejected, visitors, timers


def test_batches_of_any_size_give_the_signals_and_state_of_one_record_at_a_time():
    # Given simulated traffic over two partitions, with an idle tick in it
    messages = traffic(3000)
    messages.insert(1500, SimpleNamespace(partition=0, value={"partition": 0, "idle_ms": 600_000}))
    # When it is run one record at a time, and in batches of random sizes
    one, _, v1, t1 = run(messages, lambda: 1)
    rng = random.Random(3)
    many, _, v2, t2 = run(messages, lambda: rng.randint(1, 400))
    # Then the same signals come out in the same order, with the same ids, and the same state is left
    assert [(o[0].name, o[1], o[2]["signal_id"] if o[0] is topics.SIGNALS else o[2]["event_id"]) for o in one] == \
        [(o[0].name, o[1], o[2]["signal_id"] if o[0] is topics.SIGNALS else o[2]["event_id"]) for o in many]
    assert any(o[0] is topics.SIGNALS for o in one)
    assert json.dumps(v1, sort_keys=True, default=list) == json.dumps(v2, sort_keys=True, default=list)
    assert json.dumps(t1, sort_keys=True) == json.dumps(t2, sort_keys=True)


def test_a_batch_writes_each_key_once():
    # Given 500 events of a few visitors, on two partitions
    messages = traffic(500)
    # When they are one batch
    _, _, visitors, timers = run(messages, lambda: 500)
    # Then every visitor's state and every partition's clock was written once, not once per event
    assert visitors and max(visitors.writes.values()) == 1
    assert timers.writes["0:clock"] == 1 and timers.writes["1:clock"] == 1
    # And one record at a time writes the clock whenever an event changes it (new visitors, timers)
    _, _, _, per_event = run(messages, lambda: 1)
    assert per_event.writes["0:clock"] + per_event.writes["1:clock"] > 20


def test_a_fault_mid_batch_leaves_that_record_out_and_the_others_as_without_it(monkeypatch):
    # Given a batch in which one event meets a fault of ours after it changed the visitor's state
    messages = traffic(400)
    boom = messages[200].value["event_id"]
    detector = Detector(lambda: RULES)
    real = detector.on_event

    def on_event(tx, partition, ev):
        result = real(tx, partition, ev)
        if ev["event_id"] == boom:
            raise RuntimeError("bug")
        return result

    monkeypatch.setattr(detector, "on_event", on_event)
    # When the batch runs
    outputs, rejected, visitors, timers = run(messages, lambda: 400, detector=detector)
    # Then that record is rejected as a fault, and the rest gives exactly what the batch without it gives
    assert rejected == [(200, True)]
    expected, _, v2, t2 = run(messages[:200] + messages[201:], lambda: 400)
    assert [o[2] for o in outputs] == [o[2] for o in expected]
    assert json.dumps(visitors, sort_keys=True, default=list) == json.dumps(v2, sort_keys=True, default=list)
    assert json.dumps(timers, sort_keys=True) == json.dumps(t2, sort_keys=True)


def test_bad_input_in_a_batch_is_rejected_and_the_rest_processed():
    # Given a batch with an undecodable record and an event breaking the contract
    messages = traffic(50)
    messages.insert(10, SimpleNamespace(partition=0, value="garbage"))
    messages.insert(20, SimpleNamespace(partition=0, value={**messages[20].value, "ts": -5}))
    # When it runs, then both are rejected as bad input, not as faults
    outputs, rejected, _, _ = run(messages, lambda: 100)
    assert rejected == [(10, False), (20, False)]
    # And the other records give what they give without them
    expected, _, _, _ = run([m for i, m in enumerate(messages) if i not in (10, 20)], lambda: 100)
    assert [o[2] for o in outputs] == [o[2] for o in expected]


def test_state_is_stored_as_msgpack_and_json_written_by_earlier_releases_still_reads():
    # Given a visitor's state with a pending timer
    state = {"c": None, "t": [Timer(5, "r", "h", "absent", 1, "e1", [{"event_id": "e1"}])], "seen": {"e1": 1}}
    # When it is encoded, then it is MessagePack, smaller than JSON, and reads back as the JSON form
    data = encoding.encode(state)
    as_json = json.dumps(state).encode()
    assert data[0] >= 0x80 and len(data) < len(as_json)
    assert encoding.decode(data) == json.loads(as_json)
    # And JSON an earlier release stored reads the same
    assert encoding.decode(as_json) == json.loads(as_json)
    assert encoding.decode(b"[[1, \"v1\"]]") == [[1, "v1"]] and encoding.decode(None) is None


def test_the_encoded_table_reads_and_writes_values_as_bytes():
    table = {"old": json.dumps({"n": 1}).encode()}
    enc = encoding.Encoded(table)
    enc["new"] = {"n": 2}
    assert isinstance(table["new"], bytes) and enc.get("new") == {"n": 2} and enc.get("old") == {"n": 1}
    enc.pop("old")
    assert enc.get("old") is None and enc.get("missing") is None


def test_every_write_of_a_batch_goes_to_the_partition_of_the_record_that_made_it():
    # Given a batch over two partitions, with the visitors of each on its own partition
    messages = traffic(600)
    partition_of = {m.value["visitor_id"]: m.partition for m in messages}
    # When it runs and is applied, noting the partition the agent is pointed at for each write
    entered, written, current = [], [], {}

    class Noting(dict):
        def __setitem__(self, key, value):
            written.append((key, current["p"]))
            super().__setitem__(key, value)

    batch = run_batch(Detector(lambda: RULES), lambda: Tx(Noting(), Noting()), messages, read, enter=entered.append)
    batch.tx.apply(enter=lambda p: current.update(p=p))
    # Then each record was entered in order, and each key was written in its own partition
    assert entered == list(range(len(messages)))
    assert written and all(p == (int(k.split(":")[0]) if ":" in k else partition_of[k]) for k, p in written)


def test_a_failed_login_goes_to_the_journey_of_the_customer_known_on_the_device_and_nowhere_else():
    # Given a device on which C7 logged in, and another nobody logged in on
    t = 1_700_000_000_000
    ev = lambda i, visitor, type_, customer=None: SimpleNamespace(partition=0, value={  # noqa: E731
        "event_id": f"e{i}", "ts": t + i * 1000, "visitor_id": visitor, "customer_id": customer, "channel": "app",
        "type": type_, "path": "/account/login", "query": None, "value": None, "attributes": {}})
    messages = [ev(1, "phone", "login", "C7"), ev(2, "phone", "login_failed"), ev(3, "kiosk", "login_failed")]
    # When detection reads a failed login on each
    outputs, rejected, _, _ = run(messages, lambda: 3)
    # Then the known device's goes, as a step, to C7's journey; the unknown device's nowhere; no conversion either
    moves = [(key, rec) for spec, key, rec in outputs if spec is topics.JOURNEY_MOVES]
    assert moves == [("C7", {"key": "C7", "from_key": "phone", "hops": 0, "steps": [
        {"ts": t + 2000, "channel": "app", "kind": "login_failed", "text": "/account/login", "ref": "e2"}]})]
    assert not [o for o in outputs if o[0] is topics.CONVERSIONS] and rejected == []
