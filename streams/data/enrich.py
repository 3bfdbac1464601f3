"""Decides how a signal is keyed downstream and what customer data travels with it."""
from __future__ import annotations

import math

from streams.data.load import MAX_ATTRIBUTE_CHARS, MAX_ATTRIBUTES, MAX_ID_CHARS


def routing_key(signal: dict) -> str:
    """Known customers are keyed by customer_id, so every device of theirs shares one contact
    ledger downstream; anonymous visitors by visitor_id."""
    return signal["customer_id"] or signal["visitor_id"]


def enrich(signal: dict, profile: dict | None, value: dict | None = None, journey: list | None = None) -> dict:
    """`value`: the CustomerValue of a known customer_id (streams/data/value.py), None for anonymous visitors;
    `journey`: the steps before this signal (streams/data/journey.py)."""
    return {"key": routing_key(signal), "known": profile is not None, "signal": signal, "profile": profile,
            "value": value, "journey": journey or []}


def validate_link(link: dict) -> None:
    for name in ("visitor_id", "customer_id"):
        if not link[name] or len(link[name]) > MAX_ID_CHARS:
            raise ValueError(f"{name} must be 1 to {MAX_ID_CHARS} characters")


def identified(signal: dict, link: dict | None) -> dict:
    """The signal with the customer its visitor is linked to, when the event itself did not say.

    A customer_id the event carried (a login on this device, as detection remembers it) wins over a
    CRM link: it is the freshest word on who uses the device.
    """
    if signal["customer_id"] or link is None:
        return signal
    return {**signal, "customer_id": link["customer_id"]}


def validate_profile(profile: dict) -> None:
    """A profile from any CRM producer, bounded as `engage profiles load` bounds its rows (streams/data/load.py)."""
    if not profile.get("customer_id"):
        raise ValueError("customer_id is empty")
    if profile.get("clv", 0.0) < 0:
        raise ValueError(f"clv must not be negative, got {profile['clv']}")
    if not math.isfinite(profile.get("clv", 0.0)):
        raise ValueError("clv must be a finite number")
    for name, most in (("customer_id", MAX_ID_CHARS), ("display_name", MAX_ID_CHARS), ("segment", 64),
                       ("timezone", 64), ("preferred_channel", 64)):
        if len(profile.get(name) or "") > most:
            raise ValueError(f"{name} is longer than {most} characters")
    attributes = profile.get("attributes") or {}
    if len(attributes) > MAX_ATTRIBUTES or len(profile.get("channels_opted_out") or []) > MAX_ATTRIBUTES:
        raise ValueError(f"at most {MAX_ATTRIBUTES} attributes and {MAX_ATTRIBUTES} opted-out channels")
    if any(len(k) > 64 or len(v) > MAX_ATTRIBUTE_CHARS for k, v in attributes.items()):
        raise ValueError(f"attribute names are at most 64 characters, values {MAX_ATTRIBUTE_CHARS}")


MERGE_SOURCES = ("crm", "login", "operator")
MAX_MERGE_HOPS = 4  # a signal re-keyed through more merged customers than this is in a merge cycle
MERGED_FROM = "merged_from"  # the signal attribute naming the customers it was re-keyed from
SCOPE_ATTRIBUTE = "scope"  # "customer" on the signals customer rules raise (streams/data/customer_rules.py)


def validate_merge(merge: dict) -> None:
    """A KeyMerge from any producer: two different bounded keys and a known source."""
    for name in ("from_key", "into_key"):
        key = merge[name]
        if not key or len(key) > MAX_ID_CHARS or any(ord(c) < 32 for c in key):
            raise ValueError(f"{name} must be 1 to {MAX_ID_CHARS} characters without control characters")
    if merge["from_key"] == merge["into_key"]:
        raise ValueError("a key cannot be merged into itself")
    if merge["source"] not in MERGE_SOURCES:
        raise ValueError(f"source must be one of {', '.join(MERGE_SOURCES)}, got {merge['source'][:64]!r}")
    for name in ("merge_id", "requested_by", "reason"):
        if len(merge.get(name) or "") > MAX_ATTRIBUTE_CHARS:
            raise ValueError(f"{name} is longer than {MAX_ATTRIBUTE_CHARS} characters")


def login_merge(signal: dict, visitor: str, customer: str) -> dict:
    """The KeyMerge the engine sends when a visitor's signal first names their customer: the contact
    counts of the visitor's offers join the customer's. Its id is the signal's, so a replay sends the same."""
    return {"merge_id": f"login:{signal['signal_id']}", "ts": signal["ts"], "from_key": visitor, "into_key": customer,
            "source": "login", "requested_by": "", "reason": "the visitor's signal named the customer"}


def check_hops(hops: int, through: str = "") -> int:
    """`hops`, or a ValueError (the record is dead-lettered) past MAX_MERGE_HOPS: keys merged in a circle.
    `through`: the keys passed, for the reason."""
    if hops > MAX_MERGE_HOPS:
        via = f" ({through[:200]})" if through else ""
        raise ValueError(f"passed on through {hops} merged keys{via}: a merge cycle? (merge the keys one way only)")
    return hops


def without_reserved(signal: dict) -> dict:
    """A signal from detection without the attributes the data stage sets (an event's attributes could name them)."""
    attrs = signal["attributes"]
    if SCOPE_ATTRIBUTE in attrs or MERGED_FROM in attrs:
        return {**signal, "attributes": {k: v for k, v in attrs.items() if k not in (SCOPE_ATTRIBUTE, MERGED_FROM)}}
    return signal


def redirected(signal: dict, into: str) -> dict:
    """The signal (or event) of a customer merged into `into`, as `into`'s; ValueError past MAX_MERGE_HOPS (a merge cycle)."""
    hops = [h for h in signal["attributes"].get(MERGED_FROM, "").split(" ") if h] + [signal["customer_id"]]
    check_hops(len(hops), " ".join(hops))
    return {**signal, "customer_id": into, "attributes": {**signal["attributes"], MERGED_FROM: " ".join(hops)}}
