"""Decides what the data stage does with each record: CRM records re-keyed and kept, signals identified and joined, journeys and value kept per key.

Handlers for the runner (streams/runtime/stage.py), over topics partitioned alike by the engine:
  - engage.profiles, engage.identity and engage.merges are checked where they arrive (so a bad
    one is dead-lettered with its own topic and offset), then sent on keyed with the engine's
    partitioner, so the joins find them on the partition of the signals whatever partitioner the
    CRM's producer used (as Kafka Streams repartitions before a join);
  - the re-keyed profiles and identity links are kept in `customer_to_profile` and `visitor_to_customer`;
  - a signal is identified (a CRM link names the customer of a device) and, for a known customer,
    re-keyed by customer_id to the partition of their profile, where it is joined with the
    profile, the value and the journey so far; what the visitor did before they were known moves
    to the customer's journey;
  - what a key does after its signals (purchases, cancellations and calls, offers made and what
    became of them, steps moved from a device or a duplicate) goes into its journey, and customer
    rules over the journey raise signals of their own;
  - a forgotten customer's profile, value and journey are deleted (tombstones in their changelogs)
    and nothing of them is kept again: their signals are dropped, so no offer follows;
  - a duplicate customer merged into another (engage.merges, source crm) hands on its journey and
    purchases, and whatever of theirs comes later follows them there; the surviving customer keeps
    the purchases under the duplicate's key (engage.state-moves), so a merge read twice counts once;
  - journeys with no step for ENGAGE_VISITOR_TTL are deleted (an anonymous device's would otherwise
    stay for good), each partition when a record on engage.data-sweeps says so (DataRunner.idle).
"""
from __future__ import annotations

import time

from streams import topics
from streams.audit import audit
from streams.data import customer_rules, journey
from streams.data import value as values
from streams.data.enrich import (check_hops, enrich, identified, login_merge, redirected, validate_link, validate_merge,
                                 validate_profile, without_reserved)
from streams.data.value import customer_value, on_purchase
from streams.runtime.stage import Handler, key_of

STAGE = "data"
TABLES = [topics.CUSTOMER_TO_PROFILE, topics.VISITOR_TO_CUSTOMER, topics.CUSTOMER_TO_VALUE, topics.KEY_TO_JOURNEY,
          topics.CUSTOMER_TO_FORGOTTEN, topics.CUSTOMER_TO_SUCCESSOR]
# a record's step in the journey, by its topic (a decision not to act is none)
STEP_OF = {topics.CONVERSIONS.name: journey.step_of_conversion, topics.DECISIONS.name: journey.step_of_decision,
           topics.OUTCOMES.name: journey.step_of_outcome}
SWEEP_MOST = 10_000  # journeys deleted per partition per sweep (the rest at the next)


def _needs_value(spec: topics.TopicSpec, value: dict | None) -> dict:
    if value is None:
        raise ValueError(f"a record on {spec.name} cannot be empty")
    return value


def _keyed_as(record, field: str, value: dict) -> None:
    if record.key is None or record.key.decode("utf-8", "replace") != value[field]:
        raise ValueError(f"the record key must be the {field}")


def _rekeyed(source: topics.TopicSpec, target: topics.TopicSpec, field: str, check) -> Handler:
    """A handler that checks a record of `source` and sends it on to `target` keyed by `field`, with the
    engine's partitioner; a tombstone (a deletion) is sent on as one."""
    def rekey(record, value, tables) -> list:
        if value is None:
            if record.key is None:
                raise ValueError(f"a tombstone on {source.name} needs the {field} as its key")
            return [(target, record.key.decode("utf-8", "replace"), None)]
        check(value)
        _keyed_as(record, field, value)
        return [(target, value[field], value)]
    return Handler(STAGE, source, rekey)


def handlers(settings, segments, customers) -> list[Handler]:
    """`segments`, `customers`: books of the segment and customer rules running now (read per record: they may
    be republished while the worker runs)."""

    def add_steps(tables, key: str, steps: list) -> tuple[list | None, list | None]:
        """(the key's journey before `steps`, after them or None when none of them was new); the new ones are
        written into it."""
        journeys = tables[topics.KEY_TO_JOURNEY]
        before = journeys.get(key)
        after = journey.added(before, steps, until_ts=int(time.time() * 1000) + settings.max_event_ahead_ms)
        if after is not None:
            journeys[key] = after
        return before, after

    def raise_customer_signals(tables, customer: str, trigger: dict, steps_now: list | None) -> list:
        """The signals customer rules raise now that the customer's journey has a new step (`steps_now`: the
        journey with it; None when the record added no step, as one read again: it raises nothing); each
        signal's step goes into the journey at once, where its rule counts afresh from."""
        if steps_now is None:
            return []
        out = []
        for raised in customer_rules.fired(customers.rules(), steps_now, trigger):
            add_steps(tables, customer, journey.steps_of_signal(raised))
            out.append((topics.SIGNALS_BY_CUSTOMER, customer, raised))
        return out

    def value_move(tables, merge_id: str, key: str, into: str, ts: int, hops: int = 0) -> list:
        """`key`'s purchases (with those merged into it) for the key it was merged into; sent whole each
        time, as the receiver replaces what `key` sent before."""
        moved = values.purchase_sum(tables[topics.CUSTOMER_TO_VALUE].get(key), segments.rules().half_life_ms)
        if moved is None:
            return []
        return [(topics.STATE_MOVES, into, {"merge_id": merge_id, "key": into, "from_key": key, "ts": ts,
                                            "hops": check_hops(hops), "ledger": None, "value": moved})]

    # -- the CRM's records, kept ---------------------------------------------------------------------
    def store_profile(record, profile, tables) -> list:
        if profile is None:  # the customer was deleted
            tables[topics.CUSTOMER_TO_PROFILE].pop(key_of(record, topics.PROFILES_BY_CUSTOMER), None)
        elif tables[topics.CUSTOMER_TO_FORGOTTEN].get(profile["customer_id"]) is None:  # a forgotten one is not kept again
            tables[topics.CUSTOMER_TO_PROFILE][profile["customer_id"]] = profile
        return []

    def store_link(record, link, tables) -> list:
        links = tables[topics.VISITOR_TO_CUSTOMER]
        if link is None:  # unlinked
            links.pop(key_of(record, topics.IDENTITY_BY_VISITOR), None)
        else:
            links[link["visitor_id"]] = {"customer_id": link["customer_id"], "source": link["source"], "ts": link["ts"]}
        return []

    def rekey_merge(record, merge, tables) -> list:
        if merge is None:
            raise ValueError("a merge is not undone by a tombstone: merge the keys the other way, or forget one")
        validate_merge(merge)
        _keyed_as(record, "from_key", merge)
        return [(topics.MERGES_BY_KEY, merge["from_key"], merge)]

    # -- signals ---------------------------------------------------------------------------------------
    def route(record, signal, tables) -> list:
        signal = without_reserved(_needs_value(topics.SIGNALS, signal))
        visitor = signal["visitor_id"]
        signal = identified(signal, tables[topics.VISITOR_TO_CUSTOMER].get(visitor))
        customer = signal["customer_id"]
        if customer:
            # re-key so the join happens on the partition that holds this customer's profile; what
            # the visitor did before they were known moves to the customer's journey
            out = [(topics.SIGNALS_BY_CUSTOMER, customer, signal)]
            journeys = tables[topics.KEY_TO_JOURNEY]
            before = journeys.get(visitor) if visitor != customer else None
            if before:
                out.append(journey.moved(customer, visitor, before))
                # offers made to the visitor count against the customer's caps from now on
                out.append((topics.MERGES_BY_KEY, visitor, login_merge(signal, visitor, customer)))
                del journeys[visitor]
            return out
        before, _ = add_steps(tables, visitor, journey.steps_of_signal(signal))
        enriched = enrich(signal, None, journey=before)
        return [(topics.ENRICHED, enriched["key"], enriched)]

    def join(record, signal, tables) -> list:
        signal = _needs_value(topics.SIGNALS_BY_CUSTOMER, signal)
        customer = signal["customer_id"]
        if tables[topics.CUSTOMER_TO_FORGOTTEN].get(customer) is not None:
            return []  # forgotten: no journey, no decision, no offer
        successor = tables[topics.CUSTOMER_TO_SUCCESSOR].get(customer)
        if successor is not None:  # a duplicate merged away: on to the customer that keeps both histories
            return [(topics.SIGNALS_BY_CUSTOMER, successor["into"], redirected(signal, successor["into"]))]
        profile = tables[topics.CUSTOMER_TO_PROFILE].get(customer)
        value = customer_value(profile, tables[topics.CUSTOMER_TO_VALUE].get(customer), signal["ts"], segments.rules())
        before, now = add_steps(tables, customer, journey.steps_of_signal(signal))
        enriched = enrich(signal, profile, value, before)
        # what counts across the customer's devices, now that this signal is in their journey
        return [(topics.ENRICHED, enriched["key"], enriched)] + raise_customer_signals(tables, customer, signal, now)

    # -- what a key does after its signals ---------------------------------------------------------------
    def sweep(record, tick, tables) -> list:
        """Delete this partition's journeys whose newest step is older than the visitor TTL (at most SWEEP_MOST)."""
        horizon = _needs_value(topics.DATA_SWEEPS, tick)["wall_ts"] - settings.visitor_ttl_ms
        journeys = tables[topics.KEY_TO_JOURNEY]
        quiet = []
        for key, steps in journeys.items():  # this partition's only
            if not steps or steps[-1]["ts"] < horizon:  # steps are in time order, newest last
                quiet.append(key)
                if len(quiet) >= SWEEP_MOST:
                    break
        for key in quiet:
            del journeys[key]
        return []

    def forget(record, request, tables) -> list:
        key = key_of(record, topics.FORGET)
        if request is None:
            return []  # the compacted request itself deleted: they stay forgotten
        cleared = [name for name in (topics.CUSTOMER_TO_PROFILE, topics.CUSTOMER_TO_VALUE, topics.KEY_TO_JOURNEY,
                                     topics.CUSTOMER_TO_SUCCESSOR) if tables[name].pop(key, None) is not None]
        tables[topics.CUSTOMER_TO_FORGOTTEN][key] = request["ts"]
        return [audit(key, STAGE, f"deleted from {', '.join(cleared) or 'no table'}; "
                                  "their signals are dropped from now on")]

    def merged(record, merge, tables) -> list:
        merge = _needs_value(topics.MERGES_BY_KEY, merge)
        key = key_of(record, topics.MERGES_BY_KEY)
        if tables[topics.CUSTOMER_TO_FORGOTTEN].get(key) is not None:
            return []
        validate_merge(merge)
        if merge["source"] == "login":
            return []  # route moved the visitor's journey; the decision stage moves its contact counts
        into = merge["into_key"]
        tables[topics.CUSTOMER_TO_SUCCESSOR][key] = {"into": into, "merge_id": merge["merge_id"], "ts": merge["ts"]}
        out = value_move(tables, merge["merge_id"], key, into, merge["ts"])
        steps = tables[topics.KEY_TO_JOURNEY].get(key)
        if steps:
            out.append(journey.moved(into, key, steps))
        return out + [audit(key, STAGE, f"merged into {into} (merge {merge['merge_id']}): journey and purchases "
                                        "moved; their later signals follow", action="merge")]

    def value_moved(record, move, tables) -> list:
        move = _needs_value(topics.STATE_MOVES, move)
        key = key_of(record, topics.STATE_MOVES)
        if tables[topics.CUSTOMER_TO_FORGOTTEN].get(key) is not None or move["value"] is None:
            return []  # the contact counts a merge moves are the decision stage's
        value_table = tables[topics.CUSTOMER_TO_VALUE]
        state = values.on_merge(value_table.get(key), move["from_key"], move["value"])
        if state is not None:
            value_table[key] = state
        # a chain (this key was merged on in turn): what it holds now goes on to the next
        successor = tables[topics.CUSTOMER_TO_SUCCESSOR].get(key)
        return [] if successor is None else value_move(tables, successor["merge_id"], key, successor["into"],
                                                       move["ts"], move["hops"] + 1)

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

    def followed(spec: topics.TopicSpec, step):
        """A handler adding what a record of `spec` did to its key's journey: `step(tables, key, record)`."""
        def follow(record, value, tables) -> list:
            value = _needs_value(spec, value)
            key = key_of(record, spec)
            if tables[topics.CUSTOMER_TO_FORGOTTEN].get(key) is not None:
                return []
            successor = tables[topics.CUSTOMER_TO_SUCCESSOR].get(key)
            if successor is not None:
                return after_merge(spec, key, value, successor)
            return step(tables, key, value)
        return Handler(STAGE, spec, follow)

    def conversion(tables, key: str, record: dict) -> list:
        customer = record["customer_id"]
        if key != (customer or record["visitor_id"]):
            return []  # the visitor's copy of a known customer's conversion (for attribution)
        step = journey.step_of_conversion(record)
        link = None if customer else tables[topics.VISITOR_TO_CUSTOMER].get(key)
        if link is not None:  # e.g. a call from a number CRM links to a customer: to their journey
            return [journey.moved(link["customer_id"], key, [step])]
        _, now = add_steps(tables, key, [step])
        if record["type"] == "purchase" and customer:  # value is kept for customers, not devices
            value_table = tables[topics.CUSTOMER_TO_VALUE]
            state = on_purchase(value_table.get(key), record, segments.rules().half_life_ms)
            if state is not None:
                value_table[key] = state
        if customer:
            return raise_customer_signals(tables, key, customer_rules.trigger_of(key, record["visitor_id"], record["ts"]),
                                          now)
        return []

    def offer_step(spec: topics.TopicSpec):
        """An offer made (a decision to act), or what became of one."""
        def add(tables, key: str, record: dict) -> list:
            step = STEP_OF[spec.name](record)
            if step is None:
                return []
            _, now = add_steps(tables, key, [step])
            if record["customer_id"] != key:
                return []
            # customer rules may count offers and outcomes too
            return raise_customer_signals(tables, key, customer_rules.trigger_of(key, record.get("visitor_id") or key,
                                                                                 record["ts"]), now)
        return add

    def steps_moved(tables, key: str, move: dict) -> list:
        """Steps moved to this customer from a device of theirs, or a duplicate merged into them."""
        _, now = add_steps(tables, key, move["steps"])
        at = max((s["ts"] for s in move["steps"]), default=0)
        return raise_customer_signals(tables, key, customer_rules.trigger_of(key, move["from_key"], at), now)

    return [
        _rekeyed(topics.PROFILES, topics.PROFILES_BY_CUSTOMER, "customer_id", validate_profile),
        _rekeyed(topics.IDENTITY, topics.IDENTITY_BY_VISITOR, "visitor_id", validate_link),
        Handler(STAGE, topics.MERGES, rekey_merge),
        Handler(STAGE, topics.PROFILES_BY_CUSTOMER, store_profile),
        Handler(STAGE, topics.IDENTITY_BY_VISITOR, store_link),
        Handler(STAGE, topics.SIGNALS, route),
        Handler(STAGE, topics.SIGNALS_BY_CUSTOMER, join),
        followed(topics.CONVERSIONS, conversion),
        followed(topics.DECISIONS, offer_step(topics.DECISIONS)),
        followed(topics.OUTCOMES, offer_step(topics.OUTCOMES)),
        followed(topics.JOURNEY_MOVES, steps_moved),
        Handler(STAGE, topics.FORGET, forget),
        Handler(STAGE, topics.MERGES_BY_KEY, merged),
        Handler(STAGE, topics.STATE_MOVES, value_moved),
        Handler(STAGE, topics.DATA_SWEEPS, sweep),
    ]
