"""Decides how the data stage runs on Faust: profiles and identity links re-keyed by the engine and kept in tables, signals identified and joined with them."""
from __future__ import annotations

import time
from typing import NamedTuple

from streams import topics
from streams.clients import partition_of
from streams.audit import audit
from streams.app import Engine
from streams.data import journey
from streams.data import customer_rules
from streams.data import value as values
from streams.data.enrich import (check_hops, enrich, identified, login_merge, redirected, validate_link, validate_merge,
                                 validate_profile, without_reserved)
from streams.data.value import ValueRules, customer_value, on_purchase
from streams.rules.book import RuleBook

STAGE = "data"
# a record's step in the journey, by its topic (a decision not to act is none)
STEP_OF = {topics.CONVERSIONS.name: journey.step_of_conversion, topics.DECISIONS.name: journey.step_of_decision,
           topics.OUTCOMES.name: journey.step_of_outcome}
SWEEP_EVERY_S = 3600.0
SWEEP_MOST = 10_000  # journeys deleted per partition per sweep (the rest at the next)


class DataStage(NamedTuple):
    repartition_profiles: object
    store_profiles: object
    route_signals: object
    enrich_signals: object
    customer_to_profile: object
    repartition_identity: object
    store_identity: object
    visitor_to_customer: object
    follow_customers: object
    customer_to_value: object
    key_to_journey: object
    customer_to_forgotten: object
    customer_to_successor: object
    repartition_merges: object


def _check_profile(msg, profile: dict) -> None:
    validate_profile(profile)
    if msg.key is None or msg.key.decode("utf-8", "replace") != profile["customer_id"]:
        raise ValueError("the record key must be the customer_id")


def _check_link(msg, link: dict) -> None:
    validate_link(link)
    if msg.key is None or msg.key.decode("utf-8", "replace") != link["visitor_id"]:
        raise ValueError("the record key must be the visitor_id")


def _rekeyed(engine: Engine, source: topics.TopicSpec, target: topics.TopicSpec, key_field: str, check):
    """A handler that checks a record of `source` and sends it on to `target` keyed by `key_field`, with
    the engine's partitioner; a tombstone (a deletion) is sent on as one."""
    def rekey(msg) -> list:
        if msg.value is None:
            if msg.key is None:
                raise ValueError(f"a tombstone on {source.name} needs the {key_field} as its key")
            return [(target, msg.key.decode("utf-8", "replace"), None)]
        record = engine.decode(source, msg.value)
        check(msg, record)
        return [(target, record[key_field], record)]
    return rekey


def register(engine: Engine, segments: ValueRules | RuleBook,
             customers: customer_rules.CustomerRuleSet | RuleBook | None = None):
    """`segments`, `customers`: fixed, or books that follow the published versions of rules/segments.yaml and
    rules/customer.yaml (no customer rules when not given)."""
    app = engine.app
    book = segments if isinstance(segments, RuleBook) else RuleBook(segments)
    customers = customers if isinstance(customers, RuleBook) else RuleBook(
        customers or customer_rules.CustomerRuleSet(name="customer", version="none", rules=()))
    customer_to_profile = app.Table(topics.CUSTOMER_TO_PROFILE, default=None, partitions=engine.settings.partitions,
                                    key_type=str)  # values are JSON (Faust's default for untyped tables)

    visitor_to_customer = app.Table(topics.VISITOR_TO_CUSTOMER, default=None, partitions=engine.settings.partitions,
                                    key_type=str)
    customer_to_value = app.Table(topics.CUSTOMER_TO_VALUE, default=None, partitions=engine.settings.partitions,
                                  key_type=str)

    key_to_journey = app.Table(topics.KEY_TO_JOURNEY, default=None, partitions=engine.settings.partitions,
                               key_type=str)
    customer_to_forgotten = app.Table(topics.CUSTOMER_TO_FORGOTTEN, default=None, partitions=engine.settings.partitions,
                                      key_type=str)
    customer_to_successor = app.Table(topics.CUSTOMER_TO_SUCCESSOR, default=None, partitions=engine.settings.partitions,
                                      key_type=str)

    def raise_customer_signals(customer: str, trigger: dict, steps_now: list | None) -> list:
        """The signals customer rules raise now that the customer's journey has a new step (`steps_now`: the
        journey with it; None when the record added no step, as one read again: it raises nothing); each
        signal's step goes into the journey at once, where its rule counts afresh from."""
        if steps_now is None:
            return []
        out = []
        for raised in customer_rules.fired(customers.rules(), steps_now, trigger):
            journey_add(customer, journey.steps_of_signal(raised))
            out.append((topics.SIGNALS_BY_CUSTOMER, customer, raised))
        return out

    def journey_add(key: str, steps: list) -> list | None:
        """The key's journey before `steps`, and the steps written into it (once each)."""
        return add_steps(key, steps)[0]

    def add_steps(key: str, steps: list) -> tuple[list | None, list | None]:
        """(the key's journey before `steps`, after them or None when none of them was new); the new ones are
        written into it."""
        before = key_to_journey.get(key)
        after = journey.added(before, steps, until_ts=int(time.time() * 1000) + engine.settings.max_event_ahead_ms)
        if after is not None:
            key_to_journey[key] = after
        return before, after

    # What a customer does after the signals, keyed like the decisions (customer_id, else visitor_id):
    # purchases, cancellations and calls (re-keyed by detection onto engage.conversions once by
    # customer and once by visitor: the copy under the decisions' key is kept), offers made and what
    # became of them, and journeys moved from a visitor to the customer they turned out to be.
    # A forgotten customer's profile, value and journey are deleted (tombstones in their changelogs),
    # and nothing of them is kept again: their signals are dropped here, so no offer follows.
    # A duplicate customer merged into another (engage.merges, source crm) hands on its journey and
    # purchases, and whatever of theirs comes later follows them there; the surviving customer keeps
    # the purchases under the duplicate's key (engage.state-moves), so a merge read twice counts once.
    # Journeys with no step for ENGAGE_VISITOR_TTL are deleted (an anonymous device's would otherwise stay
    # for good): swept hourly, each partition by the worker holding it, when engage.data-sweeps says so.
    channel, by_topic = engine.channel_of(topics.CONVERSIONS, topics.DECISIONS, topics.OUTCOMES, topics.JOURNEY_MOVES,
                                          topics.FORGET, topics.MERGES_BY_KEY, topics.STATE_MOVES, topics.DATA_SWEEPS)

    def sweep(partition: int, now_ms: int) -> list:
        """Delete this partition's journeys whose newest step is older than the visitor TTL (at most SWEEP_MOST)."""
        horizon = now_ms - engine.settings.visitor_ttl_ms
        quiet = []
        for key in list(key_to_journey.keys()):
            if partition_of(key, engine.settings.partitions) != partition:
                continue  # another partition's, held by this worker too: swept with that partition's record
            steps = key_to_journey.get(key)
            if not steps or steps[-1]["ts"] < horizon:  # steps are in time order, newest last
                quiet.append(key)
                if len(quiet) >= SWEEP_MOST:
                    break
        for key in quiet:
            key_to_journey.pop(key, None)
        return []

    @app.timer(interval=SWEEP_EVERY_S, on_leader=True)  # one worker sends for all
    async def send_sweeps():
        now = int(time.time() * 1000)
        for p in range(engine.settings.partitions):
            await engine.topic[topics.DATA_SWEEPS.name].send(
                value=engine.encode(topics.DATA_SWEEPS, {"partition": p, "wall_ts": now, "watermark_ts": now, "idle_ms": 0}),
                partition=p)

    def value_move(merge_id: str, key: str, into: str, ts: int, hops: int = 0) -> list:
        """`key`'s purchases (with those merged into it) for the key it was merged into; sent whole each
        time, as the receiver replaces what `key` sent before."""
        moved = values.purchase_sum(customer_to_value.get(key), book.rules().half_life_ms)
        if moved is None:
            return []
        return [(topics.STATE_MOVES, into, {"merge_id": merge_id, "key": into, "from_key": key, "ts": ts,
                                            "hops": check_hops(hops), "ledger": None, "value": moved})]

    @app.agent(channel, name="follow_customers")
    async def follow_customers(stream):
        def follow(msg) -> list:
            if by_topic[msg.topic] is topics.DATA_SWEEPS:
                return sweep(msg.partition, engine.decode(topics.DATA_SWEEPS, msg.value)["wall_ts"])
            spec, record, key = engine.keyed_record(by_topic, msg, "customer_id, else visitor_id")
            if spec is topics.FORGET:
                cleared = [t.name for t in (customer_to_profile, customer_to_value, key_to_journey, customer_to_successor)
                           if t.pop(key, None) is not None]
                customer_to_forgotten[key] = record["ts"]
                return [audit(key, STAGE, f"deleted from {', '.join(cleared) or 'no table'}; "
                                          "their signals are dropped from now on")]
            if customer_to_forgotten.get(key) is not None:
                return []
            if spec is topics.MERGES_BY_KEY:
                return merged(key, record)
            successor = customer_to_successor.get(key)
            if spec is topics.STATE_MOVES:
                if record["value"] is None:
                    return []
                state = values.on_merge(customer_to_value.get(key), record["from_key"], record["value"])
                if state is not None:
                    customer_to_value[key] = state
                # a chain (this key was merged on in turn): what it holds now goes on to the next
                return [] if successor is None else value_move(successor["merge_id"], key, successor["into"],
                                                               record["ts"], record["hops"] + 1)
            if successor is not None:
                return after_merge(spec, key, record, successor)
            if spec is topics.CONVERSIONS:
                customer = record["customer_id"]
                if key != (customer or record["visitor_id"]):
                    return []  # the visitor's copy of a known customer's conversion (for attribution)
                step = STEP_OF[spec.name](record)
                link = None if customer else visitor_to_customer.get(key)
                if link is not None:  # e.g. a call from a number CRM links to a customer: to their journey
                    linked = link["customer_id"]
                    return [journey.moved(linked, key, [step])]
                _, now = add_steps(key, [step])
                if record["type"] == "purchase" and customer:  # value is kept for customers, not devices
                    state = on_purchase(customer_to_value.get(key), record, book.rules().half_life_ms)
                    if state is not None:
                        customer_to_value[key] = state
                if customer:
                    return raise_customer_signals(key, customer_rules.trigger_of(key, record["visitor_id"], record["ts"]),
                                                  now)
            elif spec.name in STEP_OF:  # an offer made (a decision to act), or what became of one
                step = STEP_OF[spec.name](record)
                if step is not None:
                    _, now = add_steps(key, [step])
                    if record["customer_id"] == key:  # customer rules may count offers and outcomes too
                        return raise_customer_signals(
                            key, customer_rules.trigger_of(key, record.get("visitor_id") or key, record["ts"]), now)
            else:  # steps moved to this customer from a device of theirs, or a duplicate merged into them
                _, now = add_steps(key, record["steps"])
                at = max((s["ts"] for s in record["steps"]), default=0)
                return raise_customer_signals(key, customer_rules.trigger_of(key, record["from_key"], at), now)
            return []

        def merged(key: str, merge: dict) -> list:
            validate_merge(merge)
            if merge["source"] == "login":
                return []  # route_signals moved the visitor's journey; the decision stage moves its contact counts
            into = merge["into_key"]
            customer_to_successor[key] = {"into": into, "merge_id": merge["merge_id"], "ts": merge["ts"]}
            out = value_move(merge["merge_id"], key, into, merge["ts"])
            steps = key_to_journey.get(key)
            if steps:
                out.append(journey.moved(into, key, steps))
            return out + [audit(key, STAGE, f"merged into {into} (merge {merge['merge_id']}): journey and purchases "
                                            "moved; their later signals follow", action="merge")]

        def after_merge(spec, key: str, record: dict, successor: dict) -> list:
            """A record of a customer merged away goes to the surviving customer: a purchase, cancellation or call
            as theirs (so the decision and attribution stages there see it too), other steps into their journey."""
            into = successor["into"]
            if spec is topics.CONVERSIONS:
                # the device's copy (keyed by visitor) stays where it is; the customer's copy moves on
                return [(topics.CONVERSIONS, into, redirected(record, into))] if record["customer_id"] == key else []
            step = STEP_OF[spec.name](record) if spec.name in STEP_OF else None
            steps = [step] if step is not None else record["steps"] if spec is topics.JOURNEY_MOVES else []
            hops = check_hops(record["hops"] + 1 if spec is topics.JOURNEY_MOVES else 1)
            return [journey.moved(into, key, steps, hops)] if steps else []

        await engine.handle_batches(stream, STAGE, follow)

    # CRM records are checked where they arrive, so a bad one is dead-lettered with its own topic and
    # offset; then sent on keyed with the engine's partitioner, so the joins below find them on the
    # partition of the signals whatever partitioner the CRM's producer used (as Kafka Streams
    # repartitions before a join).
    @app.agent(engine.topic[topics.PROFILES.name], name="repartition_profiles")
    async def repartition_profiles(stream):
        await engine.handle_batches(stream, STAGE, _rekeyed(engine, topics.PROFILES, topics.PROFILES_BY_CUSTOMER,
                                                            "customer_id", _check_profile))

    @app.agent(engine.topic[topics.IDENTITY.name], name="repartition_identity")
    async def repartition_identity(stream):
        await engine.handle_batches(stream, STAGE, _rekeyed(engine, topics.IDENTITY, topics.IDENTITY_BY_VISITOR,
                                                            "visitor_id", _check_link))

    @app.agent(engine.topic[topics.MERGES.name], name="repartition_merges")
    async def repartition_merges(stream):
        def rekey(msg) -> list:
            if msg.value is None:
                raise ValueError("a merge is not undone by a tombstone: merge the keys the other way, or forget one")
            merge = engine.decode(topics.MERGES, msg.value)
            validate_merge(merge)
            if msg.key is None or msg.key.decode("utf-8", "replace") != merge["from_key"]:
                raise ValueError("the record key must be the from_key")
            return [(topics.MERGES_BY_KEY, merge["from_key"], merge)]

        await engine.handle_batches(stream, STAGE, rekey)

    @app.agent(engine.topic[topics.IDENTITY_BY_VISITOR.name], name="store_identity")
    async def store_identity(stream):
        async for msg, link in engine.records(stream, topics.IDENTITY_BY_VISITOR, STAGE, tombstones=True):
            async with engine.guard(STAGE, msg):
                if link is None:
                    visitor_to_customer.pop(msg.key.decode("utf-8", "replace"), None)  # unlinked
                else:
                    visitor_to_customer[link["visitor_id"]] = {"customer_id": link["customer_id"],
                                                               "source": link["source"], "ts": link["ts"]}

    @app.agent(engine.topic[topics.PROFILES_BY_CUSTOMER.name], name="store_profiles")
    async def store_profiles(stream):
        async for msg, profile in engine.records(stream, topics.PROFILES_BY_CUSTOMER, STAGE, tombstones=True):
            async with engine.guard(STAGE, msg):
                if profile is None:
                    customer_to_profile.pop(msg.key.decode("utf-8", "replace"), None)  # the customer was deleted
                elif customer_to_forgotten.get(profile["customer_id"]) is None:  # a forgotten one is not kept again
                    customer_to_profile[profile["customer_id"]] = profile

    @app.agent(engine.topic[topics.SIGNALS.name], name="route_signals")
    async def route_signals(stream):
        def route(msg) -> list:
            signal = without_reserved(engine.decode(topics.SIGNALS, msg.value))
            visitor = signal["visitor_id"]
            signal = identified(signal, visitor_to_customer.get(visitor))
            customer = signal["customer_id"]
            if customer:
                # re-key so the join happens on the partition that holds this customer's profile; what
                # the visitor did before they were known moves to the customer's journey
                out = [(topics.SIGNALS_BY_CUSTOMER, customer, signal)]
                before = key_to_journey.get(visitor) if visitor != customer else None
                if before:
                    out.append(journey.moved(customer, visitor, before))
                    # offers made to the visitor count against the customer's caps from now on
                    out.append((topics.MERGES_BY_KEY, visitor, login_merge(signal, visitor, customer)))
                    del key_to_journey[visitor]
                return out
            enriched = enrich(signal, None, journey=journey_add(visitor, journey.steps_of_signal(signal)))
            return [(topics.ENRICHED, enriched["key"], enriched)]

        await engine.handle_batches(stream, STAGE, route)

    @app.agent(engine.topic[topics.SIGNALS_BY_CUSTOMER.name], name="enrich_signals")
    async def enrich_signals(stream):
        def join(msg) -> list:
            signal = engine.decode(topics.SIGNALS_BY_CUSTOMER, msg.value)
            customer = signal["customer_id"]
            if customer_to_forgotten.get(customer) is not None:
                return []  # forgotten: no journey, no decision, no offer
            successor = customer_to_successor.get(customer)
            if successor is not None:  # a duplicate merged away: on to the customer that keeps both histories
                return [(topics.SIGNALS_BY_CUSTOMER, successor["into"], redirected(signal, successor["into"]))]
            profile = customer_to_profile.get(customer)
            value = customer_value(profile, customer_to_value.get(customer), signal["ts"], book.rules())
            before, now = add_steps(customer, journey.steps_of_signal(signal))
            enriched = enrich(signal, profile, value, before)
            # what counts across the customer's devices, now that this signal is in their journey
            return [(topics.ENRICHED, enriched["key"], enriched)] + raise_customer_signals(customer, signal, now)

        await engine.handle_batches(stream, STAGE, join)

    return DataStage(repartition_profiles, store_profiles, route_signals, enrich_signals, customer_to_profile,
                     repartition_identity, store_identity, visitor_to_customer, follow_customers, customer_to_value,
                     key_to_journey, customer_to_forgotten, customer_to_successor, repartition_merges)
