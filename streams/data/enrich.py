"""Decides how a signal is keyed downstream and what customer data travels with it."""
from __future__ import annotations


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
        if not link[name] or len(link[name]) > 256:
            raise ValueError(f"{name} must be 1 to 256 characters")


def identified(signal: dict, link: dict | None) -> dict:
    """The signal with the customer its visitor is linked to, when the event itself did not say.

    A customer_id the event carried (a login on this device, as detection remembers it) wins over a
    CRM link: it is the freshest word on who uses the device.
    """
    if signal["customer_id"] or link is None:
        return signal
    return {**signal, "customer_id": link["customer_id"]}


def validate_profile(profile: dict) -> None:
    if not profile.get("customer_id"):
        raise ValueError("customer_id is empty")
    if profile.get("clv", 0.0) < 0:
        raise ValueError(f"clv must not be negative, got {profile['clv']}")
