"""Decides how stored events are replayed through a whole pipeline beside the live one, and how a shadow rule set runs on live traffic, without either reaching a customer.

A replay (`engage replay --from T --to T`) gets an app id and topic prefix of its own
(`<app id>-replay-<run>`, `<prefix>replay-<run>.`): the command creates its topics, copies into
them the events of the window (each to the partition it came from, with its timestamp), the
outcomes of the window, and the whole of what the live engine reads as state (profiles, identity
links, agent availability, forget requests, merges, writer schemas, the learned models); it writes
the rule sets in force (the published versions, else the files), with the candidate files over
them, into a folder of its own; it runs a worker on all that until every stage has read
everything and nothing more comes; then it diffs what the replay found and decided against what
the live pipeline did for the same events, and deletes its topics, consumer groups and folder.
Its deliveries go to its own delivery topic, which no adapter reads. It scores with the models as
the live engine learned them and learns nothing (ENGAGE_LEARN=0): no one saw its offers.

A shadow (`engage replay --shadow`) is a worker with app id `<app id>-shadow` and prefix
`<prefix>shadow.` that reads the live events, profiles, identity links and the rest others write
(ENGAGE_INPUT_PREFIX), from the moment it first starts, and writes everything it makes, deliveries
included, under its own prefix: the candidate rules see live traffic, and no adapter sees their
decisions. `engage replay --shadow --diff` compares it with the live pipeline on demand.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from streams import clients, topics
from streams.settings import Settings

log = logging.getLogger(__name__)

STAGES = ("detection", "data", "decision", "after-decision")
RULE_FILES = {"detection": "detection.yaml", "actions": "actions.yaml", "segments": "segments.yaml",
              "customer": "customer.yaml"}
# Copied whole: what the live engine keeps as state, not as a stream (compacted topics).
STATE_INPUTS = (topics.PROFILES, topics.IDENTITY, topics.AGENT_AVAILABILITY, topics.FORGET, topics.MERGES,
                topics.SCHEMAS, topics.MODELS)
# Written on a timer whether or not anything happens: not a sign that a replay is still working.
CLOCK_TOPICS = (topics.DETECTION_TICKS.name, topics.DATA_SWEEPS.name)
QUIET_S = 6.0  # nothing new on any topic of the replay for this long (three idle ticks): it is done
MAX_RULE_FILE_BYTES = 1_000_000


class ReplayError(ValueError):
    """A replay or shadow request that cannot be done; the message says why."""


@dataclass(frozen=True)
class Window:
    from_ms: int
    to_ms: int

    def holds(self, ts: int) -> bool:
        return self.from_ms <= ts < self.to_ms


def replay_settings(live: Settings, run: str) -> Settings:
    return live.with_(app_id=f"{live.app_id}-replay-{run}", topic_prefix=f"{live.topic_prefix}replay-{run}.",
                      input_prefix=None)


def shadow_settings(live: Settings) -> Settings:
    return live.with_(app_id=f"{live.app_id}-shadow", topic_prefix=f"{live.topic_prefix}shadow.",
                      input_prefix=live.topic_prefix)


def worker_env(s: Settings, rules_dir: Path, data_dir: Path, http_port: int, extra: dict | None = None) -> dict:
    """The environment of a worker for `s` (a replay's or the shadow's), the live one's otherwise."""
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers, "ENGAGE_APP_ID": s.app_id,
           "ENGAGE_TOPIC_PREFIX": s.topic_prefix, "ENGAGE_RULES_DIR": str(rules_dir), "ENGAGE_DATA_DIR": str(data_dir),
           "ENGAGE_HTTP_PORT": str(http_port), "ENGAGE_PARTITIONS": str(s.partitions), "ENGAGE_STANDBY_REPLICAS": "0",
           # it scores with the models as learned live, and learns nothing from decisions no one was shown
           "ENGAGE_LEARN": "0",
           **(extra or {})}
    env.pop("ENGAGE_INPUT_PREFIX", None)
    if s.input_prefix is not None:
        env["ENGAGE_INPUT_PREFIX"] = s.input_prefix
    return env


# --- rules -----------------------------------------------------------------------------------------

def write_rules(live: Settings, folder: Path, rules_file: Path | None, actions_file: Path | None) -> dict[str, str]:
    """The rule sets a replay or shadow runs, as files in `folder`: those in force now (the latest published
    version of each, else the live rules folder's file), with the candidate files over them. Every file is
    compiled first: a bad one raises RuleError with its file, line and reason. Returns name -> version."""
    from streams.rules import registry

    folder.mkdir(parents=True, exist_ok=True)
    for name, file in RULE_FILES.items():
        published = registry.current(live, name)
        if published is not None:
            (folder / file).write_text(published["source"])
        else:
            shutil.copyfile(live.rules_dir / file, folder / file)
    for name, given in (("detection", rules_file), ("actions", actions_file)):
        if given is None:
            continue
        if not given.is_file():
            raise ReplayError(f"no rule file {given}")
        if given.stat().st_size > MAX_RULE_FILE_BYTES:
            raise ReplayError(f"{given}: larger than {MAX_RULE_FILE_BYTES:,} bytes")
        registry.COMPILERS[name](given.read_text(), str(given), name=name)  # RuleError names file and line
        shutil.copyfile(given, folder / RULE_FILES[name])
    versions = {}
    for name, file in RULE_FILES.items():
        versions[name] = registry.COMPILERS[name]((folder / file).read_text(), str(folder / file), name=name).version
    return versions


# --- copying the inputs ----------------------------------------------------------------------------

def _partitions(c, topic: str, timeout_s: float = 15.0) -> list[int]:
    meta = c.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        raise ReplayError(f"no topic {topic} at the broker")
    return sorted(meta.partitions)


def _read(settings: Settings, topic: str, since_ms: int | None, stop: Callable[[int], bool] | None = None,
          timeout_s: float = 120.0) -> Iterator[tuple[int, object]]:
    """(partition, message) of every record of `topic` from the first one at or after `since_ms` (None: the
    first) to the end now; `stop(timestamp)` ends a partition's read early (clients.read_messages)."""
    try:
        for msg in clients.read_messages(settings, topic, since_ms, stop, timeout_s,
                                         group_prefix=f"{settings.app_id}-replay-reader"):
            yield msg.partition(), msg
    except clients.ReadError as exc:
        raise ReplayError(str(exc)) from None


def copy_inputs(live: Settings, rs: Settings, window: Window, codec, margin_ms: int = 3_600_000) -> int:
    """Copy the window's events and outcomes and the live state inputs into the replay's topics; returns the
    number of events copied. Records are copied as stored (bytes, key, headers, timestamp), each to the
    partition it was on, so each visitor's events keep their order."""
    producer = clients.producer(rs, **{"linger.ms": 20, "compression.type": "lz4"})
    failed: list[str] = []

    def sent(err, _msg) -> None:
        if err is not None:
            failed.append(str(err))

    def copy(msg, partition: int) -> None:
        for attempt in range(100):
            try:
                producer.produce(rs.topic(spec.name), msg.value(), msg.key(), partition=partition, on_delivery=sent,
                                 timestamp=msg.timestamp()[1], headers=msg.headers())
                return
            except BufferError:
                producer.poll(0.1)
        raise ReplayError("the broker took no records for 10 s")

    events = 0
    spec = topics.EVENTS
    name = live.topic(spec.name)
    # message timestamps are when a record was sent, the window is event time: read from a margin before it
    for p, msg in _read(live, name, window.from_ms - margin_ms, stop=lambda ts: ts > window.to_ms + margin_ms):
        try:
            ts = codec.decode(name, spec.schema, msg.value())["ts"]
        except ValueError:
            continue  # the live pipeline dead-lettered it; so would the replay
        if window.holds(ts):
            copy(msg, p)
            events += 1
    spec = topics.OUTCOMES
    for p, msg in _read(live, live.topic(spec.name), window.from_ms, stop=lambda ts: ts >= window.to_ms):
        copy(msg, p)
    for spec in STATE_INPUTS:
        for p, msg in _read(live, live.topic(spec.name), None):
            copy(msg, p)
    if producer.flush(60) or failed:
        raise ReplayError(f"copying the inputs failed: {failed[0] if failed else 'not all acknowledged in 60 s'}")
    return events


# --- watching a run --------------------------------------------------------------------------------

class Progress:
    """A one-line bar on a terminal; otherwise a line at every tenth."""

    def __init__(self, total: int, out=sys.stderr):
        self.total, self.out, self.shown = max(total, 1), out, -1
        self.tty = hasattr(out, "isatty") and out.isatty()

    def show(self, done: int, what: str) -> None:
        share = min(done / self.total, 1.0)
        if self.tty:
            bar = "#" * int(share * 30)
            self.out.write(f"\r[{bar:30}] {share:4.0%} {done:,}/{self.total:,} events  {what:24}")
            self.out.flush()
        elif int(share * 10) > self.shown:
            self.shown = int(share * 10)
            print(f"replay: {share:.0%} of {self.total:,} events read; {what}", file=self.out, flush=True)

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")


def group_state(rs: Settings, admin) -> tuple[int, int, int]:
    """(events detection has committed, records the stages have yet to commit, records on the replay's topics)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    meta = admin.list_topics(timeout=10).topics
    held = [TopicPartition(t, p) for t, m in meta.items()
            if t.startswith(rs.topic_prefix) or t.startswith(f"{rs.app_id}-") for p in m.partitions]
    ends = {(tp.topic, tp.partition): f.result().offset
            for tp, f in admin.list_offsets({tp: OffsetSpec.latest() for tp in held}, request_timeout=10).items()}
    events_topic, read, lag = rs.topic(topics.EVENTS.name), 0, 0
    clock = {rs.topic(n) for n in CLOCK_TOPICS}
    for stage in STAGES:
        group = f"{rs.app_id}-{stage}"
        found = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
        for tp in found.topic_partitions:
            if tp.offset < 0 or tp.topic in clock:
                continue
            lag += max(0, ends.get((tp.topic, tp.partition), 0) - tp.offset)
            if tp.topic == events_topic:
                read += tp.offset
    made = sum(end for (t, _p), end in ends.items() if t not in clock)
    return read, lag, made


def wait_until_done(rs: Settings, events: int, worker, progress: Progress, timeout_s: float) -> float:
    """Until detection has read every event, every stage has committed all it was given, and no topic of the
    replay has grown for QUIET_S; returns the seconds taken. Raises ReplayError if the worker exits or time runs out."""
    admin = clients.admin(rs, quiet=True)
    started = time.monotonic()
    deadline = started + timeout_s
    last_made, quiet_since = -1, time.monotonic()
    while True:
        if worker.poll() is not None:
            raise ReplayError(f"the replay's worker stopped (exit {worker.returncode})")
        if time.monotonic() >= deadline:
            raise ReplayError(f"the replay did not finish within {timeout_s:.0f}s")
        try:
            read, lag, made = group_state(rs, admin)
        except Exception as exc:  # noqa: BLE001 - a group not there yet, a broker hiccup: ask again
            log.debug("replay progress: %s", exc)
            time.sleep(0.5)
            continue
        # the copied events topic starts at offset 0, so detection's committed offsets count what it read
        progress.show(read, "detecting" if read < events else "deciding and delivering")
        if made != last_made:
            last_made, quiet_since = made, time.monotonic()
        if read >= events and lag == 0 and time.monotonic() - quiet_since >= QUIET_S:
            progress.end()
            return time.monotonic() - started
        time.sleep(0.5)


# --- reading what a run found and decided ----------------------------------------------------------

def read_outputs(s: Settings, window: Window, codec, margin_ms: int = 3_600_000) -> tuple[list[dict], list[dict]]:
    """The signals whose time is in the window, and the decisions on them, from `s`'s topics."""
    out = []
    for spec, field in ((topics.SIGNALS, "ts"), (topics.DECISIONS, "signal_ts")):
        name, kept = s.topic(spec.name), []
        for _p, msg in _read(s, name, window.from_ms - margin_ms):
            try:
                record = codec.decode(name, spec.schema, msg.value())
            except ValueError:
                continue
            if window.holds(record[field]):
                kept.append(record)
        out.append(kept)
    return out[0], out[1]


# --- cleaning up -----------------------------------------------------------------------------------

def remove_run(s: Settings, timeout_s: float = 30.0) -> list[str]:
    """Delete a replay's or the shadow's topics (its prefix, its changelogs) and consumer groups; never a live
    topic (a shadow's inputs are the live ones, and are not under its prefix)."""
    if not s.topic_prefix:
        raise ReplayError("refusing to delete topics without a prefix")
    admin = clients.admin(s, quiet=True)
    live_inputs = {s.topic(n) for n in topics.EXTERNAL_INPUTS} if s.input_prefix is not None else set()
    names = [t for t in admin.list_topics(timeout=timeout_s).topics
             if (t.startswith(s.topic_prefix) or t.startswith(f"{s.app_id}-")) and t not in live_inputs]
    for _name, fut in (admin.delete_topics(names, operation_timeout=timeout_s).items() if names else ()):
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("delete topic: %s", exc)
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout_s).valid
              if g.group_id == s.app_id or g.group_id.startswith(f"{s.app_id}-")]
    for _name, fut in (admin.delete_consumer_groups(groups, request_timeout=timeout_s).items() if groups else ()):
        try:
            fut.result()
        except Exception as exc:  # noqa: BLE001 - a group still emptying: left to expire
            log.debug("delete group: %s", exc)
    return names


# --- the commands ----------------------------------------------------------------------------------

def replay(live: Settings, window: Window, rules_file: Path | None = None, actions_file: Path | None = None, *,
           keep: bool = False, timeout_s: float = 3_600.0, examples: int = 3, progress_out=sys.stderr,
           extra_env: dict | None = None) -> dict:
    """Replay the window through a pipeline of its own and diff it against the live one; returns the report."""
    from streams.admin import ensure_topics, wait_for_broker
    from streams.replay.diff import diff, iso
    from streams.tools.procs import free_port, spawn, stop_process

    if window.to_ms <= window.from_ms:
        raise ReplayError("--to must be later than --from")
    wait_for_broker(live, 15)
    codec = clients.codec(live)
    c = clients.consumer(live, clients.throwaway_group(f"{live.app_id}-replay-meta"), log_level=None)
    try:
        partitions = len(_partitions(c, live.topic(topics.EVENTS.name)))
    finally:
        c.close()
    run = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + f"-{os.getpid()}"
    rs = replay_settings(live, run).with_(partitions=partitions)
    work = Path(tempfile.mkdtemp(prefix="engage-replay-"))
    worker = None
    try:
        versions = write_rules(live, work / "rules", rules_file, actions_file)
        ensure_topics(rs)
        events = copy_inputs(live, rs, window, codec)
        print(f"replay {run}: {events:,} events from {iso(window.from_ms)} to {iso(window.to_ms)}, rules "
              + ", ".join(f"{k} {v}" for k, v in versions.items()), file=progress_out, flush=True)
        # events as old as the window's start are taken (the live default drops those older than 30 days)
        age_days = max(30, int((time.time() * 1000 - window.from_ms) / 86_400_000) + 2)
        env = worker_env(rs, work / "rules", work / "state", free_port(),
                         {"ENGAGE_MAX_EVENT_AGE": f"{age_days}d", **(extra_env or {})})
        worker = spawn(["worker"], work / "worker.log", env)
        took = wait_until_done(rs, events, worker, Progress(events, progress_out), timeout_s)
        stop_process(worker)
        live_signals, live_decisions = read_outputs(live, window, codec)
        signals, decisions = read_outputs(rs, window, codec)
        report = diff(live_signals, live_decisions, signals, decisions, examples=examples)
        report["run"] = {"id": run, "from": iso(window.from_ms), "to": iso(window.to_ms), "events": events,
                         "seconds": round(took, 1), "rules": versions, "kept": keep,
                         "topic_prefix": rs.topic_prefix, "app_id": rs.app_id}
        return report
    except BaseException:
        if worker is not None and (work / "worker.log").exists():
            tail = (work / "worker.log").read_text(errors="replace")[-2000:]
            log.error("the replay's worker log ends:\n%s", tail)
        raise
    finally:
        if worker is not None:
            stop_process(worker)
        if not keep:
            remove_run(rs)
            shutil.rmtree(work, ignore_errors=True)


def prepare_shadow(live: Settings, rules_file: Path | None, actions_file: Path | None, data_dir: Path) -> tuple[Settings, dict]:
    """The shadow's settings and worker environment: its topics made, its rules written, its detection group
    set to begin at the live events' end if it never read them (a shadow sees traffic from its first start on),
    the live models copied to its own models topic."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from streams.admin import ensure_topics, wait_for_broker
    from streams.tools.procs import free_port

    wait_for_broker(live, 15)
    ss = shadow_settings(live)
    write_rules(live, data_dir / "rules", rules_file, actions_file)
    ensure_topics(ss)
    admin = clients.admin(ss, quiet=True)
    group, events = f"{ss.app_id}-detection", ss.topic(topics.EVENTS.name)
    c = clients.consumer(ss, clients.throwaway_group(f"{ss.app_id}-start"), log_level=None)
    try:
        parts = _partitions(c, events)
        found = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(events, p)
                                                                                        for p in parts])])
        committed = {tp.partition: tp.offset for tp in found[group].result(10).topic_partitions}
        fresh = [p for p in parts if committed.get(p, -1) < 0]
        if fresh:
            ends = [TopicPartition(events, p, clients.watermarks(c, TopicPartition(events, p), time.monotonic() + 10)[1])
                    for p in fresh]
            admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, ends)])[group].result(10)
        # it does not learn (ENGAGE_LEARN=0): it scores with the models the live engine has learned by its start
        _copy_whole(live, ss, topics.MODELS)
    finally:
        c.close()
    # its own web server (its /metrics, /ready) on a free port, printed at start: never the live workers' ports
    env = worker_env(ss, data_dir / "rules", data_dir / "state", free_port())
    return ss, env


def _copy_whole(live: Settings, to: Settings, spec) -> None:
    producer = clients.producer(to)
    for p, msg in _read(live, live.topic(spec.name), None):
        producer.produce(to.topic(spec.name), msg.value(), msg.key(), partition=p, timestamp=msg.timestamp()[1])
    producer.flush(30)
