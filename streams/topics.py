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


EVENTS = TopicSpec("engage.events", "visitor_id", "Interaction")
PROFILES = TopicSpec("engage.profiles", "customer_id", "CustomerProfile", compacted=True)
AGENT_AVAILABILITY = TopicSpec("engage.agent-availability", "skill", "AgentAvailability", compacted=True)
RULES = TopicSpec("engage.rules", "rule set name", "RuleSet", compacted=True)
SIGNALS = TopicSpec("engage.signals", "visitor_id", "Signal")
# Signals of known customers re-keyed by customer_id, co-partitioned with engage.profiles for the join.
SIGNALS_BY_CUSTOMER = TopicSpec("engage.signals-by-customer", "customer_id", "Signal", internal=True)
ENRICHED = TopicSpec("engage.enriched", "customer_id, else visitor_id", "EnrichedSignal")
DECISIONS = TopicSpec("engage.decisions", "customer_id, else visitor_id", "Decision")
DELIVERY = TopicSpec("engage.delivery", "customer_id, else visitor_id", "Delivery")
OUTCOMES = TopicSpec("engage.outcomes", "customer_id, else visitor_id", "Outcome")
DEADLETTER = TopicSpec("engage.deadletter", "the original key", "DeadLetter")

ALL = (EVENTS, PROFILES, AGENT_AVAILABILITY, RULES, SIGNALS, SIGNALS_BY_CUSTOMER, ENRICHED, DECISIONS, DELIVERY,
       OUTCOMES, DEADLETTER)

