"""Decides the `engage` command line: worker, simulator, adapters, topics, broker, rules, demo, bench.

Bad arguments and known failures print one line and exit 2, never a traceback; `rules validate`
exits 1 when a file is invalid, like a linter.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from streams.settings import Settings, SettingsError


class CliError(Exception):
    """A failure to report in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not a usage dump; main() adds the leading "engage: "
        sub = self.prog.partition(" ")[2]
        raise CliError(f"{sub + ': ' if sub else ''}{message} (see {self.prog} --help)")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be a finite number greater than zero: {text!r}")
        return value
    return parse


def _duration(text: str) -> int:
    """'0', '30m', '2h' as milliseconds (a bare number is minutes)."""
    from streams.settings import parse_duration_ms

    value = parse_duration_ms(text, default_unit="m")
    if value is None or value > 24 * 3_600_000:
        raise argparse.ArgumentTypeError(f"not a duration up to 24h like 30m or 2h: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="engage", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("worker", help="run the four stages (detection, data, decision, delivery)")

    s = sub.add_parser("simulate", help="play a scenario: CRM profiles, journeys, and people and agents answering offers")
    s.add_argument("--scenario", default="default",
                   help="a scenario file, or the name of one under bench/scenarios/ (default: default)")
    s.add_argument("--speed", type=_positive(float), default=1.0,
                   help="simulated seconds per wall-clock second (default 1)")
    s.add_argument("--rate", type=_positive(float), default=None,
                   help="journeys starting per simulated second (default: the scenario's arrival_rate)")
    s.add_argument("--duration", type=_positive(float), default=None,
                   help="simulated seconds of arrivals (default: the scenario's duration)")
    s.add_argument("--seed", type=int, default=None, help="default: the scenario's seed (same seed, same traffic)")
    s.add_argument("--truth", type=Path, default=None, help="write each person's hidden truth and fate here (JSON lines)")
    s.add_argument("--no-react", action="store_true", help="do not answer deliveries with outcomes")

    a = sub.add_parser("adapter", help="run a channel adapter")
    a.add_argument("kind", choices=["console", "webhook", "email", "desktop"],
                   help="desktop: the agents' page on ENGAGE_DESKTOP_PORT, behind ENGAGE_DESKTOP_TOKEN")
    a.add_argument("--from-beginning", action="store_true")
    a.add_argument("--url", default=None, help="webhook: where to POST (default ENGAGE_WEBHOOK_URL; the secret "
                                                 "comes from ENGAGE_WEBHOOK_SECRET only)")
    a.add_argument("--channels", default=None,
                   help="webhook: the delivery channels it takes, comma-separated (default ENGAGE_WEBHOOK_CHANNELS, else sms)")

    sub.add_parser("collector", help="the HTTP collector for browser events (POST /events), on ENGAGE_COLLECTOR_PORT")

    t = sub.add_parser("topics", help="create or list the engine's topics")
    t.add_argument("action", choices=["create", "list"])

    b = sub.add_parser("broker", help="the local Kafka broker (KRaft) on 127.0.0.1")
    b.add_argument("action", choices=["up", "down", "status"])
    b.add_argument("--port", type=_positive(int), default=9092)

    r = sub.add_parser("rules", help="validate, publish, roll back and backtest rule sets")
    rs = r.add_subparsers(dest="action", required=True, parser_class=_Parser)
    rv = rs.add_parser("validate", help="check rule files; errors name file, line and reason")
    rv.add_argument("paths", nargs="*", type=Path)
    rp = rs.add_parser("publish", help="validate a rule file (detection, or actions*.yaml) and publish it to running workers")
    rp.add_argument("path", nargs="?", type=Path, default=None, help="default: rules/detection.yaml")
    rp.add_argument("--author", default=None)
    rh = rs.add_parser("history", help="the published versions, oldest first")
    rh.add_argument("--name", default="detection", choices=("detection", "actions", "segments", "customer"))
    rr = rs.add_parser("rollback", help="republish an earlier version (default: the one before the current)")
    rr.add_argument("--to", dest="to_version", default=None, help="a version (or its first characters)")
    rr.add_argument("--name", default="detection", choices=("detection", "actions", "segments", "customer"))
    rr.add_argument("--author", default=None)
    rb = rs.add_parser("backtest", help="what a rule file would have found in stored events (touches nothing live)")
    rb.add_argument("--from", dest="from_", required=True, help="ISO time (UTC unless given), or 2h / 7d ago")
    rb.add_argument("--to", default="now", help="ISO time, 'now' (default), or a time ago")
    rb.add_argument("--file", type=Path, default=None, help="default: rules/detection.yaml")
    rb.add_argument("--examples", type=_positive(int), default=3)
    rb.add_argument("--json", action="store_true", help="print the report as JSON")

    sc = sub.add_parser("schemas", help="register a producer's writer schema (a newer or older version of a contract schema)")
    scs = sc.add_subparsers(dest="action", required=True, parser_class=_Parser)
    sr = scs.add_parser("register", help="check a schema file against the current one and publish it to engage.schemas")
    sr.add_argument("path", type=Path)
    sr.add_argument("--author", default=None)
    scs.add_parser("list", help="the writer schemas registered so far")

    pr = sub.add_parser("profiles", help="load a CRM export into engage.profiles")
    prs = pr.add_subparsers(dest="action", required=True, parser_class=_Parser)
    pl = prs.add_parser("load", help="check every row of a CSV or JSON Lines file, then publish it (nothing if a row is wrong)")
    pl.add_argument("path", type=Path)
    pl.add_argument("--format", choices=("csv", "jsonl"), default=None, help="default: from the file name")
    pl.add_argument("--check", action="store_true", help="only check the file; publish nothing")

    fg = sub.add_parser("forget", help="forget a customer: their state in every table, their identity links and profile")
    fg.add_argument("customer_id")
    fg.add_argument("--by", default=None, help="who asks (default: your user name)")
    fg.add_argument("--reason", default="", help="e.g. the ticket of the erasure request")

    mg = sub.add_parser("merge", help="merge a duplicate customer into another: its journey, purchases and contact "
                                      "counts join theirs, its later signals follow")
    mg.add_argument("from_customer_id", help="the duplicate, merged away")
    mg.add_argument("into_customer_id", help="the customer that keeps both histories")
    mg.add_argument("--by", default=None, help="who asks (default: your user name)")
    mg.add_argument("--reason", default="", help="e.g. the CRM's duplicate record")

    d = sub.add_parser("demo", help="broker (unless KAFKA_BOOTSTRAP_SERVERS), worker, simulator and console adapter")
    d.add_argument("--speed", type=_positive(float), default=1.0, help="simulated seconds per second (default 1)")
    d.add_argument("--duration", type=_positive(float), default=None, help="stop by itself after this many seconds")

    be = sub.add_parser("bench", help="measure the pipeline under a fixed offered load")
    be.add_argument("--rate", type=_positive(float), default=1000.0, help="offered events per second (default 1000)")
    be.add_argument("--duration", type=_positive(float), default=60.0, help="seconds of offered load (default 60)")
    be.add_argument("--out", type=Path, default=None)

    from streams.tools.chaos import FAULTS

    ch = sub.add_parser("chaos", help="the fault suite: workers killed, the broker stopped and frozen, state deleted; "
                                      "what was lost, repeated, and how long recovery took")
    ch.add_argument("--events", type=_positive(int), default=100_000,
                    help="events streamed during the kill cycles (default 100000; a fifth for each other fault)")
    ch.add_argument("--cycles", type=_positive(int), default=20, help="kill -9 cycles (default 20)")
    ch.add_argument("--rate", type=_positive(float), default=250.0, help="events per second streamed (default 250)")
    ch.add_argument("--only", action="append", choices=FAULTS, default=None,
                    help="run only this fault; repeat for several (default: all four)")
    ch.add_argument("--exactly-once", action="store_true",
                    help="run the workers with ENGAGE_EXACTLY_ONCE=on (a Kafka transaction per batch)")
    ch.add_argument("--out", type=Path, default=None)

    bd = sub.add_parser("bench-decisions", help="the engine against naive, random and oracle policies on each scenario")
    bd.add_argument("--scenario", action="append", default=None,
                    help="a scenario name or file; repeat for several (default: the four shipped ones)")
    bd.add_argument("--speed", type=_positive(float), default=20.0, help="simulated seconds per second (default 20)")
    bd.add_argument("--warm-up", type=_duration, default=None,
                    help="simulated time played before the scored part, while the engine learns (default 60m)")
    bd.add_argument("--out", type=Path, default=None)

    rpl = sub.add_parser("replay", help="replay stored events through a pipeline of its own (or run a shadow on live "
                                        "traffic) with candidate rules, and diff what it decides against the live one")
    rpl.add_argument("--from", dest="from_", default=None, help="ISO time (UTC unless given), or 2h / 7d ago")
    rpl.add_argument("--to", default="now", help="ISO time, 'now' (default), or a time ago")
    rpl.add_argument("--rules", type=Path, default=None, help="a candidate detection rule file (default: the live rules)")
    rpl.add_argument("--actions", type=Path, default=None, help="a candidate action rule file (default: the live ones)")
    rpl.add_argument("--shadow", action="store_true", help="run the candidate rules on live traffic, never delivered")
    rpl.add_argument("--diff", action="store_true", help="with --shadow: diff the shadow against live over --from .. --to")
    rpl.add_argument("--clean", action="store_true", help="with --shadow: delete the shadow's topics and groups")
    rpl.add_argument("--keep", action="store_true", help="keep the replay's topics (prefix printed) to look at them")
    rpl.add_argument("--examples", type=_positive(int), default=3)
    rpl.add_argument("--json", action="store_true", help="print the diff as JSON")
    rpl.add_argument("--out", type=Path, default=None, help="also write the diff as JSON to this file")
    rpl.add_argument("--timeout", type=_duration, default=3_600_000, help="give up after this long (default 1h)")

    rp_ = sub.add_parser("report", help="what the engine's decisions earned")
    rps = rp_.add_subparsers(dest="report", required=True, parser_class=_Parser)
    lift = rps.add_parser("lift", help="treated against control: conversion, incremental conversions and revenue, with 95% CIs")
    lift.add_argument("--from", dest="from_", default="30d", help="ISO time (UTC unless given), or 2h / 7d ago (default 30d)")
    lift.add_argument("--to", default="now", help="ISO time, 'now' (default), or a time ago")
    lift.add_argument("--json", action="store_true", help="print the report as JSON")
    lift.add_argument("--html", type=Path, default=None, help="where to write the chart (default .engage/reports/)")
    return p


def rule_set_of(path: Path) -> str:
    """The rule set a file is, by its name: actions*.yaml, segments*.yaml, customer*.yaml, any other detection rules."""
    for prefix, name in (("action", "actions"), ("segment", "segments"), ("customer", "customer")):
        if path.stem.startswith(prefix):
            return name
    return "detection"


def _rules_validate(settings: Settings, paths: list[Path]) -> int:
    from streams.rules.loader import RuleError, read_rule_file
    from streams.rules.registry import COMPILERS

    paths = paths or sorted(settings.rules_dir.glob("*.yaml"))
    failed = 0
    for path in paths:
        try:
            rs = COMPILERS[rule_set_of(path)](*read_rule_file(path))  # as a worker compiles a published version
        except RuleError as exc:
            print(f"invalid: {exc}", file=sys.stderr)
            failed += 1
            continue
        n = len(getattr(rs, "rules", None) or getattr(rs, "actions", None) or getattr(rs, "segments", []))
        print(f"ok: {path} ({n} rules, version {rs.version})")
    return 1 if failed else 0


def _rules(settings: Settings, args) -> int:
    from streams.admin import ensure_topics, wait_for_broker
    from streams.rules import registry

    if args.action == "validate":
        return _rules_validate(settings, args.paths)
    if args.action == "backtest":
        return _rules_backtest(settings, args)
    wait_for_broker(settings, 15)
    ensure_topics(settings)
    if args.action == "publish":
        from streams.rules.loader import read_rule_file

        path = args.path or settings.rules_dir / "detection.yaml"
        name = rule_set_of(path)
        text, file = read_rule_file(path)
        record = registry.publish(settings, name, text, file, author=args.author)
        print(f"published {record['name']} version {record['version']} by {record['author']}; running workers switch to it now")
    elif args.action == "history":
        versions = registry.history(settings, args.name)
        if not versions:
            print(f"nothing published for {args.name} yet: workers run {settings.rules_dir / (args.name + '.yaml')}")
        for i, p in enumerate(versions):
            r = p.record
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r["ts"] / 1000))
            mark = "  <- current" if i == len(versions) - 1 else ""
            print(f"{p.offset:5}  {when} UTC  {r['version']}  {r['author'] or ''}{mark}")
    else:
        record = registry.rollback(settings, args.name, args.to_version, author=args.author)
        print(f"rolled {args.name} back: version {record['version']} is current again ({record['author']})")
    return 0


def _profiles_load(settings: Settings, args) -> int:
    import click

    from streams.admin import ensure_topics, wait_for_broker
    from streams.data import load

    path: Path = args.path
    if not path.is_file():
        raise CliError(f"profiles load: {path} is not a file")
    try:
        fmt = load.file_format(path, args.format)
    except load.RowError as exc:
        raise CliError(f"profiles load: {exc}") from None
    now = load.now_ms()
    size = path.stat().st_size
    with click.progressbar(length=size, label=f"checking {path.name}", file=sys.stderr) as bar:
        found = load.check(path, fmt, now, progress=bar.update)
    if found.error_count:
        for line, reason in found.errors:
            print(f"{path}:{line}: {reason}", file=sys.stderr)
        more = found.error_count - len(found.errors)
        print(f"engage: {found.error_count} row(s) of {path} cannot be profiles"
              + (f" ({more} more not shown)" if more else "") + "; nothing was published", file=sys.stderr)
        return 1
    summary = (f"{found.rows} rows ({found.deletes} deletions), {found.customers} customers"
               + (f"; {found.duplicates} rows repeat a customer (the last one wins)" if found.duplicates else ""))
    if args.check:
        print(f"{path}: {summary}; all valid (nothing published: --check)")
        return 0
    wait_for_broker(settings, 15)
    ensure_topics(settings)
    with click.progressbar(length=size, label=f"publishing {path.name}", file=sys.stderr) as bar:
        done = load.publish(settings, path, fmt, now, progress=bar.update)
    if done.failed or done.stopped_at_line is not None:
        why = (f"line {done.stopped_at_line} changed since the check, publishing stopped there"
               if done.stopped_at_line is not None else f"first error: {done.first_failure}")
        print(f"engage: {done.published} of {found.rows} rows published, {done.failed} refused by the broker ({why}); "
              "load the file again: the latest record of a customer wins", file=sys.stderr)
        return 1
    print(f"published {path}: {summary}")
    return 0


def _forget(settings: Settings, args) -> int:
    from streams import clients, topics
    from streams.admin import ensure_topics, wait_for_broker
    from streams.audit import audit
    from streams.codec import DecodeError
    from streams.data.context import Refused, check_id
    from streams.schemas import whoami

    try:
        customer = check_id(args.customer_id)
    except Refused as exc:
        raise CliError(f"forget: {exc.reason}") from None
    reason = args.reason[:500]
    wait_for_broker(settings, 15)
    ensure_topics(settings)
    codec = clients.codec(settings)
    name = settings.topic(topics.IDENTITY.name)
    # (partition, key) -> linked to this customer now? Only their links are kept, not the whole topic
    linked: dict[tuple[int, bytes], bool] = {}
    try:
        for partition, _, _, key, value in clients.read_all(settings, name, group_prefix=f"{settings.app_id}-forget"):
            if key is None:
                continue
            try:
                mine = value is not None and codec.decode(name, topics.IDENTITY.schema, value)["customer_id"] == customer
            except DecodeError:
                mine = False  # not a link the engine can read (dead-lettered by the workers): not theirs to us
            if mine:
                linked[(partition, key)] = True
            else:
                linked.pop((partition, key), None)
    except clients.ReadError as exc:
        raise CliError(f"forget: could not read {name}: {exc}") from None
    links = list(linked)
    by = args.by or whoami()
    now = int(time.time() * 1000)
    producer = clients.producer(settings)
    # each tombstone on the partition its record is on (a CRM producer may partition otherwise than
    # murmur2): the profile's on every partition of engage.profiles, the links' where they were read
    profile_partitions = _partitions_of(settings, topics.PROFILES)
    sends = [(topics.IDENTITY, key, None, partition) for partition, key in links]
    sends += [(topics.PROFILES, customer.encode(), None, p) for p in profile_partitions]
    sends.append((topics.FORGET, customer.encode(), codec.encode(
        settings.topic(topics.FORGET.name), topics.FORGET.schema,
        {"customer_id": customer, "ts": now, "requested_by": by, "reason": reason}), None))
    spec, key, record = audit(customer, "cli", f"tombstones sent: the profile and {len(links)} identity link(s); "
                                               f"asked by {by}" + (f": {reason}" if reason else ""))
    sends.append((spec, key.encode(), codec.encode(settings.topic(spec.name), spec.schema, record), None))
    _send_or_fail(producer, settings, sends, "forget: the broker did not take every record")
    print(f"forgetting {customer}: profile and {len(links)} identity link(s) deleted; the workers delete the rest "
          f"and record what they did on {settings.topic(topics.AUDIT.name)}")
    return 0


def _merge(settings: Settings, args) -> int:
    import uuid

    from streams import clients, topics
    from streams.admin import ensure_topics, wait_for_broker
    from streams.audit import audit
    from streams.data.context import Refused, check_id
    from streams.data.enrich import validate_merge
    from streams.schemas import whoami

    try:
        source, into = check_id(args.from_customer_id), check_id(args.into_customer_id)
    except Refused as exc:
        raise CliError(f"merge: {exc.reason}") from None
    by = args.by or whoami()
    merge = {"merge_id": f"cli:{uuid.uuid4().hex}", "ts": int(time.time() * 1000), "from_key": source,
             "into_key": into, "source": "crm", "requested_by": by[:200], "reason": args.reason[:500]}
    try:
        validate_merge(merge)
    except ValueError as exc:
        raise CliError(f"merge: {exc}") from None
    wait_for_broker(settings, 15)
    ensure_topics(settings)
    codec = clients.codec(settings)
    spec, key, record = audit(source, "cli", f"merge {merge['merge_id']} into {into} sent; asked by {by}"
                              + (f": {merge['reason']}" if merge["reason"] else ""), action="merge")
    sends = [(s, k.encode(), codec.encode(settings.topic(s.name), s.schema, r), None)
             for s, k, r in ((topics.MERGES, source, merge), (spec, key, record))]
    _send_or_fail(clients.producer(settings), settings, sends, "merge: the broker did not take the merge")
    print(f"merging {source} into {into} (merge {merge['merge_id']}); the workers move the state and record what "
          f"they did on {settings.topic(topics.AUDIT.name)}")
    return 0


def _send_or_fail(producer, settings: Settings, sends: list, failure: str) -> None:
    """Produce (spec, key, value, partition or None) and wait for every ack; CliError(`failure` ...) if any failed."""
    failed: list = []
    for spec, key, value, partition in sends:
        producer.produce(settings.topic(spec.name), key=key, value=value,
                         on_delivery=lambda err, _m: failed.append(err) if err else None,
                         **({} if partition is None else {"partition": partition}))
    if producer.flush(30) or failed:
        raise CliError(f"{failure} ({failed[:1] or 'no answer'}); run it again")


def _partitions_of(settings: Settings, spec) -> list[int]:
    from streams import clients

    name = settings.topic(spec.name)
    meta = clients.admin(settings).list_topics(name, timeout=15)
    return sorted(meta.topics[name].partitions)


def _schemas(settings: Settings, args) -> int:
    from streams import schemas
    from streams.admin import ensure_topics, wait_for_broker
    from streams.codec import SchemaStore

    store = SchemaStore(settings.schemas_dir)
    if args.action == "register":
        loaded = schemas.load_writer(store, args.path)  # refused before any broker is needed
        wait_for_broker(settings, 15)
        ensure_topics(settings)
        record = schemas.register(settings, store, loaded, author=args.author)
        print(f"registered {record['name']} writer schema {record['fingerprint']}: workers read its records from now on")
        return 0
    wait_for_broker(settings, 15)
    lookup = schemas.RegisteredSchemas(settings, store)
    lookup.refresh()
    for fp, (name, _writer) in lookup.known.items():
        print(f"{fp.hex()}  {name}")
    if not lookup.known:
        print("no writer schemas registered")
    return 0


def _rules_backtest(settings: Settings, args) -> int:
    import json

    from streams import clients
    from streams.admin import wait_for_broker
    from streams.detection.backtest import format_report, parse_time, read_events, run_backtest
    from streams.detection.rules import load_detection

    start, end = parse_time(args.from_), parse_time(args.to)
    if end <= start:
        raise CliError(f"--to ({args.to}) must be later than --from ({args.from_})")
    rules = load_detection(args.file or settings.rules_dir / "detection.yaml")
    wait_for_broker(settings, 15)
    codec = clients.codec(settings)
    report = run_backtest(read_events(settings, start, end, codec), rules, settings.allowed_lateness_ms, end_ts=end,
                          examples=args.examples)
    print(json.dumps(report.as_dict(), indent=2) if args.json else format_report(report))
    return 0


def _replay(settings: Settings, args) -> int:
    import json
    import os

    from streams import clients
    from streams.detection.backtest import parse_time
    from streams.replay import run as replay
    from streams.replay.diff import diff, format_diff, iso

    def show(report: dict, title: str) -> None:
        print(json.dumps(report, indent=2) if args.json else format_diff(report, title))
        if args.out:
            args.out.write_text(json.dumps(report, indent=2))

    if not args.shadow and (args.diff or args.clean):
        raise CliError("replay: --diff and --clean go with --shadow")
    if args.shadow and args.clean:
        removed = replay.remove_run(replay.shadow_settings(settings))
        print(f"deleted the shadow's {len(removed)} topics and its consumer groups")
        return 0
    if args.shadow and not args.diff:
        if args.from_ or args.keep:
            raise CliError("replay --shadow runs from now on: --from and --keep do not apply (diff with --shadow --diff)")
        folder = settings.data_dir.parent / "shadow"
        ss, env = replay.prepare_shadow(settings, args.rules, args.actions, folder)
        started = iso(int(time.time() * 1000))
        print(f"shadow running as {ss.app_id} on topics {ss.topic_prefix}* (its deliveries go to "
              f"{ss.topic('engage.delivery')}, which no adapter reads), /metrics and /ready on port "
              f"{env['ENGAGE_HTTP_PORT']}; Ctrl-C stops it.\n"
              f"diff with: engage replay --shadow --diff --from {started}", flush=True)
        os.execve(sys.executable, [sys.executable, "-m", "streams.cli", "worker"], env)
    if args.from_ is None:
        raise CliError("replay: --from is needed (an ISO time, or a time ago such as 2h)")
    window = replay.Window(parse_time(args.from_), parse_time(args.to))
    if window.to_ms <= window.from_ms:
        raise CliError(f"replay: --to ({args.to}) must be later than --from ({args.from_})")
    if args.shadow:
        from streams.admin import wait_for_broker

        wait_for_broker(settings, 15)
        codec = clients.codec(settings)
        live = replay.read_outputs(settings, window, codec)
        shadow = replay.read_outputs(replay.shadow_settings(settings), window, codec)
        show(diff(*live, *shadow, examples=args.examples),
             f"shadow against live, {iso(window.from_ms)} .. {iso(window.to_ms)}")
        return 0
    report = replay.replay(settings, window, args.rules, args.actions, keep=args.keep, timeout_s=args.timeout / 1000,
                           examples=args.examples)
    r = report["run"]
    show(report, f"replay {r['id']} against live: {r['events']:,} events, {r['from']} .. {r['to']}, {r['seconds']} s"
         + (f" (kept: topics {r['topic_prefix']}*, app id {r['app_id']})" if r["kept"] else ""))
    return 0


def _report_lift(settings: Settings, args) -> int:
    import json

    from streams.admin import wait_for_broker
    from streams.clients import ReadError
    from streams.detection.backtest import parse_time
    from streams.report.chart import write_html
    from streams.report.lift import format_text, lift_report, read_attributions
    from streams.settings import REPO_ROOT

    start, end = parse_time(args.from_), parse_time(args.to)
    if end <= start:
        raise CliError(f"--to ({args.to}) must be later than --from ({args.from_})")
    wait_for_broker(settings, 15)
    try:
        got = read_attributions(settings, start, end)
    except ReadError as exc:
        raise CliError(str(exc)) from None
    report = lift_report(got.records, start, end, got.horizon_ms)
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    if got.skipped:
        print(f"{got.skipped} undecodable record(s) skipped", file=sys.stderr)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = write_html(report, args.html or REPO_ROOT / ".engage" / "reports" / f"lift-{stamp}.html")
    print(f"chart: {path}", file=sys.stderr if args.json else sys.stdout)  # --json keeps stdout pure JSON
    return 0


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    if args.command == "worker":
        from streams.worker import run_worker

        run_worker(settings)
    elif args.command == "simulate":
        from streams.tools.play import play
        from streams.tools.scenario import MAX_PEOPLE, MAX_RATE, load_scenario

        changes = {k: v for k, v in (("arrival_rate", args.rate), ("seed", args.seed),
                                     ("duration_ms", args.duration and int(args.duration * 1000))) if v is not None}
        scenario = load_scenario(args.scenario).with_(**changes)
        if scenario.arrival_rate > MAX_RATE or scenario.arrival_rate * scenario.duration_ms / 1000 > MAX_PEOPLE:
            raise CliError(f"simulate: at most {MAX_RATE:g} journeys per second and {MAX_PEOPLE:,} people in all")
        stats = play(settings, scenario, speed=args.speed, react=not args.no_react, truth_path=args.truth)
        print(f"[simulator] done: {stats.events} events from {stats.people} people; {stats.deliveries} offers answered")
    elif args.command == "adapter":
        if args.kind != "desktop":  # the desktop serves /metrics beside its page
            from streams import metrics

            metrics.serve(settings.metrics_port, settings.metrics_bind)
        if args.kind == "console":
            from streams.adapters.console import run_console

            run_console(settings, from_beginning=args.from_beginning)
        elif args.kind == "desktop":
            from streams.web.desktop import run_desktop

            try:
                run_desktop(settings)
            except ValueError as exc:
                raise CliError(f"adapter desktop: {exc}") from None
        else:
            from streams.adapters.kit import run_adapter

            try:
                adapter = _webhook(settings, args) if args.kind == "webhook" else _email(settings)
            except ValueError as exc:
                raise CliError(f"adapter {args.kind}: {exc}") from None
            run_adapter(settings, adapter, from_beginning=args.from_beginning)
    elif args.command == "collector":
        from streams.web.collector import run_collector

        run_collector(settings)
    elif args.command == "topics":
        from streams.admin import ensure_topics, wait_for_broker
        from streams import topics

        wait_for_broker(settings, 30)
        if args.action == "create":
            created = ensure_topics(settings)
            print(f"created {len(created)} topics" + (f": {', '.join(created)}" if created else " (all existed)"))
        else:
            for spec in topics.ALL:
                print(f"{settings.topic(spec.name):40} key={spec.key:28} value={spec.schema}"
                      + (" compacted" if spec.compacted else ""))
            for table in topics.TABLES:
                print(f"{topics.changelog(settings.app_id, table):40} key={'table key':28} value=JSON compacted "
                      f"(the {table} table's changelog)")
    elif args.command == "broker":
        from streams.tools import localkafka

        broker = localkafka.LocalBroker(port=args.port)
        if args.action == "up":
            started = localkafka.up(broker)
            print(f"Kafka {'started' if started else 'already running'} on {broker.bootstrap} (log: {broker.log_file})")
        elif args.action == "down":
            print("Kafka stopped" if localkafka.down(broker) else "Kafka was not running")
        else:
            pid = broker.pid()
            print(f"Kafka running on {broker.bootstrap}, pid {pid}" if pid else "Kafka not running")
            return 0 if pid else 3
    elif args.command == "rules":
        return _rules(settings, args)
    elif args.command == "schemas":
        return _schemas(settings, args)
    elif args.command == "profiles":
        return _profiles_load(settings, args)
    elif args.command == "forget":
        return _forget(settings, args)
    elif args.command == "merge":
        return _merge(settings, args)
    elif args.command == "demo":
        from streams.tools.demo import run_demo

        return run_demo(settings, speed=args.speed, duration_s=args.duration)
    elif args.command == "bench":
        from streams.tools.bench import run_bench

        run_bench(settings, rate=args.rate, duration_s=args.duration, out=args.out)
    elif args.command == "chaos":
        from streams.tools.chaos import run_chaos

        if args.exactly_once:
            settings = settings.with_(exactly_once=True)
        run_chaos(settings, events=args.events, cycles=args.cycles, rate=args.rate, only=args.only, out=args.out)
    elif args.command == "bench-decisions":
        from streams.tools.decisions import SCENARIOS, run_bench_decisions
        from streams.tools.scenario import load_scenario

        names = args.scenario or list(SCENARIOS)
        for name in names:
            load_scenario(name)  # every file checked before anything starts
        from streams.tools.decisions import WARM_UP_MS

        run_bench_decisions(settings, names, args.speed, args.out,
                            WARM_UP_MS if args.warm_up is None else args.warm_up)
    elif args.command == "report":
        return _report_lift(settings, args)
    elif args.command == "replay":
        return _replay(settings, args)
    return 0


def _webhook(settings, args):
    from streams.adapters.webhook import Webhook

    channels = [c.strip() for c in args.channels.split(",") if c.strip()] if args.channels else None
    return Webhook(args.url or settings.webhook_url, settings.webhook_secret,
                   frozenset(channels or settings.webhook_channels))


def _email(settings):
    from streams.adapters.customers import Customers
    from streams.adapters.mail import Email

    if not settings.smtp_from:
        raise ValueError("the sender's address is needed: set ENGAGE_SMTP_FROM")
    context_url = settings.context_url or f"http://127.0.0.1:{settings.http_port or 6066}"
    return Email(settings.smtp_host, settings.smtp_port, settings.smtp_from,
                 Customers(context_url, settings.context_token), starttls=settings.smtp_starttls,
                 user=settings.smtp_user, password=settings.smtp_password)


def main(argv: list[str] | None = None) -> None:
    from streams.admin import KafkaUnavailable
    from streams.detection.backtest import BacktestError
    from streams.tools.localkafka import BrokerError
    from streams.rules.loader import RuleError
    from streams.rules.registry import RegistryError
    from streams.schemas import RegistrationError
    from streams.statedir import StateDirError
    from streams.replay.run import ReplayError
    from streams.tools.chaos import ChaosError

    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except (CliError, SettingsError, KafkaUnavailable, BrokerError, RuleError, RegistryError, BacktestError,
            StateDirError, RegistrationError, ReplayError, ChaosError) as exc:
        print(f"engage: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
