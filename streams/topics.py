"""Decides every topic the engine uses: its contract name, key, value schema, and whether it is compacted."""
from __future__ import annotations

from dataclasses import dataclass



@dataclass(frozen=True)
class TopicSpec:
    name: str        # contract name; the physical name adds the configured prefix
    key: str         # what the key holds
    schema: str      # value schema under schemas/
    compacted: bool = False
    internal: bool = False  # engine-private, not part of the published contract
    partitions: int | None = None  # None: the configured partition count
    config: tuple[tuple[str, str], ...] = ()  # extra topic configuration


EVENTS = TopicSpec("engage.events", "visitor_id", "Interaction")
PROFILES = TopicSpec("engage.profiles", "customer_id", "CustomerProfile", compacted=True)
AGENT_AVAILABILITY = TopicSpec("engage.agent-availability", "skill", "AgentAvailability", compacted=True)
# One partition, so every worker reads every version in order; compaction waits 30 days, so
# `engage rules history` and `rollback` see a month of versions.
RULES = TopicSpec("engage.rules", "rule set name", "RuleSet", compacted=True, partitions=1,
                  config=(("min.compaction.lag.ms", str(30 * 86_400_000)),))
# Writer schemas producers registered (`engage schemas register`): one partition, compacted by fingerprint.
SCHEMAS = TopicSpec("engage.schemas", "fingerprint (hex)", "WriterSchema", compacted=True, partitions=1)
SIGNALS = TopicSpec("engage.signals", "visitor_id", "Signal")
# Identifiers (devices, phone numbers, e-mail addresses: what events carry as visitor_id) known to
# belong to a customer, from CRM and the contact centre; a tombstone unlinks one.
IDENTITY = TopicSpec("engage.identity", "visitor_id", "IdentityLink", compacted=True)
# engage.identity re-keyed by the engine's partitioner, co-partitioned with engage.signals.
IDENTITY_BY_VISITOR = TopicSpec("engage.identity-by-visitor", "visitor_id", "IdentityLink", compacted=True,
                                internal=True)
# engage.profiles re-keyed by the engine, with the engine's partitioner, so a profile lands on the
# partition of its customer's signals whatever partitioner the CRM's producer used (as Kafka Streams
# repartitions before a join). Compacted: the latest profile, or its deletion, per customer.
PROFILES_BY_CUSTOMER = TopicSpec("engage.profiles-by-customer", "customer_id", "CustomerProfile", compacted=True,
                                 internal=True)
# Signals of known customers re-keyed by customer_id, co-partitioned with their profiles for the join.
SIGNALS_BY_CUSTOMER = TopicSpec("engage.signals-by-customer", "customer_id", "Signal", internal=True)
# Idle partitions' clock ticks for detection, co-partitioned with engage.events; kept one hour.
DETECTION_TICKS = TopicSpec("engage.detection-ticks", "none (sent to the partition it is about)", "Tick", internal=True,
                            config=(("retention.ms", "3600000"),))
# The data stage's sweep: each worker's timer sends one record to every partition, hourly; the worker
# holding it deletes that partition's journeys with no step for ENGAGE_VISITOR_TTL. Kept one hour.
DATA_SWEEPS = TopicSpec("engage.data-sweeps", "none (sent to the partition it is about)", "Tick", internal=True,
                        config=(("retention.ms", "3600000"),))
ENRICHED = TopicSpec("engage.enriched", "customer_id, else visitor_id", "EnrichedSignal")
DECISIONS = TopicSpec("engage.decisions", "customer_id, else visitor_id", "Decision")
DELIVERY = TopicSpec("engage.delivery", "customer_id, else visitor_id", "Delivery")
OUTCOMES = TopicSpec("engage.outcomes", "customer_id, else visitor_id", "Outcome")
# Steps for a customer's journey from elsewhere: a visitor's journey before they were known, moved when a
# signal says who they are; steps of a duplicate merged into them; failed logins (from detection).
JOURNEY_MOVES = TopicSpec("engage.journey-moves", "customer_id", "JourneyMove", internal=True)
# Purchases, cancellations and calls, re-keyed by detection to the keys decisions use (customer_id
# and visitor_id), so attribution joins them with decisions on one partition.
CONVERSIONS = TopicSpec("engage.conversions", "customer_id and visitor_id (one record each)", "Interaction", internal=True)
# What happened after each decision; compacted by decision id: the latest revision is the attribution so far.
ATTRIBUTIONS = TopicSpec("engage.attributions", "decision_id", "Attribution", compacted=True)
# Offers that need an agent, and the answers to them, keyed by the agents' skill: each skill is paced
# in one place (one partition), whatever the number of workers. Co-partitioned with engage.agent-availability.
PACING = TopicSpec("engage.pacing", "skill", "Pacing", internal=True)
# What each learner partition has learned for the uplift models; compacted by partition, one
# partition so every worker reads all of it in order.
MODELS = TopicSpec("engage.models", "learner partition (as text)", "ModelEvidence", compacted=True, partitions=1)
DEADLETTER = TopicSpec("engage.deadletter", "the original key", "DeadLetter")
# Customers to forget (`engage forget`), kept (compacted) so they stay forgotten; and what each stage did.
FORGET = TopicSpec("engage.forget", "customer_id", "ForgetRequest", compacted=True)
# Keys merged into others (`engage merge`, CRM, and visitors at their first identified signal), kept
# (compacted) so a duplicate stays merged; and what the merged key had, sent to the surviving key's partition.
MERGES = TopicSpec("engage.merges", "from_key", "KeyMerge", compacted=True)
# engage.merges re-keyed by the engine's partitioner (as profiles and identity links are), with the
# engine's own merges of visitors into customers at their first identified signal. Not compacted: a
# conduit (the tables keep what a merge did), and one record per visitor who logged in would pile up.
MERGES_BY_KEY = TopicSpec("engage.merges-by-key", "from_key", "KeyMerge", internal=True)
STATE_MOVES = TopicSpec("engage.state-moves", "into key", "StateMove", internal=True)
AUDIT = TopicSpec("engage.audit", "customer_id", "AuditRecord", config=(("retention.ms", "-1"),))

ALL = (EVENTS, PROFILES, AGENT_AVAILABILITY, RULES, SCHEMAS, SIGNALS, IDENTITY, IDENTITY_BY_VISITOR, PROFILES_BY_CUSTOMER,
       SIGNALS_BY_CUSTOMER, DETECTION_TICKS, DATA_SWEEPS, ENRICHED, DECISIONS, DELIVERY,
       OUTCOMES, CONVERSIONS, JOURNEY_MOVES, ATTRIBUTIONS, PACING, MODELS, DEADLETTER, FORGET,
       MERGES, MERGES_BY_KEY, STATE_MOVES, AUDIT)
# What others write and the engine only reads: a shadow run reads these from the live topics
# (ENGAGE_INPUT_PREFIX) and keeps everything else, rules and outcomes included, under its own prefix.
EXTERNAL_INPUTS = frozenset(spec.name for spec in (EVENTS, PROFILES, AGENT_AVAILABILITY, IDENTITY, FORGET, MERGES,
                                                    SCHEMAS))

# The state tables, each with a compacted changelog topic named by Faust "<app id>-<table>-changelog",
# partitioned like the stream it is updated from. They are created with the topics above, before a
# worker joins its group: a changelog that Faust creates itself as it starts can be missing from the
# group's first metadata, and its table then refuses every write (PartitionsMismatch) until the next
# rebalance (seen in `make run`: every decision dead-lettered).
VISITOR_TO_STATE = "visitor_to_state"
PARTITION_TO_TIMERS = "partition_to_timers"
CUSTOMER_TO_PROFILE = "customer_to_profile"
VISITOR_TO_CUSTOMER = "visitor_to_customer"  # identity links from engage.identity, partitioned like engage.signals
CUSTOMER_TO_VALUE = "customer_to_value"  # purchases summed with decay, for the CLV estimate (streams/data/value.py)
KEY_TO_JOURNEY = "key_to_journey"  # recent steps, offers and outcomes (streams/data/journey.py), keyed like decisions
CUSTOMER_TO_FORGOTTEN = "customer_to_forgotten"  # when each forgotten customer was forgotten: nothing more is kept of them
CUSTOMER_TO_SUCCESSOR = "customer_to_successor"  # a duplicate customer -> the one it was merged into
CUSTOMER_TO_CONTACTS = "customer_to_contacts"
KEY_TO_ATTRIBUTIONS = "key_to_attributions"
# the uplift learner, partitioned like engage.attributions: decisions waiting for their window to close,
# and each partition's clock and evidence
DECISION_TO_LABEL = "decision_to_label"
PARTITION_TO_EVIDENCE = "partition_to_evidence"
SKILL_TO_PACING = "skill_to_pacing"  # per skill: free agents, outstanding invitations, candidates waiting
TABLES = (VISITOR_TO_STATE, PARTITION_TO_TIMERS, CUSTOMER_TO_PROFILE, VISITOR_TO_CUSTOMER, CUSTOMER_TO_VALUE,
          KEY_TO_JOURNEY, CUSTOMER_TO_FORGOTTEN, CUSTOMER_TO_SUCCESSOR, CUSTOMER_TO_CONTACTS, KEY_TO_ATTRIBUTIONS,
          DECISION_TO_LABEL, PARTITION_TO_EVIDENCE, SKILL_TO_PACING)


def changelog(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"

