"""Decides what the decision stage does with each record: a Decision for every signal, the contact ledger per key, and each skill's pacer.

Handlers for the runner (streams/runtime/stage.py). The decide handlers read the enriched signals
and what the contact policy must hear of: purchases (suppression after a purchase), outcomes
(declines), forget requests, and merges with the contact counts they move. All are keyed alike
(customer_id, else visitor_id) and partitioned alike, so a key's ledger lives on one partition.
Merges: a merged key's contact counts go to the partition of the key it joined
(engage.state-moves), so offers made to a device before its login, or to a duplicate customer,
count against the caps. The pacer reads engage.pacing and engage.agent-availability, keyed by
skill, with its state per skill.
"""
from __future__ import annotations

from streams import topics
from streams.audit import audit
from streams.data.enrich import check_hops, validate_merge
from streams.decision import pacing
from streams.decision.policy import counts_of, decide, on_conversion, on_merge, on_outcome
from streams.decision.uplift import AGENT_LED
from streams.runtime.stage import Handler, key_of

STAGE = "decision"
PACING_STAGE = "pacing"
FORGOTTEN = "forgotten"  # the only field of a forgotten customer's ledger
MERGED_INTO = "merged_into"  # a duplicate customer's ledger: later purchases and declines are handed on
TABLES = [topics.CUSTOMER_TO_CONTACTS, topics.SKILL_TO_PACING]
_NOTE = {topics.CONVERSIONS.name: on_conversion, topics.OUTCOMES.name: on_outcome}


def counts_move(merge_id: str, key: str, into: str, ts: int, ledger: dict, hops: int = 0) -> tuple:
    """`key`'s contact counts (with those merged into it) for the key it was merged into; sent whole each
    time, as the receiver replaces what `key` sent before."""
    return (topics.STATE_MOVES, into, {"merge_id": merge_id, "key": into, "from_key": key, "ts": ts,
                                       "hops": check_hops(hops), "ledger": counts_of(dict(ledger)), "value": None})


def paced_skill(outcome: dict, actions) -> str | None:
    """The skill whose pacer waits for this outcome: an answer to an offer on a channel that needs an agent."""
    if outcome["type"] not in pacing.ANSWERS or outcome.get("channel") not in AGENT_LED or not outcome.get("decision_id"):
        return None
    action = actions.get(outcome.get("action_id"))
    return action.skill if action is not None else None


def _needs_value(spec: topics.TopicSpec, value: dict | None) -> dict:
    if value is None:
        raise ValueError(f"a record on {spec.name} cannot be empty")
    return value


def handlers(settings, book, models) -> list[Handler]:
    """`book`: the action rules running now, `models`: the uplift model learned so far (both read per record:
    they may be republished while the worker runs)."""
    explore = settings.explore

    def decide_signal(record, value, tables) -> list:
        enriched = _needs_value(topics.ENRICHED, value)
        contacts = tables[topics.CUSTOMER_TO_CONTACTS]
        key = enriched["key"]
        ledger = contacts.get(key)
        if FORGOTTEN in (ledger or {}):
            return []  # a signal already on its way when they were forgotten: no decision
        result = decide(enriched, ledger, book.rules(), models.model, explore)
        # The ledger records the decision itself, so a replay after a crash (the outputs sent, the
        # ledger not yet written) re-sends the very same decision (same time, same gates), and one
        # after the ledger was written finds it there and replays it instead of deciding again.
        if not result.replayed:
            contacts[key] = result.ledger
        d = result.decision
        if result.paced:
            return [(topics.PACING, d["skill"], pacing.candidate_record(d, result.fallback))]
        return [(topics.DECISIONS, key, d)]

    def forget(record, request, tables) -> list:
        key = key_of(record, topics.FORGET)
        if request is None:
            return []  # the compacted request itself deleted
        contacts = tables[topics.CUSTOMER_TO_CONTACTS]
        had = contacts.get(key) is not None
        # the ledger becomes a marker holding nothing but when: later records of theirs change nothing
        contacts[key] = {FORGOTTEN: request["ts"]}
        return [audit(key, STAGE, f"{'deleted' if had else 'no'} contact ledger; kept: the time they were forgotten")]

    def merged(record, merge, tables) -> list:
        merge = _needs_value(topics.MERGES_BY_KEY, merge)
        key = key_of(record, topics.MERGES_BY_KEY)
        contacts = tables[topics.CUSTOMER_TO_CONTACTS]
        ledger = contacts.get(key)
        if FORGOTTEN in (ledger or {}):
            return []
        validate_merge(merge)
        into = merge["into_key"]
        if merge["source"] != "login":  # a duplicate: what it is told later is handed on too
            ledger = {**(ledger or {}), MERGED_INTO: {"into": into, "merge_id": merge["merge_id"]}}
            contacts[key] = ledger
        return [] if ledger is None else [counts_move(merge["merge_id"], key, into, merge["ts"], ledger)]

    def moved(record, move, tables) -> list:
        move = _needs_value(topics.STATE_MOVES, move)
        key = key_of(record, topics.STATE_MOVES)
        contacts = tables[topics.CUSTOMER_TO_CONTACTS]
        before = contacts.get(key)
        if FORGOTTEN in (before or {}) or move["ledger"] is None:
            return []
        ledger = on_merge(before, move["from_key"], move["ledger"])
        if ledger is not None:
            contacts[key] = ledger
        ledger = ledger or before
        successor = ledger.get(MERGED_INTO)
        # a chain (this key was merged on in turn): what it holds now goes on to the next
        return [] if not successor else [counts_move(successor["merge_id"], key, successor["into"], move["ts"], ledger,
                                                     move["hops"] + 1)]

    def noting(spec: topics.TopicSpec):
        def note(record, value, tables) -> list:
            value = _needs_value(spec, value)
            key = key_of(record, spec)
            contacts = tables[topics.CUSTOMER_TO_CONTACTS]
            before = contacts.get(key)  # read once: a record's handling changes it at most once
            if FORGOTTEN in (before or {}):
                return []
            ledger = _NOTE[spec.name](before, value)
            out = []
            if ledger is not None:
                contacts[key] = ledger
            successor = (ledger or before or {}).get(MERGED_INTO)
            # a duplicate's purchase or decline (or a replay of one): the customer it joined hears of it (a
            # purchase may also reach them as theirs, re-keyed by the data stage: the latest counts, once)
            if successor:
                out.append(counts_move(successor["merge_id"], key, successor["into"], value["ts"], ledger or before))
            skill = paced_skill(value, book.rules()) if spec is topics.OUTCOMES else None
            # an answer to an invitation its skill's pacer released
            return out if skill is None else out + [(topics.PACING, skill, pacing.outcome_record(skill, value))]
        return note

    def pace(spec: topics.TopicSpec):
        def handle(record, value, tables) -> list:
            value = _needs_value(spec, value)
            skill = key_of(record, spec)
            states = tables[topics.SKILL_TO_PACING]
            state = states.get(skill) or pacing.new_state()
            if spec is topics.AGENT_AVAILABILITY:
                released = pacing.on_availability(state, value)
            elif value["kind"] == "candidate":
                released = pacing.on_candidate(state, value, settings.pacing_hold_ms)
            else:
                released = pacing.on_outcome(state, value)
            states[skill] = state
            # the decisions are acked before the state is written (the runner's order): a crash in between
            # replays the record against the old state, which releases the same decisions again (same ids:
            # delivery drops the copies)
            return [(topics.DECISIONS, d["key"], d) for d in released]
        return handle

    return [Handler(STAGE, topics.ENRICHED, decide_signal), Handler(STAGE, topics.FORGET, forget),
            Handler(STAGE, topics.MERGES_BY_KEY, merged), Handler(STAGE, topics.STATE_MOVES, moved),
            Handler(STAGE, topics.CONVERSIONS, noting(topics.CONVERSIONS)),
            Handler(STAGE, topics.OUTCOMES, noting(topics.OUTCOMES)),
            Handler(PACING_STAGE, topics.PACING, pace(topics.PACING)),
            Handler(PACING_STAGE, topics.AGENT_AVAILABILITY, pace(topics.AGENT_AVAILABILITY))]
