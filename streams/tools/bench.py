"""Decides how the pipeline is measured: a fixed offered load, backlogs, and the runtimes a user could pick instead.

On a real broker (8 partitions) and worker: µs per event spent in rule evaluation; a fixed offered
load (1,000 events/s for 60 s by default) with latency from the event's time to the decision and
delivery records (p50/p95/p99, share within 100 ms); a backlog drained with 50 rules published to
the running worker; then a stored backlog of 50,000 events from 5,000 visitors drained by a new
worker (detection and whole pipeline, CPU µs per event, changelog bytes per event, RocksDB bytes
per visitor, time to restore) and by the anchors under bench/anchors/ in three interleaved rounds.
Results go to bench/results/ with the machine's description. Nothing here asserts a timing.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import psutil

from streams import after_decision, clients, topics
from streams.data import agent as data_agent
from streams.decision import agent as decision_agent
from streams.admin import ensure_topics, wait_for_broker
from streams.detection.runner import detection_group
from streams.settings import REPO_ROOT, Settings
from streams.tools import localkafka
from streams.tools.procs import free_port, spawn, stop_process

RESULTS = REPO_ROOT / "bench" / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "os": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "faust": metadata.version("faust-streaming"), "aiokafka": metadata.version("aiokafka"),
            "confluent_kafka": metadata.version("confluent-kafka"), "kafka_broker": "3.9.1 (local KRaft)"}


def write_results(result: dict, kind: str, run_id: str, out: Path | None) -> Path:
    """bench/results/<kind>-<run id>.json (or `out`), and the same as the kind's latest."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = out or RESULTS / f"{kind}-{run_id}.json"
    text = json.dumps(result, indent=2) + "\n"
    out.write_text(text)
    (RESULTS / ("latest.json" if kind == "bench" else f"{kind}-latest.json")).write_text(text)
    return out


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 1)


def fifty_rules() -> str:
    """The default rule set plus generated rules of every kind, as business users would add them: 50 in all."""
    text = (REPO_ROOT / "rules" / "detection.yaml").read_text()
    extra = []
    sections = ["/shop/phones", "/shop/tv", "/shop/broadband", "/offers", "/account/bills", "/help/roaming",
                "/shop/plans", "/business", "/help/router", "/shop/accessories", "/moving-home", "/students",
                "/shop/deals", "/account/usage", "/help/billing", "/sim-only", "/family", "/shop/refurbished"]
    for i, section in enumerate(sections):  # campaign pages
        extra.append(f"""  - id: visit-{i}
    when: {{event: page_view, where: 'path startswith "{section}" and session.pages >= {2 + i % 4}'}}
    signal: interest_{i}
    once_per_session: true
""")
    for i, words in enumerate(["refund", "complaint", "broken|faulty", "upgrade", "roaming", "contract end", "discount",
                               "porting|port my number", "speed|slow", "bill"]):
        extra.append(f"""  - id: search-{i}
    when: {{event: search, where: 'query ~ "{words}"'}}
    signal: search_{i}
""")
    for i, (kind, n, within) in enumerate([("page_view", 8, "2m"), ("add_to_cart", 4, "10m"), ("search", 4, "5m"),
                                           ("form_error", 2, "1m"), ("download", 3, "10m")]):
        extra.append(f"""  - id: burst-{i}
    when: {{count: {{event: {kind}, at_least: {n}, within: {within}}}}}
    signal: burst_{i}
""")
    for i, (a, b) in enumerate([("/shop/phones", "/shop/plans"), ("/offers", "/checkout"), ("/help", "/account/bills"),
                                ("/shop/tv", "/shop/broadband")]):
        extra.append(f"""  - id: path-{i}
    when:
      sequence: [{{event: page_view, where: 'path startswith "{a}"'}}, {{event: page_view, where: 'path startswith "{b}"'}}]
      within: 20m
    signal: journey_{i}
""")
    for i, (a, wait) in enumerate([("login", "5m"), ("add_to_cart", "20m")]):
        extra.append(f"""  - id: gone-{i}
    when: {{event: {a}, then_absent: {{event: page_view, for: {wait}}}}}
    signal: gone_{i}
""")
    for i, section in enumerate(["/shop/plans", "/account/bills", "/checkout"]):
        extra.append(f"""  - id: dwell-{i}
    when: {{dwell: {{where: 'path startswith "{section}"', at_least: {45 + 15 * i}s}}}}
    signal: dwell_{i}
""")
    out = text.rstrip() + "\n\n" + "\n".join(extra)
    return out


def rule_eval_us(events: int = 20000, runs: int = 7) -> dict:
    """µs per event in detection without Kafka, over simulated traffic, with the default rules and with 50.

    `conditions_only`: the compiled conditions of the rules the event's index entry names, nothing else
    (what rule engines are compared on: ~112 µs per evaluation for `rule-engine`);
    `rules_only`: detect() with the visitor's state in a dict (conditions, then per-visitor state:
    session, count windows, sequence buffers, timers, evidence, signals);
    `with_timers`: the Detector the agent runs (plus watermark, timer index, expiry queue), over dicts.
    """
    from streams.detection.detector import Detector
    from streams.detection.partition import Tx
    from streams.detection.rules import compile_detection, load_detection
    from streams.detection.visitor import detect, new_state, session_view
    from streams.tools.simulator import Traffic

    ts = iter(range(1_700_000_000_000, 1_800_000_000_000, 250))
    evs = list(Traffic(seed=11, customers=200, now_ms=lambda: next(ts)).events(events))
    out: dict = {"events": events, "runs": runs}
    for label, rules in (("default", load_detection(REPO_ROOT / "rules" / "detection.yaml")),
                         ("fifty", compile_detection(fifty_rules(), "bench:fifty.yaml"))):
        only, timed, conditions, fired, plans = [], [], [], 0, 0
        view = session_view(new_state())
        for _ in range(runs):
            plans, t0 = 0, time.perf_counter()
            for ev in evs:
                for _rule, kind, test, _absent, steps in rules.plans_for(ev["type"], ev.get("path")):
                    plans += 1
                    if kind == 2:
                        for step in steps:
                            step(ev, view)
                    else:
                        test(ev, view)
            conditions.append((time.perf_counter() - t0) / len(evs) * 1e6)
            state: dict = {}
            fired = 0
            t0 = time.perf_counter()
            for ev in evs:
                result = detect(state.get(ev["visitor_id"]), ev, rules)
                state[ev["visitor_id"]] = result.state
                fired += len(result.signals)
            only.append((time.perf_counter() - t0) / len(evs) * 1e6)
            detector, visitors, timers = Detector(lambda: rules), {}, {}
            t0 = time.perf_counter()
            for ev in evs:
                tx = Tx(visitors, timers)
                detector.on_event(tx, 0, ev)
                tx.apply()
            timed.append((time.perf_counter() - t0) / len(evs) * 1e6)
        out[label] = {"rules": len(rules.rules), "signals": fired, "rules_per_event": round(plans / len(evs), 1),
                      "conditions_only_us_per_event": {"median": round(statistics.median(conditions), 2),
                                                       "min": round(min(conditions), 2)},
                      "rules_only_us_per_event": {"median": round(statistics.median(only), 2), "min": round(min(only), 2)},
                      "with_timers_us_per_event": {"median": round(statistics.median(timed), 2), "min": round(min(timed), 2)}}
    return out


class Sampler(threading.Thread):
    """Samples the worker's CPU seconds and the detection group's committed offset once a second."""

    def __init__(self, pid: int, settings: Settings, period_s: float = 1.0):
        super().__init__(daemon=True)
        self.period_s = period_s
        self.proc = psutil.Process(pid)
        self.settings = settings
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, cpu seconds, committed events)
        self.reader = None  # one client for the whole run, not one per sample

    def committed(self) -> int:
        from confluent_kafka import TopicPartition

        # An offset fetch through a consumer of the group that never subscribes (so never joins it): the
        # admin client's list_consumer_group_offsets crashed this process (SIGSEGV, confluent-kafka 2.16.1)
        # when called while the worker's group was still forming.
        if self.reader is None:
            self.reader = clients.consumer(self.settings, detection_group(self.settings), log_level=None)
        topic = self.settings.topic(topics.EVENTS.name)
        tps = self.reader.committed([TopicPartition(topic, p) for p in range(self.settings.partitions)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)

    def _tree(self) -> list:
        """The worker and its processes (detection runs in a child)."""
        return _processes(self.proc)

    def cpu(self) -> float:
        """CPU seconds of the worker and its processes."""
        return cpu_seconds(self._tree())

    def run(self):
        while not self.stop.is_set():
            try:
                cpu = self.cpu()
                self.samples.append((time.monotonic(), cpu, self.committed()))
            except Exception:  # noqa: BLE001 - a missed sample is not worth stopping the bench
                pass
            self.stop.wait(self.period_s)

    def peak_rss_mib(self) -> float:
        """Peak resident memory of the worker and its processes, summed."""
        total = 0.0
        for proc in self._tree():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) / 1024
            except OSError:
                pass
        return round(total, 1)


def _pipeline_lag(settings: Settings, readers: dict) -> int:
    """Records of the stages' input topics (all but events) not yet committed by the groups reading them.

    `readers`: group -> a consumer of that group that never subscribes (see Sampler.committed).
    """
    from confluent_kafka import TopicPartition

    read_by = {f"{settings.app_id}-{data_agent.NAME}": (topics.SIGNALS, topics.SIGNALS_BY_CUSTOMER, topics.DECISIONS),
               f"{settings.app_id}-{decision_agent.NAME}": (topics.ENRICHED, topics.PACING),
               f"{settings.app_id}-{after_decision.NAME}": (topics.DECISIONS, topics.ATTRIBUTIONS)}
    lag = 0
    for group, reader in readers.items():
        tps = [TopicPartition(settings.topic(t.name), p) for t in read_by[group] for p in range(settings.partitions)]
        for tp in reader.committed(tps, timeout=10):
            _, high = clients.watermarks(reader, tp, time.monotonic() + 10)
            lag += max(0, high - max(tp.offset, 0))
    return lag


def _wait_pipeline(settings: Settings, timeout_s: float) -> float | None:
    """When no stage after detection has anything left to read (monotonic time), or None."""
    readers = {group: clients.consumer(settings, group, log_level=None)
               for group in (f"{settings.app_id}-{data_agent.NAME}", f"{settings.app_id}-{decision_agent.NAME}",
                             f"{settings.app_id}-{after_decision.NAME}")}
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if _pipeline_lag(settings, readers) == 0:
                return time.monotonic()
            time.sleep(0.5)
        return None
    finally:
        for reader in readers.values():
            reader.close()


def _changelog_bytes(settings: Settings, events: int, since_ms: int = 0, until_ms: int = 2**62,
                     live: dict | None = None) -> dict:
    """Records and bytes (key + value) the tables' changelogs got between the two times, in all, per
    event of the `events` that made them, and by table. `live`, when given, gets table -> {key: bytes
    of its latest value} (deleted keys left out): what the tables hold now."""
    by_table = {}
    for table in topics.TABLES:
        name = topics.changelog(settings.app_id, table)
        try:
            records = [r for r in clients.read_all(settings, name, group_prefix="bench-read") if since_ms <= r[2] <= until_ms]
        except clients.ReadError:
            continue
        if records:
            by_table[table] = {"records": len(records), "bytes": sum(len(r[3] or b"") + len(r[4] or b"") for r in records)}
        if live is not None:
            latest: dict = {}
            for r in records:
                latest[r[3]] = None if r[4] is None else len(r[3] or b"") + len(r[4])
            live[table] = {k: v for k, v in latest.items() if v is not None}
    total, count = sum(c["bytes"] for c in by_table.values()), sum(c["records"] for c in by_table.values())
    return {"bytes": total, "records": count, "bytes_per_event": round(total / events, 1),
            "records_per_event": round(count / events, 3), "by_table": by_table}


def _table_state(settings: Settings, live: dict) -> dict:
    """What each table holds now: keys, bytes of their latest key and value, bytes per key, and the
    table's RocksDB files on the worker's disk (every partition; detection's two tables share one
    RocksDB per partition, counted under visitor_to_state, the data runner's six under customer_to_profile,
    the decision runner's two under customer_to_contacts, and the after-decision runner's three under
    key_to_attributions)."""
    disk: dict[str, int] = {}
    for d in settings.data_dir.rglob("*.db"):
        if d.is_dir():
            table = d.name.rsplit("-", 1)[0]
            disk[table] = disk.get(table, 0) + sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    disk[topics.VISITOR_TO_STATE] = _runner_disk_bytes(settings)
    disk[topics.CUSTOMER_TO_PROFILE] = _runner_disk_bytes(settings, data_agent.NAME)
    disk[topics.CUSTOMER_TO_CONTACTS] = _runner_disk_bytes(settings, decision_agent.NAME)
    disk[topics.KEY_TO_ATTRIBUTIONS] = _runner_disk_bytes(settings, after_decision.NAME)
    out = {}
    for table, keys in live.items():
        held = sum(keys.values())
        out[table] = {"keys": len(keys), "bytes": held, "bytes_per_key": round(held / len(keys), 1) if keys else None,
                      "rocksdb_bytes": disk.get(table, 0)}
    customer_tables = (topics.CUSTOMER_TO_PROFILE, topics.CUSTOMER_TO_VALUE, topics.KEY_TO_JOURNEY,
                       topics.CUSTOMER_TO_CONTACTS, topics.KEY_TO_ATTRIBUTIONS)
    # the customers who did something (a journey), with their profile, value, ledger and attributions
    customers = set(live.get(topics.CUSTOMER_TO_PROFILE, {})) & set(live.get(topics.KEY_TO_JOURNEY, {}))
    per_customer = [sum(live.get(t, {}).get(c, 0) for t in customer_tables) for c in customers]
    visitors = live.get(topics.VISITOR_TO_STATE, {})
    journeys = sorted(live.get(topics.KEY_TO_JOURNEY, {}).values())
    return {"by_table": out,
            "customers_with_a_journey": len(customers),
            "bytes_per_customer_median": sorted(per_customer)[len(per_customer) // 2] if per_customer else None,
            "bytes_per_customer_max": max(per_customer) if per_customer else None,
            "journey_bytes_median": journeys[len(journeys) // 2] if journeys else None,
            "journey_bytes_max": journeys[-1] if journeys else None,
            "visitors": len(visitors),
            "bytes_per_visitor": round((sum(visitors.values()) + sum(live.get(topics.VISITOR_TO_CUSTOMER, {}).values())
                                        + sum(live.get(topics.PARTITION_TO_TIMERS, {}).values())) / len(visitors), 1)
            if visitors else None}


CONTEXT_CLIENTS, CONTEXT_REQUESTS = 50, 5_000


def _context_latency(settings: Settings, work: Path, customers: list[str]) -> dict:
    """The context service of a worker restarted on its folder, asked by 50 clients at once (5,000
    requests in all, each for a random customer with state): latency p50/p95/p99 and requests/s.
    The clients run in this process, on the same 2 cores as the worker and the broker."""
    import concurrent.futures
    import http.client
    import random
    import secrets
    from urllib.parse import quote

    if not customers:
        return {"error": "no customer has state"}
    port = free_port()
    token = secrets.token_urlsafe(24)
    env = {**worker_env(settings), "ENGAGE_HTTP_PORT": str(port), "ENGAGE_CONTEXT_TOKEN": token,
           "ENGAGE_CONTEXT_RATE": "1000000"}
    worker = spawn(["worker"], work / f"worker-context-{settings.app_id}.log", env=env)
    local = threading.local()

    def ask(customer: str) -> tuple[float, int]:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        t0 = time.perf_counter()
        try:
            local.conn.request("GET", f"/customers/{quote(customer, safe='')}/context",
                               headers={"Authorization": f"Bearer {token}"})
            resp = local.conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            local.conn.close()
            local.conn, status = None, 0
        return (time.perf_counter() - t0) * 1000, status

    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # the worker answers once its tables are recovered
            if ask(customers[0])[1] == 200:
                break
            time.sleep(0.5)
        else:
            return {"error": f"the worker did not answer; see {work}"}
        rng = random.Random(11)
        asked = [rng.choice(customers) for _ in range(CONTEXT_REQUESTS)]
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CONTEXT_CLIENTS) as pool:
            answers = list(pool.map(ask, asked))
        elapsed = time.monotonic() - t0
        ok = sorted(ms for ms, status in answers if status == 200)
        return {"customers_with_state": len(customers), "clients": CONTEXT_CLIENTS, "requests": len(answers),
                "answered_200": len(ok), "requests_per_s": round(len(answers) / elapsed, 1),
                "p50_ms": pct(ok, 0.50), "p95_ms": pct(ok, 0.95), "p99_ms": pct(ok, 0.99)}
    finally:
        stop_process(worker)


def _runner_disk_bytes(settings: Settings, folder: str = "detection") -> int:
    """Bytes of a runner's RocksDB folders (`folder`, every partition's; detection's by default), write-ahead log included."""
    return sum(f.stat().st_size for d in settings.data_dir.rglob(folder) if d.is_dir()
               for f in d.rglob("*") if f.is_file())


def _visitor_state(settings: Settings) -> dict:
    """The visitors held now (keys of the visitor state changelog) and the bytes of detection's RocksDB folders
    (every partition's visitors and timer index, write-ahead log included)."""
    name = topics.changelog(settings.app_id, topics.VISITOR_TO_STATE)
    latest: dict = {}
    for _, _, _, key, value in clients.read_all(settings, name, group_prefix="bench-read"):
        latest[key] = value
    visitors = sum(v is not None for v in latest.values())
    disk = _runner_disk_bytes(settings)
    sizes = sorted(len(v) for v in latest.values() if v is not None)
    return {"visitors": visitors, "rocksdb_bytes": disk, "rocksdb_bytes_per_visitor": round(disk / max(1, visitors), 1),
            "value_bytes_median": sizes[len(sizes) // 2] if sizes else None}


def _wait_drained(sampler: Sampler, target: int, timeout_s: float) -> float | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sampler.samples and sampler.samples[-1][2] >= target:
            return sampler.samples[-1][0]
        time.sleep(0.5)
    return None


def _latencies(settings: Settings, spec: topics.TopicSpec, since_ms: int, until_ms: int,
               signal_of: dict[str, str]) -> list[tuple[float, str]]:
    """(ms from the signal's time to the record, decision id) of every record now on the topic.

    Decisions also fill `signal_of` (decision id -> signal name).
    """
    name = settings.topic(spec.name)
    codec = clients.codec(settings)
    out = []
    for _, _, timestamp, _, value in clients.read_all(settings, name, group_prefix="bench-read"):
        rec = codec.decode(name, spec.schema, value)
        if "signal" in rec:
            signal_of[rec["decision_id"]] = rec["signal"]
        if since_ms <= rec["signal_ts"] <= until_ms:
            out.append((timestamp - rec["signal_ts"], rec["decision_id"]))
    return out


def _hops(settings: Settings, since_ms: int, until_ms: int, timed: set[str]) -> dict:
    """Latency of each hop (ms, p50/p95/p99) of event-driven signals raised in [since_ms, until_ms].

    From the record timestamps each stage's producer set: the event's time to its signal's record
    (detection), to the enriched record (data), to the decision and to the delivery. Where the time
    goes, stage by stage, under the offered load.
    """
    codec = clients.codec(settings)

    def read(spec):
        name = settings.topic(spec.name)
        return [(ts, codec.decode(name, spec.schema, v))
                for _, _, ts, _, v in clients.read_all(settings, name, group_prefix="bench-read")]

    signals = {r["signal_id"]: (ts, r["ts"]) for ts, r in read(topics.SIGNALS)
               if since_ms <= r["ts"] <= until_ms and r["signal"] not in timed}
    enriched = {r["signal"]["signal_id"]: ts for ts, r in read(topics.ENRICHED) if r["signal"]["signal_id"] in signals}
    decided = {r["decision_id"]: (ts, r["signal_id"]) for ts, r in read(topics.DECISIONS) if r["signal_id"] in enriched}
    hops = {
        "event_to_signal": [ts - event_ts for ts, event_ts in signals.values()],
        "signal_to_enriched": [ts - signals[sid][0] for sid, ts in enriched.items()],
        "enriched_to_decision": [ts - enriched[sid] for ts, sid in decided.values()],
        "decision_to_delivery": [ts - decided[r["decision_id"]][0] for ts, r in read(topics.DELIVERY)
                                 if r["decision_id"] in decided],
    }
    return {name: {"records": len(xs), "p50": pct(xs, .5), "p95": pct(xs, .95), "p99": pct(xs, .99)}
            for name, xs in hops.items()}


def _cpu_shares(pids: dict[str, tuple[int | None, bool]]):
    """A function returning, since this call, the machine's busy share and each process's CPU (% of one core).

    `pids`: name -> (pid, whether its child processes count as its own).
    """
    procs = {}
    for name, (pid, with_children) in pids.items():
        try:
            procs[name] = (psutil.Process(pid), with_children)
        except (psutil.Error, TypeError, ValueError):
            pass

    def cpu_of(entry):
        return cpu_seconds(_processes(*entry))

    start, machine0, before = time.monotonic(), psutil.cpu_times(), {n: cpu_of(p) for n, p in procs.items()}

    def shares() -> dict:
        elapsed, machine1 = time.monotonic() - start, psutil.cpu_times()
        out = {"machine_busy_percent": round(100 * (1 - (machine1.idle - machine0.idle) / (sum(machine1) - sum(machine0))), 1),
               "cores": psutil.cpu_count()}
        for n, p in procs.items():
            out[f"{n}_cpu_percent_of_one_core"] = round(100 * (cpu_of(p) - before[n]) / elapsed, 1)
        return out
    return shares


def _processes(proc, with_children: bool = True) -> list:
    """The process and, when asked, its children (detection runs in a child of the worker)."""
    try:
        return [proc, *(proc.children(recursive=True) if with_children else [])]
    except psutil.Error:  # it ended
        return []


def cpu_seconds(procs: list) -> float:
    """CPU seconds (user and system) of the processes, leaving out one that just ended."""
    total = 0.0
    for proc in procs:
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


BACKLOG_EVENTS, BACKLOG_VISITORS, BENCH_PARTITIONS = 50_000, 5_000, 8
WARM_S = 20  # seconds of the offered load before the one measured


def _backlog(settings: Settings, sampler: Sampler, events: int, customers: int, seed: int) -> dict:
    """Produce `events` at once, then time the worker draining them through detection and the whole pipeline."""
    from streams.tools.simulator import run_simulator

    base = sampler.samples[-1]
    since = int(time.time() * 1000)
    run_simulator(settings, rate=0, duration_s=None, seed=seed, customers=customers, count=events, quiet=True)
    drained = _wait_drained(sampler, base[2] + events, 900)
    end = sampler.samples[-1]
    detect_s = (drained or end[0]) - base[0]
    piped = _wait_pipeline(settings, 600) if drained else None
    cpu_end = sampler.cpu()
    out = {"events": events, "visitors": customers, "drained": drained is not None,
           "detection_events_per_s": round((end[2] - base[2]) / detect_s, 1),
           "pipeline_events_per_s": round(events / (piped - base[0]), 1) if piped else None,
           "worker_cpu_us_per_event": round((cpu_end - base[1]) / events * 1e6, 1),
           "worker_cpu_percent_of_one_core": round((end[1] - base[1]) / (end[0] - base[0]) * 100, 1)}
    out["changelog"] = _changelog_bytes(settings, events, since, int(time.time() * 1000))
    return out


def worker_env(settings: Settings) -> dict:
    """A bench worker's environment for `settings`."""
    return {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ENGAGE_TOPIC_PREFIX": settings.topic_prefix, "ENGAGE_APP_ID": settings.app_id,
            "ENGAGE_DATA_DIR": str(settings.data_dir), "ENGAGE_LOG_LEVEL": "warning",
            "ENGAGE_PARTITIONS": str(settings.partitions), "ENGAGE_EXACTLY_ONCE": "on" if settings.exactly_once else "off",
            "ENGAGE_HTTP_PORT": "0"}  # no context service, but where measured: a bench beside `make run` would take its port


def _worker_on_backlog(settings: Settings, work: Path, events: int) -> dict:
    """A new worker started on a backlog already stored: detection and whole-pipeline events/s, CPU µs per event.

    Timed from the first committed progress (the worker's start-up and group join are not the job),
    by committed offsets sampled four times a second.
    """
    worker = spawn(["worker"], work / f"worker-{settings.app_id}.log", env=worker_env(settings))
    try:
        sampler = Sampler(worker.pid, settings, period_s=0.25)
        sampler.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (sampler.samples and sampler.samples[-1][2] > 0):
            time.sleep(0.1)
        drained = _wait_drained(sampler, events, 600)
        first = next(x for x in sampler.samples if x[2] > 0)
        end = next(x for x in sampler.samples if x[2] >= events) if drained else sampler.samples[-1]
        rate = (end[2] - first[2]) / max(1e-6, end[0] - first[0])
        start = first[0] - first[2] / rate  # when the first of those events was taken, at that rate
        piped = _wait_pipeline(settings, 300) if drained else None
        sampler.stop.set()
        return {"detection_events_per_s": round(rate, 1),
                "pipeline_events_per_s": round(events / (piped - start), 1) if piped else None,
                "worker_cpu_us_per_event": round((end[1] - first[1]) / max(1, end[2] - first[2]) * 1e6, 1),
                "drained": drained is not None, "peak_rss_mib": sampler.peak_rss_mib()}
    finally:
        stop_process(worker)


def _restore_s(settings: Settings, work: Path, probe_seed: int, data_dir: Path | None = None) -> float | None:
    """Seconds from a worker started with an empty state folder (its tables only on the changelogs), or with
    `data_dir`, to detection's commit of a new event sent as it starts: its start-up, and detection's
    restore of its own state (the other runners restore theirs meanwhile)."""
    from streams.tools.simulator import run_simulator

    settings = settings.with_(data_dir=data_dir or work / f"restored-{settings.app_id}")
    t0 = time.monotonic()
    worker = spawn(["worker"], work / f"worker-restore-{settings.app_id}.log", env=worker_env(settings))
    try:
        sampler = Sampler(worker.pid, settings, period_s=0.25)
        before = sampler.committed()
        run_simulator(settings, rate=0, duration_s=None, seed=probe_seed, customers=10, count=8, quiet=True)
        sampler.start()
        done = _wait_drained(sampler, before + 8, 300)
        sampler.stop.set()
        return round(done - t0, 1) if done else None
    finally:
        stop_process(worker)


RESTORE_EVENTS, RESTORE_CUSTOMERS = 150_000, 100_000


def _restore_phase(settings: Settings, work: Path, run_id: str) -> dict:
    """A worker that built the state of ~100,000 visitors is replaced: by one with its RocksDB folder (a
    restart), and by one with an empty folder, which restores every table from the changelogs."""
    from streams.tools.bench_failover import failover_phase
    from streams.tools.simulator import run_simulator

    rs = settings.with_(topic_prefix=f"bench-{run_id}-restore.", app_id=f"engage-bench-{run_id}-restore",
                        data_dir=work / "state-restore")
    ensure_topics(rs)
    run_simulator(rs, rate=0, duration_s=None, seed=5, customers=RESTORE_CUSTOMERS, count=RESTORE_EVENTS, quiet=True)
    built = _worker_on_backlog(rs, work, RESTORE_EVENTS)
    live: dict = {}
    changelogs = _changelog_bytes(rs, RESTORE_EVENTS, live=live)
    with_state = sorted(set(live.get(topics.CUSTOMER_TO_PROFILE, {})) & set(live.get(topics.KEY_TO_JOURNEY, {})))
    print("[bench] the context service, 50 clients at once ...", flush=True)
    context = _context_latency(rs, work, [json.loads(k) for k in with_state])
    return {"events": RESTORE_EVENTS, "customers": RESTORE_CUSTOMERS, "visitor_state": _visitor_state(rs),
            "tables": _table_state(rs, live), "context_service": context, "built": built,
            "changelog_bytes": changelogs["bytes"], "changelog_records": changelogs["records"],
            "restart_with_its_rocksdb_s": _restore_s(rs, work, probe_seed=98, data_dir=rs.data_dir),
            "restore_from_changelogs_s": _restore_s(rs, work, probe_seed=99),
            "failover": failover_phase(rs, work, worker_env)}


VISITORS_RESTORED = 100_000


def _visitors_restore_phase(settings: Settings, work: Path, run_id: str) -> dict:
    """The state of 100,000 visitors (two page views each, no customer), built by a worker, then restored from the
    changelogs by a worker with an empty folder: seconds from its start to committing a new event, the records and
    bytes it read, and the RocksDB bytes per visitor it built."""
    import random

    vs = settings.with_(topic_prefix=f"bench-{run_id}-visitors.", app_id=f"engage-bench-{run_id}-visitors",
                        data_dir=work / "state-visitors")
    ensure_topics(vs)
    codec, producer = clients.codec(vs), clients.producer(vs, **{"linger.ms": 20})
    topic, rng, now = vs.topic(topics.EVENTS.name), random.Random(6), int(time.time() * 1000)
    order = [v for v in range(VISITORS_RESTORED) for _ in range(2)]
    rng.shuffle(order)
    for i, v in enumerate(order):
        ev = {"event_id": f"vr-{i:07d}", "ts": now - 60_000 + i // 10, "visitor_id": f"vr-{v:06d}", "customer_id": None,
              "channel": "web", "type": "page_view", "path": rng.choice(("/", "/plans", "/help", "/phones")), "query": None,
              "value": None, "attributes": {}}
        clients.produce_when_room(producer, topic, key=ev["visitor_id"].encode(), value=codec.encode(topic, "Interaction", ev))
    producer.flush(60)
    built = _worker_on_backlog(vs, work, len(order))
    live: dict = {}
    changelog = _changelog_bytes(vs, len(order), live=live)  # one read of the changelogs, 40 MB
    visitors = len(live.get(topics.VISITOR_TO_STATE, {}))
    restored = vs.with_(data_dir=work / "state-visitors-restored")
    seconds = _restore_s(restored, work, probe_seed=97, data_dir=restored.data_dir)
    return {"visitors": visitors, "events": len(order), "built": built,
            "changelog_records": changelog["records"], "changelog_bytes": changelog["bytes"],
            "restore_from_changelogs_s": seconds,
            "rocksdb_bytes_per_visitor_restored": round(_runner_disk_bytes(restored) / max(1, visitors), 1)}


def _timed_signals() -> set[str]:
    """Signals of absence and dwell rules: stamped with their deadline, they fire once the partition's clock passes
    it plus the allowed lateness, so their latency is that wait, by design."""
    from streams.detection.rules import load_detection

    return {r.signal for r in load_detection(REPO_ROOT / "rules" / "detection.yaml").rules if r.timed}


def _event_latencies(settings: Settings, since: int, until: int) -> dict:
    """Event to decision and to delivery, p50/p95/p99 and the share within 100 ms, for the signals of events sent
    between `since` and `until` (ms), event-driven and timer signals apart."""
    timed, out = _timed_signals(), {}
    signal_of: dict[str, str] = {}
    for spec, name in ((topics.DECISIONS, "decision"), (topics.DELIVERY, "delivery")):
        lat = _latencies(settings, spec, since, until, signal_of)
        for label, keep in (("event_signals", lambda sig: sig not in timed), ("timer_signals", lambda sig: sig in timed)):
            xs = [ms for ms, did in lat if keep(signal_of.get(did))]
            out[f"latency_event_to_{name}_ms_{label}"] = {
                "records": len(xs), "p50": pct(xs, .5), "p95": pct(xs, .95), "p99": pct(xs, .99),
                "share_within_100ms": round(sum(x <= 100 for x in xs) / len(xs), 3) if xs else None}
    return out


def _fixed_load_exactly_once(settings: Settings, work: Path, run_id: str, rate: float, duration_s: float) -> dict:
    """Phase 1 again on a worker under ENGAGE_EXACTLY_ONCE (its own app id and topics): what a transaction per
    batch costs in latency and CPU at the same offered load."""
    from streams.tools.simulator import run_simulator

    es = settings.with_(topic_prefix=f"bench-{run_id}-eo.", app_id=f"engage-bench-{run_id}-eo",
                        data_dir=work / "state-eo", exactly_once=True)
    ensure_topics(es)
    worker = spawn(["worker"], work / "worker-eo.log", env=worker_env(es))
    sampler = Sampler(worker.pid, es)
    try:
        sampler.start()
        warm = run_simulator(es, rate=200, duration_s=None, seed=1, customers=500, count=1000, quiet=True)
        if _wait_drained(sampler, warm, 120) is None:
            return {"error": f"the worker did not process the warm-up; see {work / 'worker-eo.log'}"}
        since, base = int(time.time() * 1000), sampler.samples[-1]
        sent = run_simulator(es, rate=rate, duration_s=duration_s, seed=2, customers=500, quiet=True)
        until = int(time.time() * 1000)
        drained = _wait_drained(sampler, warm + sent, 300)
        end = sampler.samples[-1]
        _wait_pipeline(es, 120)
        sampler.stop.set()
        time.sleep(3)
        return {"offered_events_per_s": rate, "events": sent, "drained": drained is not None,
                "worker_cpu_percent_of_one_core": round((end[1] - base[1]) / (end[0] - base[0]) * 100, 1),
                **_event_latencies(es, since, until)}
    finally:
        sampler.stop.set()
        stop_process(worker)


def _rounds(settings: Settings, work: Path, run_id: str, rounds: int) -> dict:
    """The worker and the anchors on the same stored backlog, in interleaved rounds (a fresh copy each round)."""
    from streams.tools import anchors
    from streams.tools.simulator import run_simulator

    kinds = ["worker", "worker_exactly_once", *anchors.KINDS]
    per: dict[str, list[dict]] = {k: [] for k in kinds}
    first_round: dict = {}
    for r in range(1, rounds + 1):
        rs = settings.with_(topic_prefix=f"bench-{run_id}-r{r}.", app_id=f"engage-bench-{run_id}-r{r}",
                            data_dir=work / f"state-r{r}")
        ensure_topics(rs)
        run_simulator(rs, rate=0, duration_s=None, seed=3, customers=BACKLOG_VISITORS, count=BACKLOG_EVENTS, quiet=True)
        events_topic = rs.topic(topics.EVENTS.name)
        anchors.make_output_topic(rs, events_topic)
        order = kinds[r - 1:] + kinds[:r - 1]  # each runner goes first once: no fixed position in the round
        for kind in order:
            print(f"[bench] round {r}/{rounds}: {kind} on {BACKLOG_EVENTS} stored events ...", flush=True)
            if kind == "worker_exactly_once":
                # the same backlog (same seed) under topics of its own: its outputs are not the other worker's
                es = rs.with_(topic_prefix=f"bench-{run_id}-r{r}-eo.", app_id=f"engage-bench-{run_id}-r{r}-eo",
                              data_dir=work / f"state-r{r}-eo", exactly_once=True)
                ensure_topics(es)
                run_simulator(es, rate=0, duration_s=None, seed=3, customers=BACKLOG_VISITORS, count=BACKLOG_EVENTS,
                              quiet=True)
                res = _worker_on_backlog(es, work, BACKLOG_EVENTS)
            elif kind == "worker":
                res = _worker_on_backlog(rs, work, BACKLOG_EVENTS)
                if r == 1:
                    first_round = {"changelog": _changelog_bytes(rs, BACKLOG_EVENTS), "visitor_state": _visitor_state(rs),
                                   "restore_s": _restore_s(rs, work, probe_seed=99)}
            else:
                res = anchors.run_anchor(kind, rs.bootstrap_servers, events_topic, BACKLOG_EVENTS, rs.partitions, f"r{r}")
            per[kind].append(res)
    summary: dict = {"events": BACKLOG_EVENTS, "visitors": BACKLOG_VISITORS, "partitions": settings.partitions,
                     "rounds": rounds, **first_round, "runs": per}
    worker_rates = [x["detection_events_per_s"] for x in per["worker"]]
    worker_cpu = [x["worker_cpu_us_per_event"] for x in per["worker"]]
    table = {}
    for kind in kinds:
        rates = [x.get("events_per_s", x.get("detection_events_per_s")) for x in per[kind] if "error" not in x]
        cpus = [x.get("cpu_us_per_event", x.get("worker_cpu_us_per_event")) for x in per[kind] if "error" not in x]
        if not rates:
            table[kind] = {"error": per[kind][-1].get("error")}
            continue
        table[kind] = {"events_per_s": _spread(rates), "cpu_us_per_event": _spread(cpus),
                       "events_per_s_vs_worker": round(statistics.median(rates) / statistics.median(worker_rates), 2),
                       "cpu_vs_worker": round(statistics.median(cpus) / statistics.median(worker_cpu), 3)}
    for kind in ("worker", "worker_exactly_once"):
        pipe = [x["pipeline_events_per_s"] for x in per[kind] if x.get("pipeline_events_per_s")]
        if "error" not in table[kind]:
            table[kind]["pipeline_events_per_s"] = _spread(pipe) if pipe else None
    summary["table"] = table
    return summary


def _spread(xs: list[float]) -> dict:
    return {"min": round(min(xs), 1), "median": round(statistics.median(xs), 1), "max": round(max(xs), 1)}


def run_bench(settings: Settings, rate: float, duration_s: float, out: Path | None) -> dict:
    from streams.tools.simulator import run_simulator

    run_id = time.strftime("%Y%m%d-%H%M%S")
    work = Path(tempfile.mkdtemp(prefix="engage-bench-"))
    settings = settings.with_(topic_prefix=f"bench-{run_id}.", app_id=f"engage-bench-{run_id}", data_dir=work / "state",
                              partitions=BENCH_PARTITIONS)
    broker = localkafka.LocalBroker(port=19292, data_dir=work / "kafka")
    started = False
    if not settings.external_kafka:
        print("[bench] starting a local Kafka broker ...", flush=True)
        started = localkafka.up(broker)
        settings = settings.with_(bootstrap_servers=broker.bootstrap)
    wait_for_broker(settings, 60)
    ensure_topics(settings)
    worker = spawn(["worker"], work / "worker.log", env=worker_env(settings))
    result: dict = {"run": run_id, "machine": machine(), "partitions": settings.partitions}
    try:
        print("[bench] rule evaluation micro-benchmark ...", flush=True)
        result["rule_evaluation"] = rule_eval_us()
        sampler = Sampler(worker.pid, settings)
        sampler.start()
        # the broker is as new as the topics: its JIT compiles for about a minute, and the first run of each fresh
        # broker at the offered rate measured the compiler (event -> delivery p99 70 ms in one run, 256 in the
        # next, 2026-12-02); the fixed load measures a warm pipeline, so it starts after WARM_S at the same rate
        print(f"[bench] warming up: {rate:g} events/s for {WARM_S} s ...", flush=True)
        warm = run_simulator(settings, rate=rate, duration_s=WARM_S, seed=1, customers=500, quiet=True)
        if _wait_drained(sampler, warm, 120) is None:
            raise RuntimeError(f"the worker did not process the warm-up; see {work / 'worker.log'}")
        # Phase 1: fixed offered load
        since = int(time.time() * 1000)
        base = sampler.samples[-1]
        print(f"[bench] offered load {rate:g} events/s for {duration_s:g} s ...", flush=True)
        # the simulator runs in this process (the worker and the broker are its children: not counted in it)
        shares = _cpu_shares({"worker": (worker.pid, True), "broker": (broker.pid(), False),
                              "simulator": (os.getpid(), False)})
        sent = run_simulator(settings, rate=rate, duration_s=duration_s, seed=2, customers=500, quiet=True)
        t_end_send = time.monotonic()
        cpu_during_load = shares()
        until = int(time.time() * 1000)
        drained = _wait_drained(sampler, warm + sent, 300)
        end = sampler.samples[-1]
        elapsed = (drained or end[0]) - base[0]
        done = (end[2] if drained is None else warm + sent) - base[2]
        result["fixed_load"] = {
            "offered_events_per_s": rate, "events": sent, "send_seconds": round(t_end_send - base[0], 1),
            "detection_events_per_s": round(done / elapsed, 1), "drained": drained is not None,
            "lag_after_send_s": round((drained - t_end_send), 1) if drained else None,
            "worker_cpu_percent_of_one_core": round((end[1] - base[1]) / (end[0] - base[0]) * 100, 1),
            "cpu_while_sending": cpu_during_load,
        }
        _wait_pipeline(settings, 120)
        # Phase 2: a backlog drained with 50 rules, published to the running worker (hot reload)
        from streams.rules import registry

        registry.publish(settings, "detection", fifty_rules(), "bench:fifty.yaml", author="bench")
        time.sleep(3)  # the worker's rules follower polls twice a second
        print("[bench] backlog of 10000 events with 50 rules ...", flush=True)
        result["backlog_fifty_rules"] = {"rules": 50, **_backlog(settings, sampler, 10_000, 1_000, seed=4)}
        sampler.stop.set()
        result["worker_peak_rss_mib"] = sampler.peak_rss_mib()
        time.sleep(3)
        # phase 1 only: later records are backlog, whose latency measures queueing, not the pipeline
        result.update(_event_latencies(settings, since, until))
        result["latency_hops_ms_event_signals"] = _hops(settings, since, until, _timed_signals())
        print("[bench] the collector: event -> in-page offer, and 202s a second ...", flush=True)
        from streams.tools.bench_web import collector_phase

        result["web"] = collector_phase(settings, work, worker_env(settings))
        stop_process(worker)
        print(f"[bench] offered load {rate:g} events/s for {duration_s:g} s, exactly-once ...", flush=True)
        result["fixed_load_exactly_once"] = _fixed_load_exactly_once(settings, work, run_id, rate, duration_s)
        # Phase 3: the backlog of 50,000 events from 5,000 visitors, stored first, drained by a new worker
        # and by the anchors (the runtimes a user could pick instead) in interleaved rounds
        result["backlog"] = _rounds(settings, work, run_id, rounds=3)
        print(f"[bench] restore: {RESTORE_EVENTS} events from {RESTORE_CUSTOMERS} customers, then a new worker ...", flush=True)
        result["restore"] = _restore_phase(settings, work, run_id)
        print(f"[bench] restore: {VISITORS_RESTORED} visitors from the changelogs ...", flush=True)
        result["visitors_restore"] = _visitors_restore_phase(settings, work, run_id)
    finally:
        stop_process(worker)
        if started:
            localkafka.down(broker)
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))
    print(f"[bench] written to {write_results(result, 'bench', run_id, out)}")
    return result
