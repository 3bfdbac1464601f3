"""A partition of detection run in memory: the same Detector the agent runs, over dictionaries."""
from __future__ import annotations

from streams.detection.detector import Detector
from streams.detection.partition import Tx
from streams.detection.rules import DetectionRuleSet, compile_detection
from tests.support.wire import interaction

T0 = 1_700_000_000_000
S = 1000
M = 60_000


def cart_stall(wait: str) -> str:
    """The shipped cart-stall rule's shape: a full cart, a checkout, then no purchase for `wait`."""
    return f"""
- id: cart-stall
  when:
    sequence: [{{event: add_to_cart}}, {{event: checkout_start}}]
    within: 15m
    then_absent: {{event: purchase, for: {wait}}}
    where: 'cart.value >= 50'
  signal: cart_at_risk
"""


def rules(text: str) -> DetectionRuleSet:
    return compile_detection(text, "test.yaml")


class Partition:
    def __init__(self, ruleset: DetectionRuleSet, lateness_ms: int = 0, ttl_ms: int = 30 * 86_400_000):
        self.ruleset = ruleset
        self.detector = Detector(lambda: self.ruleset, lateness_ms=lateness_ms, ttl_ms=ttl_ms)
        self.visitors: dict = {}
        self.timers: dict = {}
        self.signals: list[dict] = []
        self.n = 0

    @staticmethod
    def ts(at: int) -> int:
        """The event time `at` ms after T0."""
        return T0 + at

    def event(self, type_: str, at: int, visitor: str = "v1", event_id: str | None = None, **kw) -> list[dict]:
        """Given an event `at` ms after T0, when it is processed, then these signals come out."""
        self.n += 1
        ev = interaction(event_id=event_id or f"e{self.n}", visitor_id=visitor, type_=type_, ts=T0 + at, **kw)
        tx = Tx(self.visitors, self.timers)
        out = self.detector.on_event(tx, 0, ev).signals
        tx.apply()
        self.signals += out
        return out

    def tick(self, at: int) -> list[dict]:
        """The partition idles until `at` ms after T0 (its clock moves on from its latest event)."""
        tx = Tx(self.visitors, self.timers)
        out = self.detector.on_tick(tx, 0, max(0, T0 + at - self.detector.max_ts.get(0, T0)))
        tx.apply()
        self.signals += out
        return out

    def fired(self) -> list[tuple[str, int]]:
        """(rule id, ms after T0) of every signal so far."""
        return [(s["rule_id"], s["ts"] - T0) for s in self.signals]
