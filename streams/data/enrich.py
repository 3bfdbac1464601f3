"""Decides how a signal is keyed downstream and what customer data travels with it."""
from __future__ import annotations


def routing_key(signal: dict) -> str:
    """Known customers are keyed by customer_id, so every device of theirs shares one contact
    ledger downstream; anonymous visitors by visitor_id."""
    return signal["customer_id"] or signal["visitor_id"]


def enrich(signal: dict, profile: dict | None) -> dict:
    return {"key": routing_key(signal), "known": profile is not None, "signal": signal, "profile": profile}


def validate_profile(profile: dict) -> None:
    if not profile.get("customer_id"):
        raise ValueError("customer_id is empty")
    if profile.get("clv", 0.0) < 0:
        raise ValueError(f"clv must not be negative, got {profile['clv']}")
