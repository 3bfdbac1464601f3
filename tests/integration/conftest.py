"""Broker-backed fixtures: a real Kafka (KAFKA_BOOTSTRAP_SERVERS, else testcontainers when a Docker
engine answers, else a local KRaft broker from Maven Central jars) and real worker processes."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streams import after_decision, clients
from streams.admin import ensure_topics
from streams.settings import REPO_ROOT, KafkaSecurity, Settings
from tests.support import wire

pytestmark = pytest.mark.integration


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no permission: all mean "no Docker"
        return False


CONTEXT_TOKEN = "test-token-" + uuid.uuid4().hex


def _free_ports(n: int) -> int:
    """The first of `n` consecutive free ports on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port + n > 65000:
            continue
        taken = []
        try:
            for i in range(1, n):
                b = socket.socket()
                taken.append(b)
                b.bind(("127.0.0.1", port + i))
            return port
        except OSError:
            continue
        finally:
            for b in taken:
                b.close()
    raise RuntimeError(f"no {n} free consecutive ports on 127.0.0.1")


@dataclass(frozen=True)
class KafkaUnderTest:
    bootstrap: str
    # the environment that makes every client authenticate on the broker's SASL listener; None when the
    # broker was given (KAFKA_BOOTSTRAP_SERVERS) or is a container, whose listeners are not ours to set
    sasl_env: dict | None = None


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        yield KafkaUnderTest(given)
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.7.1") as container:
            yield KafkaUnderTest(container.get_bootstrap_server())
        return
    from streams.tools import localkafka

    user, password = "engage-test", uuid.uuid4().hex
    broker = localkafka.LocalBroker(port=_free_ports(3), data_dir=tmp_path_factory.mktemp("kafka"),
                                    sasl_users=((user, password),))
    localkafka.up(broker)
    try:
        yield KafkaUnderTest(broker.bootstrap, {"KAFKA_BOOTSTRAP_SERVERS": broker.sasl_bootstrap,
                                           "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
                                           "KAFKA_SASL_USERNAME": user, "KAFKA_SASL_PASSWORD": password})
    finally:
        localkafka.down(broker)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka) -> str:
    return kafka.bootstrap


@dataclass
class Pipeline:
    """One isolated deployment: its own topic prefix, consumer group and state folder."""

    settings: Settings
    workdir: Path
    workers: list = field(default_factory=list)
    security_env: dict = field(default_factory=dict)  # KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* for the workers
    extra_env: dict = field(default_factory=dict)  # settings of this test's workers, e.g. ENGAGE_PACING_HOLD
    http_ports: list = field(default_factory=list)  # each started worker's context service port (its slot 0)

    @property
    def client_conf(self) -> dict:
        """How the test's own clients connect: written out here, not taken from the code under test."""
        conf = {"bootstrap.servers": self.settings.bootstrap_servers}
        if self.security_env:
            env = self.security_env
            conf.update({"security.protocol": env["KAFKA_SECURITY_PROTOCOL"], "sasl.mechanisms": env["KAFKA_SASL_MECHANISM"],
                         "sasl.username": env["KAFKA_SASL_USERNAME"], "sasl.password": env["KAFKA_SASL_PASSWORD"]})
        return conf

    @property
    def env(self) -> dict:
        return {**os.environ, **self.security_env, "KAFKA_BOOTSTRAP_SERVERS": self.settings.bootstrap_servers,
                "ENGAGE_TOPIC_PREFIX": self.settings.topic_prefix, "ENGAGE_APP_ID": self.settings.app_id,
                "ENGAGE_PARTITIONS": str(self.settings.partitions),
                # a killed worker's partitions move on after 10 s, not the default 45 s
                "ENGAGE_SESSION_TIMEOUT": "10s",
                # the scenarios check each gate exactly: scores are the model's means (exploration is
                # checked by the tests that are about it)
                "ENGAGE_EXPLORE": "off",
                # the workers' logs are kept in the test folder; ENGAGE_TEST_LOG_LEVEL=info shows rebalances
                "ENGAGE_LOG_LEVEL": os.environ.get("ENGAGE_TEST_LOG_LEVEL", "warning"),
                "ENGAGE_CONTEXT_TOKEN": CONTEXT_TOKEN, **self.extra_env}

    def topic(self, name: str) -> str:
        return self.settings.topic(name)

    def start_worker(self, state_dir: str = "state", members: int = 1, env: dict | None = None) -> subprocess.Popen:
        # the context service of each worker on ports of its own (workers sharing a state folder take the next ones)
        port = _free_ports(4)
        env = {**self.env, "ENGAGE_DATA_DIR": str(self.workdir / state_dir), "ENGAGE_HTTP_PORT": str(port), **(env or {})}
        self.http_ports.append(port)
        log = open(self.workdir / f"worker-{len(self.workers)}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env, cwd=REPO_ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        self.wait_until_assigned(proc, members)
        return proc

    def groups_of(self, topic: str) -> list[str]:
        """The consumer groups that read `topic`: detection's own for the events and its ticks, the decision
        runner's and the after-decision runner's (delivery, attribution, learning) for what they read, the data
        runner's for the rest."""
        app = self.settings.app_id
        after, decision, data = f"{app}-{after_decision.NAME}", f"{app}-decision", f"{app}-data"
        if topic in ("engage.events", "engage.detection-ticks"):
            return [f"{app}-detection"]
        if topic == "engage.attributions":
            return [after]
        if topic in ("engage.enriched", "engage.pacing", "engage.agent-availability"):
            return [decision]
        if topic in ("engage.outcomes", "engage.conversions", "engage.forget"):
            return [data, decision, after]
        if topic == "engage.decisions":
            return [data, after]
        if topic in ("engage.merges-by-key", "engage.state-moves"):
            return [data, decision]
        return [data]

    def wait_until_assigned(self, proc: subprocess.Popen, members: int = 1, timeout_s: float = 90.0) -> None:
        """The workers' consumer groups (the detection, data, decision and after-decision runners') are
        stable, have `members` members, and hold every partition of the events, signals, enriched signals and
        decisions topics respectively (not the attributions: a replay's or shadow's worker does not learn)."""
        admin = AdminClient(self.client_conf)
        deadline = time.monotonic() + timeout_s
        wanted = {self.groups_of(t)[-1]: {(self.topic(t), p) for p in range(self.settings.partitions)}
                  for t in ("engage.events", "engage.signals", "engage.enriched", "engage.decisions")}
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}: {self.logs()[-3000:]}")
            try:
                groups = admin.describe_consumer_groups(list(wanted))
                ready = 0
                for name, partitions in wanted.items():
                    group = groups[name].result(5)
                    assigned = {(tp.topic, tp.partition) for m in group.members for tp in m.assignment.topic_partitions}
                    ready += (str(group.state).endswith("STABLE") and len(group.members) >= members
                              and partitions <= assigned)
                if ready == len(wanted):
                    time.sleep(1.0)  # let the runners finish restoring after the assignment
                    return
            except Exception:  # noqa: BLE001 - group not there yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"worker did not join within {timeout_s}s: {self.logs()[-3000:]}")

    def wait_caught_up(self, topic: str, timeout_s: float = 30.0) -> None:
        """The worker has committed every record now on `topic` (so it has processed them)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        name = self.topic(topic)
        admin = AdminClient(self.client_conf)
        probe = Consumer({**self.client_conf, "group.id": f"probe-{uuid.uuid4().hex}"})
        try:
            ends = {p: clients.watermarks(probe, TopicPartition(name, p), time.monotonic() + 30)[1]
                    for p in range(self.settings.partitions)}
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if all(all(max(tp.offset, 0) >= ends[tp.partition] for tp in admin.list_consumer_group_offsets(
                        [ConsumerGroupTopicPartitions(group, [TopicPartition(name, p) for p in ends])])[group]
                        .result(10).topic_partitions) for group in self.groups_of(topic)):
                    return
                time.sleep(0.3)
        finally:
            probe.close()
        raise AssertionError(f"the worker did not catch up on {name} within {timeout_s}s")

    def trace(self, needles: dict[str, str], topics: list[str]) -> str:
        """Where each needle (an id written inside the records) is on `topics`, with the group's committed
        offsets: a failing at-least-once test says at which stage a record stopped."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        admin = AdminClient(self.client_conf)
        lines = []
        for topic in topics:
            name = self.topic(topic)
            c = Consumer({**self.client_conf, "group.id": f"trace-{uuid.uuid4().hex}",
                          "enable.auto.commit": False})
            try:
                parts = [TopicPartition(name, p, 0) for p in range(self.settings.partitions)]
                ends = {tp.partition: clients.watermarks(c, tp, time.monotonic() + 30)[1] for tp in parts}
                for group in self.groups_of(topic):
                    req = ConsumerGroupTopicPartitions(group, [TopicPartition(name, p) for p in ends])
                    committed = {tp.partition: tp.offset for tp in
                                 admin.list_consumer_group_offsets([req])[group].result(10).topic_partitions}
                    lines.append(f"{topic}: end offsets {ends}, committed by {group} {committed}")
                c.assign(parts)
                left, deadline = sum(ends.values()), time.monotonic() + 30
                while left > 0 and time.monotonic() < deadline:
                    msg = c.poll(0.5)
                    if msg is None or msg.error():
                        continue
                    left -= 1
                    for label, needle in needles.items():
                        if needle.encode() in (msg.value() or b""):
                            lines.append(f"  {label} at {topic}[{msg.partition()}]@{msg.offset()}")
            finally:
                c.close()
        return "\n".join(lines)

    def kill(self, proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(30)

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)


def make_pipeline(bootstrap: str, tmp_path: Path, partitions: int = 2, security_env: dict | None = None) -> Pipeline:
    """An isolated deployment on `bootstrap`; with `security_env`, every client of it authenticates (SASL)."""
    tag = uuid.uuid4().hex[:8]
    settings = Settings(bootstrap_servers=bootstrap, external_kafka=True, topic_prefix=f"t{tag}.",
                        app_id=f"engage-test-{tag}", partitions=partitions, data_dir=tmp_path / "state",
                        security=KafkaSecurity.from_env(security_env or {}))
    ensure_topics(settings)
    return Pipeline(settings=settings, workdir=tmp_path, security_env=dict(security_env or {}))


@pytest.fixture
def new_pipeline(kafka_bootstrap, tmp_path):
    made = []

    def make(partitions: int = 2, bootstrap: str | None = None, security_env: dict | None = None) -> Pipeline:
        p = make_pipeline(bootstrap or kafka_bootstrap, tmp_path / f"p{len(made)}", partitions, security_env)
        p.workdir.mkdir(parents=True, exist_ok=True)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap, tmp_path_factory):
    """A running worker shared by the scenarios of one module (each uses its own customers)."""
    p = make_pipeline(kafka_bootstrap, tmp_path_factory.mktemp("pipeline"))
    p.start_worker()
    yield p
    p.stop()


def daytime_zone() -> str:
    """A time zone where it is now between 10:00 and 18:00 (the shipped quiet hours hold no channel there)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    for zone in ("UTC", "Asia/Tokyo", "Asia/Kolkata", "Europe/Berlin", "America/New_York", "America/Los_Angeles",
                 "Pacific/Auckland", "Asia/Dubai"):
        if 10 <= datetime.now(ZoneInfo(zone)).hour < 18:
            return zone
    raise AssertionError("no daytime zone in the list")  # the offsets cover every hour of the day


class Producer_:
    """Produces with confluent-kafka and the independent encoder, not with the code under test."""

    def __init__(self, pipeline: Pipeline):
        # murmur2: the partitioner of Kafka's Java clients, which the contract asks producers to use
        self.p = Producer({**pipeline.client_conf, "acks": "all", "partitioner": "murmur2_random"})
        self.pipeline = pipeline

    def raw(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        self.p.produce(self.pipeline.topic(topic), key=key, value=value)
        assert self.p.flush(30) == 0, "the test producer could not deliver every record"

    def event(self, **kw) -> dict:
        ev = wire.interaction(**kw)
        self.raw("engage.events", ev["visitor_id"].encode(), wire.encode("Interaction", ev))
        return ev

    def events(self, events: list[dict], pause_s: float = 0.0) -> None:
        """Produce interactions keyed by visitor, `pause_s` apart, and check every one was delivered."""
        for ev in events:
            self.p.produce(self.pipeline.topic("engage.events"), key=ev["visitor_id"].encode(),
                           value=wire.encode("Interaction", ev))
            self.p.poll(0)
            time.sleep(pause_s)
        assert self.p.flush(30) == 0, "the test producer could not deliver every event"

    def advance_clocks(self, ts: int) -> None:
        """A page view at `ts` on every partition of engage.events, so every partition's event-time clock
        passes the deadlines before it (rather than waiting for the idle ticks' wall-clock pace)."""
        for p in range(self.pipeline.settings.partitions):
            visitor = f"clock-{p}-{uuid.uuid4().hex[:6]}"
            ev = wire.interaction(event_id=f"{visitor}-0", visitor_id=visitor, type_="page_view", ts=ts, path="/")
            self.p.produce(self.pipeline.topic("engage.events"), key=visitor.encode(), value=wire.encode("Interaction", ev),
                           partition=p)
        assert self.p.flush(30) == 0, "the test producer could not deliver every record"

    def profile(self, customer_id: str, partition: int | None = None, **kw) -> dict:
        """Publish a CRM profile (to `partition`, if given, as a producer with another partitioner would)."""
        # where it is daytime now, unless the test says: the shipped quiet hours would otherwise turn
        # call backs into chats depending on when the suite runs
        kw.setdefault("timezone", daytime_zone())
        prof = wire.profile(customer_id, int(time.time() * 1000), **kw)
        self.p.produce(self.pipeline.topic("engage.profiles"), key=customer_id.encode(),
                       value=wire.encode("CustomerProfile", prof), **({} if partition is None else {"partition": partition}))
        assert self.p.flush(30) == 0, "the test producer could not deliver the profile"
        # a stream-table join sees a profile only once the worker has re-keyed and stored it
        self.pipeline.wait_caught_up("engage.profiles")
        self.pipeline.wait_caught_up("engage.profiles-by-customer")
        return prof


@pytest.fixture
def produce(pipeline):
    return Producer_(pipeline)


class Reader:
    """Reads a topic from the beginning and decodes with the independent decoder."""

    def __init__(self, pipeline: Pipeline, topic: str, schema: str):
        self.schema = schema
        self.c = Consumer({**pipeline.client_conf, "group.id": f"reader-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                           "enable.auto.commit": False})
        self.c.subscribe([pipeline.topic(topic)])
        self.records: list[tuple[dict, dict]] = []  # (record, {key, headers})

    def _poll(self, until: float) -> None:
        while time.monotonic() < until:
            msg = self.c.poll(0.2)
            if msg is None:
                return
            if msg.error():
                continue
            meta = {"key": msg.key(), "headers": dict(msg.headers() or []), "timestamp": msg.timestamp()[1],
                    "partition": msg.partition()}
            self.records.append((wire.decode(self.schema, msg.value()), meta))

    def wait_for(self, predicate, count: int = 1, timeout_s: float = 60.0) -> list[tuple[dict, dict]]:
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll(deadline)
            found = [r for r in self.records if predicate(r[0])]
            if len(found) >= count or time.monotonic() >= deadline:
                return found
            time.sleep(0.2)

    def settle(self, seconds: float) -> None:
        """Keep reading for a while, to see that nothing more arrives."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._poll(end)

    def close(self):
        self.c.close()


COLLECTOR_ORIGIN = "https://shop.example"  # the one site whose pages the tests' collectors take events from


def _serving(pipe, command: list[str], env: dict, group: str, port: int) -> subprocess.Popen:
    """Start `engage <command>` for the pipeline; return once it listens on `port` and its adapter `group` holds
    the deliveries' partitions (a new adapter group starts at the latest delivery: one made while it joins would
    never reach it)."""
    name = command[-1]
    log = open(pipe.workdir / f"{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", *command], cwd=REPO_ROOT, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, env={**pipe.env, **env})
    deadline = time.monotonic() + 30
    admin = AdminClient(pipe.client_conf)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            described = admin.describe_consumer_groups([group])[group].result(5)
            if str(described.state).endswith("STABLE") and any(m.assignment.topic_partitions
                                                              for m in described.members):
                return proc
        except Exception:  # noqa: BLE001 - not listening, or the group not there yet
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            raise AssertionError(f"{name} did not start: " + (pipe.workdir / f"{name}.log").read_text()[-3000:])
        time.sleep(0.2)


@pytest.fixture
def serving():
    """`serving(pipe, command, env, group, port)` (see _serving); every process started is stopped after the test."""
    procs = []

    def start(pipe, command, env, group, port) -> subprocess.Popen:
        procs.append(_serving(pipe, command, env, group, port))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)


@pytest.fixture
def collector(serving):
    """`collector(pipe)` starts `engage collector` (with its web adapter) for the pipeline on a free port and returns
    the port once it listens and its web adapter holds the deliveries' partitions."""

    def start(pipe) -> int:
        port = _free_ports(1)
        serving(pipe, ["collector"], {"ENGAGE_COLLECTOR_PORT": str(port), "ENGAGE_COLLECTOR_ORIGINS": COLLECTOR_ORIGIN},
                f"{pipe.settings.app_id}-web-adapter", port)
        return port

    return start


DESKTOP_TOKEN = "desk-" + uuid.uuid4().hex  # the tests' agent desktops' token


@pytest.fixture
def desktop(serving):
    """`desktop(pipe)` starts `engage adapter desktop` for the pipeline on a free port (token DESKTOP_TOKEN) and
    returns the port once it listens and holds the deliveries' partitions."""

    def start(pipe) -> int:
        port = _free_ports(1)
        serving(pipe, ["adapter", "desktop"], {"ENGAGE_DESKTOP_PORT": str(port), "ENGAGE_DESKTOP_TOKEN": DESKTOP_TOKEN},
                f"{pipe.settings.app_id}-desktop-adapter", port)
        return port

    return start


@pytest.fixture
def reader():
    """Readers of a pipeline's topics, closed after the test."""
    made = []

    def make(pipe, topic: str, schema: str) -> Reader:
        made.append(Reader(pipe, topic, schema))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def read(pipeline):
    readers = []

    def make(topic: str, schema: str, on: Pipeline | None = None) -> Reader:
        r = Reader(on or pipeline, topic, schema)
        readers.append(r)
        return r

    yield make
    for r in readers:
        r.close()
