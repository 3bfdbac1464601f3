"""Decides how the decision stage runs on Faust: a per-customer contact ledger in RocksDB, a Decision for every signal, and the agents' pacer."""
from __future__ import annotations

from streams import topics
from streams.app import Engine
from streams.audit import audit
from streams.decision import pacing
from streams.decision.actions import ActionSet
from streams.decision.models import ModelBook
from streams.data.enrich import check_hops, validate_merge
from streams.decision.policy import counts_of, decide, on_conversion, on_merge, on_outcome
from streams.decision.uplift import AGENT_LED
from streams.rules.book import RuleBook

STAGE = "decision"
FORGOTTEN = "forgotten"  # the only field of a forgotten customer's ledger
MERGED_INTO = "merged_into"  # a duplicate customer's ledger: later purchases and declines are handed on
PACING_STAGE = "pacing"


def register(engine: Engine, actions: ActionSet | RuleBook, models: ModelBook | None = None):
    """`actions`: fixed, or a book that follows the published versions (read once per record)."""
    app = engine.app
    book = actions if isinstance(actions, RuleBook) else RuleBook(actions)
    models = models or ModelBook()
    explore = engine.settings.explore
    customer_to_contacts = app.Table(topics.CUSTOMER_TO_CONTACTS, default=None, partitions=engine.settings.partitions,
                                     key_type=str)  # values are JSON (Faust's default for untyped tables)
    # Signals to decide on, and what the contact policy must hear of: purchases (suppression after a
    # purchase) and outcomes (declines). Keyed alike (customer_id, else visitor_id), partitioned alike.
    # Merges: a merged key's contact counts go to the partition of the key it joined (engage.state-moves),
    # so offers made to a device before its login, or to a duplicate customer, count against the caps.
    channel, by_topic = engine.channel_of(topics.ENRICHED, topics.CONVERSIONS, topics.OUTCOMES, topics.FORGET,
                                          topics.MERGES_BY_KEY, topics.STATE_MOVES)
    note = {topics.CONVERSIONS.name: on_conversion, topics.OUTCOMES.name: on_outcome}

    def counts_move(merge_id: str, key: str, into: str, ts: int, ledger: dict, hops: int = 0) -> tuple:
        """`key`'s contact counts (with those merged into it) for the key it was merged into; sent whole
        each time, as the receiver replaces what `key` sent before."""
        return (topics.STATE_MOVES, into, {"merge_id": merge_id, "key": into, "from_key": key, "ts": ts,
                                           "hops": check_hops(hops), "ledger": counts_of(dict(ledger)), "value": None})

    def merged(key: str, merge: dict, ledger: dict | None) -> list:
        """`ledger`: the merged key's, not forgotten."""
        validate_merge(merge)
        into = merge["into_key"]
        if merge["source"] != "login":  # a duplicate: what it is told later is handed on too
            ledger = {**(ledger or {}), MERGED_INTO: {"into": into, "merge_id": merge["merge_id"]}}
            customer_to_contacts[key] = ledger
        return [] if ledger is None else [counts_move(merge["merge_id"], key, into, merge["ts"], ledger)]

    @app.agent(channel, name="decide_actions")
    async def decide_actions(stream):
        def handle(msg) -> list:
            if by_topic[msg.topic] is topics.FORGET:
                _, request, key = engine.keyed_record(by_topic, msg, "customer_id")
                had = customer_to_contacts.get(key) is not None
                # the ledger becomes a marker holding nothing but when: later records of theirs change nothing
                customer_to_contacts[key] = {FORGOTTEN: request["ts"]}
                return [audit(key, STAGE, f"{'deleted' if had else 'no'} contact ledger; kept: the time they were forgotten")]
            if by_topic[msg.topic] is not topics.ENRICHED:
                spec, record, key = engine.keyed_record(by_topic, msg, "customer_id, else visitor_id")
                before = customer_to_contacts.get(key)  # read once: a record's handling changes it at most once
                if FORGOTTEN in (before or {}):
                    return []
                if spec is topics.MERGES_BY_KEY:
                    return merged(key, record, before)
                if spec is topics.STATE_MOVES:
                    if record["ledger"] is None:
                        return []
                    ledger = on_merge(before, record["from_key"], record["ledger"])
                    if ledger is not None:
                        customer_to_contacts[key] = ledger
                    ledger = ledger or before
                    successor = ledger.get(MERGED_INTO)
                    # a chain (this key was merged on in turn): what it holds now goes on to the next
                    return [] if not successor else [counts_move(successor["merge_id"], key, successor["into"],
                                                                 record["ts"], ledger, record["hops"] + 1)]
                ledger = note[spec.name](before, record)
                out = []
                if ledger is not None:
                    customer_to_contacts[key] = ledger
                successor = (ledger or before or {}).get(MERGED_INTO)
                # a duplicate's purchase or decline (or a replay of one): the customer it joined hears of it (a
                # purchase may also reach them as theirs, re-keyed by the data stage: the latest counts, once)
                if successor:
                    out.append(counts_move(successor["merge_id"], key, successor["into"], record["ts"],
                                           ledger or before))
                skill = paced_skill(record, book.rules()) if spec is topics.OUTCOMES else None
                # an answer to an invitation its skill's pacer released
                return out if skill is None else out + [(topics.PACING, skill, pacing.outcome_record(skill, record))]
            record = engine.decode(topics.ENRICHED, msg.value)
            key = record["key"]
            ledger = customer_to_contacts.get(key)
            if FORGOTTEN in (ledger or {}):
                return []  # a signal already on its way when they were forgotten: no decision
            result = decide(record, ledger, book.rules(), models.model, explore)
            # The ledger first: it records the decision itself, so a replay after a crash re-sends
            # the very same decision (same time, same gates) instead of deciding again.
            if not result.replayed:
                customer_to_contacts[key] = result.ledger
            d = result.decision
            if result.paced:
                return [(topics.PACING, d["skill"], pacing.candidate_record(d, result.fallback))]
            return [(topics.DECISIONS, key, d)]

        await engine.handle_batches(stream, STAGE, handle)

    register_pacer(engine)
    return decide_actions, customer_to_contacts


def paced_skill(outcome: dict, actions: ActionSet) -> str | None:
    """The skill whose pacer waits for this outcome: an answer to an offer on a channel that needs an agent."""
    if outcome["type"] not in pacing.ANSWERS or outcome.get("channel") not in AGENT_LED or not outcome.get("decision_id"):
        return None
    action = actions.get(outcome.get("action_id"))
    return action.skill if action is not None else None


def register_pacer(engine: Engine):
    app, settings = engine.app, engine.settings
    skill_to_pacing = app.Table(topics.SKILL_TO_PACING, default=None, partitions=settings.partitions, key_type=str)
    channel, by_topic = engine.channel_of(topics.PACING, topics.AGENT_AVAILABILITY)

    @app.agent(channel, name="pace_offers")
    async def pace_offers(stream):
        async for event in stream.events():
            msg = event.message
            async with engine.guard(PACING_STAGE, msg):
                spec, record, skill = engine.keyed_record(by_topic, msg, "the skill")
                state = skill_to_pacing.get(skill) or pacing.new_state()
                if spec is topics.AGENT_AVAILABILITY:
                    released = pacing.on_availability(state, record)
                elif record["kind"] == "candidate":
                    released = pacing.on_candidate(state, record, settings.pacing_hold_ms)
                else:
                    released = pacing.on_outcome(state, record)
                # decisions first, then the state: a crash in between replays the record against the old
                # state, which releases the same decisions again (same ids: delivery drops the copies)
                for d in released:
                    await engine.send(topics.DECISIONS, d["key"], d)
                skill_to_pacing[skill] = state

    return pace_offers, skill_to_pacing
