"""The contact policy: every gate that stops an action, named; quiet hours in the customer's zone, across a DST change; one ledger across channels."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import pytest

from streams.decision.actions import QuietHours, compile_actions
from streams.decision.policy import decide, in_quiet_hours, new_ledger, on_conversion, on_outcome
from streams.rules.loader import RuleError
from tests.support.stage import ACTIONS, SHIPPED_ACTIONS, T0, enriched, profile, signal

HOUR, DAY = 3_600_000, 86_400_000


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp() * 1000)


def with_policy(**changes):
    return dataclasses.replace(ACTIONS, policy=dataclasses.replace(ACTIONS.policy, **changes))


def cancel(signal_id: str, ts: int, **profile_over) -> dict:
    return enriched(signal(signal_id, ts=ts), profile(**profile_over))


def run(actions, *signals, ledger=None):
    """Decide each signal in turn on one ledger; the decisions."""
    out = []
    for e in signals:
        result = decide(e, ledger, actions, explore=False)
        ledger = result.ledger
        out.append(result.decision)
    return out, ledger


QUIET = QuietHours(21 * 60, 8 * 60, frozenset({"voice_callback", "sms", "email"}))


@pytest.mark.parametrize("when, zone, quiet", [
    # the same instant is night in London and morning in Tokyo
    ("2023-11-14T12:00", "Europe/London", False),
    ("2023-11-14T12:00", "Asia/Tokyo", True),         # 21:00 there
    # London springs forward on 2024-03-31 at 01:00 UTC: 07:30 UTC is 07:30 the day before, 08:30 that day
    ("2024-03-30T07:30", "Europe/London", True),
    ("2024-03-31T07:30", "Europe/London", False),
    # New York falls back on 2024-11-03: 12:30 UTC is 08:30 EDT the day before, 07:30 EST that day
    ("2024-11-02T12:30", "America/New_York", False),
    ("2024-11-03T12:30", "America/New_York", True),
    # an unknown zone is UTC
    ("2024-11-03T07:59", "Mars/Olympus", True),
    ("2024-11-03T08:00", "Mars/Olympus", False),
])
def test_quiet_hours_are_the_customers_wall_clock_across_zones_and_dst(when, zone, quiet):
    policy = dataclasses.replace(ACTIONS.policy, quiet_hours=QUIET)
    assert in_quiet_hours(policy, "voice_callback", utc(when), zone) is quiet
    assert not in_quiet_hours(policy, "chat", utc(when), zone)  # on the site: never quiet


def test_in_the_quiet_hours_an_outbound_channel_gives_way_and_with_no_other_the_gate_is_named():
    actions = with_policy(quiet_hours=QUIET)
    # Given C1 in London at 22:13: the call back (outbound) is quiet, its chat is not
    [d], _ = run(actions, cancel("s1", T0))
    assert d["action_id"] == "retention-callback" and d["channel"] == "chat"
    # When every channel open to the customer is outbound (chat opted out, so only the call back)
    [d], _ = run(actions, cancel("s2", T0, channels_opted_out=["chat"]))
    # Then nothing is offered, and the decision names the quiet hours
    assert d["outcome"] == "suppressed" and d["gate"] == "quiet_hours"
    # And at 10:00 London time the call back is open again
    [d], _ = run(actions, cancel("s3", utc("2023-11-15T10:00"), channels_opted_out=["chat"]))
    assert d["outcome"] == "act" and d["channel"] == "voice_callback"


def test_the_minimum_gap_holds_across_channels():
    actions = with_policy(min_gap_ms=10 * 60_000, max_offers_per_day=10)
    # Given an offer by call back, then a signal 5 minutes later whose best channel is chat, then 11 minutes later
    ds, _ = run(actions, cancel("s1", T0 - 12 * HOUR), cancel("s2", T0 - 12 * HOUR + 5 * 60_000, clv=1500.0),
                cancel("s3", T0 - 12 * HOUR + 11 * 60_000, clv=1500.0))
    assert ds[0]["outcome"] == "act" and ds[0]["channel"] == "voice_callback"
    # Then the second is stopped by the gap whatever its channel, the third passes
    assert ds[1]["outcome"] == "suppressed" and ds[1]["gate"] == "min_gap" and ds[1]["channel"] == "chat"
    assert ds[2]["outcome"] == "act"


def test_the_weekly_cap_counts_monday_to_sunday_in_the_customers_zone():
    actions = with_policy(max_offers_per_week=2, max_offers_per_day=5)
    # Given Tuesday 2023-11-14 and Sunday 2023-11-19 in London, then Monday the 20th
    tue, sun, mon = utc("2023-11-14T10:00"), utc("2023-11-19T10:00"), utc("2023-11-20T10:00")
    ds, ledger = run(actions, cancel("a", tue), cancel("b", sun), cancel("c", sun + HOUR), cancel("d", mon))
    assert [d["outcome"] for d in ds] == ["act", "act", "suppressed", "act"]
    assert ds[2]["gate"] == "weekly_cap"
    assert ledger["week"] == "2023-W47" and ledger["offers_week"] == 1
    # And in Auckland (13 hours ahead) Sunday 23:30 UTC is already Monday: a new week
    ds, _ = run(actions, cancel("e", tue, timezone="Pacific/Auckland"), cancel("f", sun, timezone="Pacific/Auckland"),
                cancel("g", utc("2023-11-19T23:30"), timezone="Pacific/Auckland"))
    assert [d["outcome"] for d in ds] == ["act", "act", "act"]


def test_a_purchase_suppresses_purchase_goal_actions_for_the_set_time_but_not_help():
    actions = with_policy(suppress_after_purchase_ms=3 * DAY)
    # Given C1 bought yesterday
    ledger = on_conversion(None, {"type": "purchase", "ts": T0 - DAY})
    assert on_conversion(ledger, {"type": "cancel", "ts": T0}) is None  # other conversions change nothing
    # When they hesitate over a valuable cart (checkout-assist: goal purchase) and get locked out (login-help: resolve)
    cart = enriched(signal("s1", name="cart_at_risk", cart_value=400.0), profile())
    locked = enriched(signal("s2", name="login_trouble"), profile())
    ds, _ = run(actions, cart, locked, ledger=ledger)
    # Then no sales offer, named; help still comes
    assert ds[0]["outcome"] == "suppressed" and ds[0]["gate"] == "recent_purchase"
    assert ds[1]["outcome"] == "act" and ds[1]["action_id"] == "login-help"
    # And four days after the purchase the sales offer is back
    later = enriched(signal("s3", name="cart_at_risk", cart_value=400.0, ts=T0 + 3 * DAY), profile())
    [d], _ = run(actions, later, ledger=ledger)
    assert d["outcome"] == "act" and d["action_id"] == "checkout-assist"


def test_a_declined_action_is_not_offered_again_for_the_set_time_but_another_action_may_be():
    actions = with_policy(suppress_after_decline_ms=DAY)
    # Given C1 declined the retention call back an hour ago
    ledger = on_outcome(None, {"type": "declined", "ts": T0 - HOUR, "action_id": "retention-callback"})
    assert on_outcome(ledger, {"type": "shown", "ts": T0, "action_id": "retention-chat"}) is None
    # When they look for how to cancel again
    [d], ledger = run(actions, cancel("s1", T0), ledger=ledger)
    # Then the next best action (the retention chat) is offered instead
    assert d["outcome"] == "act" and d["action_id"] == "retention-chat"
    # And when both were declined, the decision names the decline
    ledger = on_outcome(ledger, {"type": "declined", "ts": T0 + 1, "action_id": "retention-chat"})
    [d], _ = run(actions, cancel("s2", T0 + HOUR), ledger=ledger)
    assert d["outcome"] == "suppressed" and d["gate"] == "recent_decline"


def test_consent_and_opt_outs_are_per_channel_and_an_opt_out_of_everything_stops_all():
    # Given a customer who opted out of voice: the call back goes by chat
    [d], _ = run(ACTIONS, cancel("s1", T0, channels_opted_out=["voice_callback"]))
    assert d["channel"] == "chat"
    # And one who opted out of every channel of both actions: no channel, named
    [d], _ = run(ACTIONS, cancel("s2", T0, channels_opted_out=["voice_callback", "chat"]))
    assert d["outcome"] == "no_action" and d["gate"] == "no_channel"
    # And one who opted out of all proactive contact
    [d], _ = run(ACTIONS, cancel("s3", T0, opted_out=True))
    assert d["outcome"] == "suppressed" and d["gate"] == "opted_out"


def test_a_ledger_of_an_earlier_release_is_read_with_the_new_fields():
    old = {"day": "2023-11-14", "offers_today": 1, "last_offer_ts": T0 - HOUR, "recent": {}}
    [d], ledger = run(with_policy(max_offers_per_week=3), cancel("s1", T0), ledger=old)
    assert d["outcome"] == "act" and ledger["offers_today"] == 2 and ledger["offers_week"] == 1
    assert set(new_ledger()) <= set(ledger)


@pytest.mark.parametrize("policy, message", [
    ("quiet_hours: {from: '25:00', to: '08:00'}", "quiet_hours.from must be a time of day"),
    ("quiet_hours: {from: '21:00', to: '21:00'}", "are the same time"),
    ("quiet_hours: {from: '21:00', to: '08:00', channels: [pigeon]}", "quiet_hours.channels"),
    ("quiet_hours: {from: '21:00'}", "to"),
    ("min_gap: soon", "min_gap must be a duration"),
    ("max_offers_per_week: -1", "max_offers_per_week must be a whole number"),
    ("suppress_after_decline: 0", "suppress_after_decline must be longer than zero"),
    ("away_after: later", "away_after must be a duration"),
])
def test_an_invalid_policy_is_refused_with_file_line_and_reason(policy, message):
    text = f"policy:\n  max_offers_per_day: 2\n  {policy}\nactions: []\n"
    with pytest.raises(RuleError) as err:
        compile_actions(text, "actions.yaml")
    assert message in str(err.value) and "actions.yaml:" in str(err.value)


def test_the_shipped_policy_has_every_gate():
    p = SHIPPED_ACTIONS.policy
    assert p.max_offers_per_week and p.min_gap_ms and p.quiet_hours and p.suppress_after_purchase_ms
    assert p.suppress_after_decline_ms and p.holdout_share and p.control_share


# ---- presence: is the visitor still on the site? -----------------------------------------------------

PRESENCE = compile_actions("""
policy: {max_offers_per_day: 5, control_share: 0.0, away_after: 2m}
actions:
  - id: reminder
    description: Remind them of their cart
    answers: [cart_at_risk]
    value: 100
    uplift: {act: 0.5, baseline: 0.1}
    channels:
      - {channel: email}
      - {channel: web_message}
    message: 'Your cart is waiting, {name}.'
    ttl: 30m
  - id: helper
    description: Invite to chat
    answers: [login_trouble]
    value: 100
    uplift: {act: 0.5, baseline: 0.1}
    channels:
      - {channel: chat}
      - {channel: web_message, when: 'on_site'}
    skill: support
    message: 'Can we help?'
    ttl: 5m
""", "actions.yaml")


def seen(name: str, quiet_s: int, channel: str = "web", **over) -> dict:
    """A signal raised at T0 + 10 min whose newest evidence came from `channel`, the visitor quiet `quiet_s` since."""
    ts = T0 + 600_000
    sig = signal(f"{name}-{quiet_s}-{channel}", ts=ts, name=name, last_event_ts=ts - quiet_s * 1000,
                 evidence=[{"event_id": "e1", "ts": T0, "type": "cart_add", "channel": channel, "path": "/cart",
                            "query": None, "value": 80.0}], **over)
    return enriched(sig, profile(marketing_consent=True, preferred_channel="email", timezone="Europe/London"))


def test_on_the_site_an_in_page_message_beats_an_email_even_one_the_customer_prefers():
    # Given a customer who prefers e-mail, quiet for 30 s on the site when their cart is at risk
    [d], _ = run(PRESENCE, seen("cart_at_risk", 30))
    # Then the reminder is shown in the page
    assert d["outcome"] == "act" and d["channel"] == "web_message"


def test_gone_from_the_site_the_message_goes_by_email_and_nothing_is_shown_in_the_page():
    # Given the same customer quiet for 10 minutes (longer than away_after) when the timer raised the signal
    [d], _ = run(PRESENCE, seen("cart_at_risk", 600))
    # Then the reminder goes by e-mail
    assert d["outcome"] == "act" and d["channel"] == "email"
    # And a signal of one whose newest event was a phone call is not on the site either
    [d], _ = run(PRESENCE, seen("cart_at_risk", 0, channel="voice"))
    assert d["channel"] == "email"


def test_gone_with_only_channels_in_the_page_open_nothing_is_done_and_the_gate_says_why():
    # Given a visitor quiet for 10 minutes, and an action whose channels are all in the page
    [d], _ = run(PRESENCE, seen("login_trouble", 600))
    # Then no action, gate left_site, with when they were last seen
    assert d["outcome"] == "no_action" and d["gate"] == "left_site"
    assert "600 s before the signal" in d["reason"]


def test_presence_is_readable_in_expressions_and_signals_of_earlier_releases_use_their_newest_evidence():
    # Given a visitor on the site: chat, the first channel
    [d], _ = run(PRESENCE, seen("login_trouble", 30))
    assert d["channel"] == "chat"
    # When chat is opted out, Then web_message, open `when: on_site`
    prof = dict(profile(), channels_opted_out=["chat"])
    present = dict(seen("login_trouble", 30), profile=prof)
    [d], _ = run(PRESENCE, present)
    assert d["outcome"] == "act" and d["channel"] == "web_message"
    # And gone, web_message is not open at all (its `when` is false)
    gone = dict(seen("login_trouble", 600), profile=prof)
    assert run(PRESENCE, gone)[0][0]["gate"] == "no_channel"
    # And a signal without last_event_ts (an earlier release's) counts from its newest evidence: 10 min ago
    old = seen("login_trouble", 30)
    old["signal"]["last_event_ts"] = None
    [d], _ = run(PRESENCE, old)
    assert d["gate"] == "left_site"
