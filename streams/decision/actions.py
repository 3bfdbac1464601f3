"""Decides what an action rule file means: validates it and compiles its expressions once."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from streams.rules.expr import Compiled, ExprError, Names, compile_expr
from streams.rules.loader import RuleError, check_keys, duration_ms, line_of, line_of_key, load_yaml, read_rule_file

PROFILE_FIELDS = frozenset({"customer_id", "display_name", "segment", "clv", "preferred_channel", "marketing_consent",
                            "opted_out", "channels_opted_out", "timezone", "attributes"})
CHANNELS = frozenset({"voice_callback", "chat", "web_message", "email", "sms", "click_to_call", "webhook"})
# what converting means for an action, as attribution counts it: a purchase event; no cancel event
# (the customer stayed); no call to the contact centre (the visitor was helped without one)
GOALS = ("purchase", "retain", "resolve")
# channels that reach a person outside the site need marketing consent
NEEDS_CONSENT = frozenset({"email", "sms"})
# channels that reach a person wherever they are (not on the site): kept out of the quiet hours
OUTBOUND = frozenset({"voice_callback", "sms", "email"})
# channels shown in the visitor's page: only while they are on the site
IN_PAGE = frozenset({"web_message", "chat", "click_to_call"})
# messages read later: while the visitor is on the site, a channel in the page comes before these
READ_LATER = frozenset({"email", "sms"})
# where a visitor's events come from when they are on the site or in the app
ON_SITE_SOURCES = frozenset({"web", "app"})
_TIME_OF_DAY = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")

DECISION_NAMES = Names(
    args=("c",),
    roots={"known": ("c", "known"), "profile": ("c", "profile"), "value": ("c", "value"), "signal": ("c", "signal"),
           "priority": ("c", "priority"), "cart_value": ("c", "cart_value"), "session_pages": ("c", "session_pages"),
           "channel": ("c", "channel"), "on_site": ("c", "on_site")},
    fields={"profile": PROFILE_FIELDS, "value": frozenset({"clv", "clv_source", "segment", "purchases"})},
)
_TEMPLATE_FIELD = re.compile(r"\{([^{}]*)\}")
TEMPLATE_FIELDS = frozenset({"name", "segment", "signal", "cart_value"})


@dataclass(frozen=True)
class ChannelChoice:
    channel: str
    when: Compiled | None


@dataclass(frozen=True)
class Action:
    id: str
    description: str
    answers: frozenset[str]
    eligible: Compiled | None
    value: Compiled | float
    p_act: float
    p_baseline: float
    channels: tuple[ChannelChoice, ...]
    skill: str | None
    message: str
    ttl_ms: int
    line: int
    goal: str = "purchase"


@dataclass(frozen=True)
class QuietHours:
    """From `start` to `end` (minutes after local midnight; across midnight when end <= start), on `channels`."""

    start: int
    end: int
    channels: frozenset[str] = OUTBOUND

    def holds(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end


@dataclass(frozen=True)
class Policy:
    """The contact policy: one ledger per customer (or anonymous visitor) across every channel."""

    max_offers_per_day: int = 2
    control_share: float = 0.1
    holdout_share: float = 0.0  # customers who never get a proactive offer (the global hold-out)
    channel_cost: tuple[tuple[str, float], ...] = ()
    max_offers_per_week: int | None = None   # Monday to Sunday in the customer's time zone
    min_gap_ms: int = 0                      # between two offers to the same customer, on any channels
    quiet_hours: QuietHours | None = None    # in the customer's time zone, for outbound channels
    suppress_after_purchase_ms: int = 0      # no purchase-goal action this long after a purchase
    suppress_after_decline_ms: int = 0       # an action declined is not offered again for this long
    away_after_ms: int = 300_000             # a visitor quiet this long before the signal has left the site

    def cost(self, channel: str) -> float:
        return dict(self.channel_cost).get(channel, 0.0)


@dataclass
class ActionSet:
    name: str
    version: str
    policy: Policy
    actions: list[Action]

    @property
    def priors(self) -> tuple[tuple[str, float, float], ...]:
        """(id, P(convert | act), P(convert | no action)) of every action, in the file's order: the uplift model's priors."""
        return tuple((a.id, a.p_act, a.p_baseline) for a in self.actions)

    def answering(self, signal: str) -> list[Action]:
        return [a for a in self.actions if signal in a.answers]

    def get(self, action_id: str | None) -> Action | None:
        return next((a for a in self.actions if a.id == action_id), None)

    def goal_of(self, action_id: str | None) -> str:
        action = self.get(action_id)
        return action.goal if action is not None else "purchase"


def _expr(text, file, line, rule_id, what) -> Compiled | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise RuleError(file, line, f"{what} must be an expression in quotes, got {text!r}", rule_id)
    try:
        return compile_expr(text, DECISION_NAMES)
    except ExprError as exc:
        raise RuleError(file, line, f"{what}: {exc}", rule_id) from None


def _probability(value, file, line, rule_id, what) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RuleError(file, line, f"{what} must be a probability from 0 to 1, got {value!r}", rule_id)
    return float(value)


def _compile_action(node, file: str, policy: Policy) -> Action:
    line = line_of(node, 0)
    if not isinstance(node, dict) or not isinstance(node.get("id"), str):
        raise RuleError(file, line, "each action needs an id")
    aid = node["id"]
    check_keys(node, {"id", "description", "answers", "eligible", "value", "uplift", "channels", "skill", "message", "ttl",
                      "goal"},
               {"answers", "value", "uplift", "channels", "message", "ttl"}, file, aid, "an action")
    answers = node["answers"]
    answers = [answers] if isinstance(answers, str) else answers
    if not isinstance(answers, list) or not answers or not all(isinstance(s, str) and s for s in answers):
        raise RuleError(file, line, "answers must list the signals this action answers", aid)
    value = node["value"]
    if isinstance(value, bool):
        raise RuleError(file, line, "value must be a number or an expression", aid)
    value = float(value) if isinstance(value, (int, float)) else _expr(value, file, line_of_key(node, "value", line), aid,
                                                                       "value")
    uplift = node["uplift"]
    uline = line_of(uplift, line)
    if not isinstance(uplift, dict):
        raise RuleError(file, uline, "uplift must be {act: P(convert | act), baseline: P(convert | no action)}", aid)
    check_keys(uplift, {"act", "baseline"}, {"act", "baseline"}, file, aid, "uplift")
    channels = []
    if not isinstance(node["channels"], list) or not node["channels"]:
        raise RuleError(file, line, "channels must list at least one channel", aid)
    for ch in node["channels"]:
        cline = line_of(ch, line)
        if not isinstance(ch, dict):
            raise RuleError(file, cline, "each channel is a mapping like {channel: chat, when: 'known'}", aid)
        check_keys(ch, {"channel", "when"}, {"channel"}, file, aid, "a channel")
        if ch["channel"] not in CHANNELS:
            raise RuleError(file, cline, f"unknown channel {ch['channel']!r} (known: {', '.join(sorted(CHANNELS))})", aid)
        channels.append(ChannelChoice(ch["channel"], _expr(ch.get("when"), file, cline, aid, "when")))
    message = node["message"]
    if not isinstance(message, str) or not message.strip():
        raise RuleError(file, line, "message must be a text", aid)
    for field in _TEMPLATE_FIELD.findall(message):
        if field not in TEMPLATE_FIELDS:
            raise RuleError(file, line, f"message uses {{{field}}}; allowed: {', '.join('{%s}' % f for f in sorted(TEMPLATE_FIELDS))}", aid)
    goal = node.get("goal", "purchase")
    if goal not in GOALS:
        raise RuleError(file, line, f"goal must be one of {', '.join(GOALS)}, got {goal!r}", aid)
    skill = node.get("skill")
    if skill is not None and (not isinstance(skill, str) or not skill):
        raise RuleError(file, line, "skill must be a name", aid)
    return Action(id=aid, description=str(node.get("description", "")), answers=frozenset(answers),
                  eligible=_expr(node.get("eligible"), file, line_of_key(node, "eligible", line), aid, "eligible"),
                  value=value,
                  p_act=_probability(uplift["act"], file, uline, aid, "uplift.act"),
                  p_baseline=_probability(uplift["baseline"], file, uline, aid, "uplift.baseline"),
                  channels=tuple(channels), skill=skill, message=message,
                  ttl_ms=duration_ms(node["ttl"], file, line, aid, "ttl"), line=line, goal=goal)


def _compile_policy(node, file: str) -> Policy:
    if node is None:
        return Policy()
    line = line_of(node, 1)
    if not isinstance(node, dict):
        raise RuleError(file, line, "policy must be a mapping")
    check_keys(node, {"max_offers_per_day", "max_offers_per_week", "min_gap", "quiet_hours", "suppress_after_purchase",
                      "suppress_after_decline", "control_share", "holdout_share", "channel_cost", "away_after"}, set(),
               file, None, "policy")
    cap = node.get("max_offers_per_day", 2)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 0:
        raise RuleError(file, line, f"max_offers_per_day must be a whole number, got {cap!r}")
    share = node.get("control_share", 0.1)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
        raise RuleError(file, line, f"control_share must be from 0 up to (not including) 1, got {share!r}")
    holdout = node.get("holdout_share", 0.0)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0.0 <= holdout < 1.0:
        raise RuleError(file, line, f"holdout_share must be from 0 up to (not including) 1, got {holdout!r}")
    costs = node.get("channel_cost", {}) or {}
    if not isinstance(costs, dict):
        raise RuleError(file, line, "channel_cost must map channels to a cost")
    for ch, cost in costs.items():
        if ch not in CHANNELS:
            raise RuleError(file, line_of(costs, line), f"channel_cost: unknown channel {ch!r}")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
            raise RuleError(file, line_of(costs, line), f"channel_cost.{ch} must be a number >= 0")
    week = node.get("max_offers_per_week")
    if week is not None and (not isinstance(week, int) or isinstance(week, bool) or week < 0):
        raise RuleError(file, line_of_key(node, "max_offers_per_week", line),
                        f"max_offers_per_week must be a whole number, got {week!r}")

    def duration(key: str) -> int:
        return 0 if node.get(key) is None else duration_ms(node[key], file, line_of_key(node, key, line), None, key)

    return Policy(max_offers_per_day=cap, control_share=float(share), holdout_share=float(holdout),
                  channel_cost=tuple(sorted((k, float(v)) for k, v in costs.items())), max_offers_per_week=week,
                  min_gap_ms=duration("min_gap"), quiet_hours=_quiet_hours(node.get("quiet_hours"), file, line),
                  suppress_after_purchase_ms=duration("suppress_after_purchase"),
                  suppress_after_decline_ms=duration("suppress_after_decline"),
                  away_after_ms=Policy.away_after_ms if node.get("away_after") is None else duration("away_after"))


def _quiet_hours(node, file: str, line: int) -> QuietHours | None:
    if node is None:
        return None
    line = line_of(node, line)
    if not isinstance(node, dict):
        raise RuleError(file, line, "quiet_hours must be a mapping like {from: '21:00', to: '08:00'}")
    check_keys(node, {"from", "to", "channels"}, {"from", "to"}, file, None, "quiet_hours")

    def minute(key: str) -> int:
        m = _TIME_OF_DAY.match(str(node[key]))
        if not m or isinstance(node[key], (int, float)):
            raise RuleError(file, line, f"quiet_hours.{key} must be a time of day like '21:00' (in quotes), "
                                        f"got {node[key]!r}")
        return int(m.group(1)) * 60 + int(m.group(2))

    start, end = minute("from"), minute("to")
    if start == end:
        raise RuleError(file, line, "quiet_hours.from and quiet_hours.to are the same time")
    channels = node.get("channels", sorted(OUTBOUND))
    if not isinstance(channels, list) or not all(c in CHANNELS for c in channels):
        raise RuleError(file, line, f"quiet_hours.channels must list channels among {', '.join(sorted(CHANNELS))}, "
                                    f"got {channels!r}")
    return QuietHours(start, end, frozenset(channels))


def compile_actions(text: str, file: str, name: str | None = None) -> ActionSet:
    doc = load_yaml(text, file)
    if not isinstance(doc, dict) or not isinstance(doc.get("actions"), list):
        raise RuleError(file, 1, "an actions file is a mapping with 'actions:' (and optionally 'policy:')")
    check_keys(doc, {"actions", "policy", "name", "kind"}, {"actions"}, file, None, "the file")
    policy = _compile_policy(doc.get("policy"), file)
    actions, seen = [], {}
    for node in doc["actions"]:
        action = _compile_action(node, file, policy)
        if action.id in seen:
            raise RuleError(file, action.line, f"id is used twice (first at line {seen[action.id]})", action.id)
        seen[action.id] = action.line
        actions.append(action)
    return ActionSet(name=name or Path(file).stem, version=hashlib.sha256(text.encode()).hexdigest()[:12],
                     policy=policy, actions=actions)


def load_actions(path: Path) -> ActionSet:
    text, file = read_rule_file(path)
    return compile_actions(text, file)
