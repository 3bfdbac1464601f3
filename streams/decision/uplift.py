"""Decides what the engine believes about an action's effect: P(convert | act) and P(convert | no act) for one customer, and how sure it is.

One Bayesian linear model per action and arm (treated, held out) over the same features, on the
0/1 conversion label: a linear probability model with a Gaussian prior centred on the action
rule's priors (`uplift.act`, `uplift.baseline`) and a fixed noise variance. Its evidence is
sufficient statistics, XᵀX, Xᵀy and n, which add up: each partition accumulates its own, and a
worker's model is the prior plus the sum over partitions, whatever worker learned them, in
whatever order they are merged. So one model serves the whole deployment.

Thompson sampling explores: a decision draws the weights from the posterior, with a generator
seeded by the decision id and the model version, so the same inputs give the same draw, and the
draws narrow as evidence grows. The mean is used when exploration is off. Exploration is bounded: a draw
stays within EXPLORE_SD posterior standard deviations of the mean.

The features (FEATURES) are what the engine knows when the signal arrives, scaled to [0, 1] (or
[-1, 1] for the hour), so one prior suits every weight.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

NOISE_VAR = 0.25        # p(1 - p) at its largest: a conservative variance for a 0/1 label
PRIOR_STRENGTH = 20.0   # the rule's prior counts as this many observations on the intercept
# precision of the other weights' zero-centred prior (in units of NOISE_VAR): a weight's prior sd is
# 0.05, so with no evidence the features together move a draw of P(convert) by some 15 points, and
# exploration starts near the rules' priors instead of anywhere in [0, 1]
WEIGHT_PRIOR = 100.0
EXPLORE_SD = 2.0        # a Thompson draw stays within this many posterior sds of the mean

# The model's inputs, in order. bias is 1; agent_led depends on the candidate's channel; the rest on
# the signal and the profile. A new feature is a new model: evidence with other names is not merged.
FEATURES = ("bias", "known", "clv", "returning", "mobile", "pages", "events", "cart", "dwell", "hour_sin", "hour_cos",
            "agent_led")
DIMS = len(FEATURES)
AGENT_LED = frozenset({"chat", "voice_callback", "click_to_call"})  # channels a person (an agent) takes up
CLV_SCALE, PAGES_SCALE, EVENTS_SCALE, CART_SCALE, DWELL_SCALE_S = 5000.0, 20.0, 50.0, 500.0, 600.0


def _unit(value: float, scale: float) -> float:
    return min(max(float(value), 0.0), scale) / scale


def _local_hour(ts_ms: int, tz: str | None) -> float:
    try:
        zone = ZoneInfo(tz) if tz else timezone.utc
    except (ZoneInfoNotFoundError, ValueError):
        zone = timezone.utc
    local = datetime.fromtimestamp(ts_ms / 1000, zone)
    return local.hour + local.minute / 60.0


def signal_features(enriched: dict) -> dict[str, float]:
    """Every feature but agent_led, from the enriched signal (recorded on the Decision as `features`)."""
    sig = enriched["signal"]
    profile = enriched["profile"] or {}
    attributes = sig.get("attributes") or {}
    hour = _local_hour(sig["ts"], profile.get("timezone"))
    returning = bool(sig.get("returning")) or attributes.get("returning", "").lower() in ("1", "true", "yes")
    mobile = attributes.get("device", "").lower() in ("mobile", "phone", "tablet") or any(
        e.get("channel") == "app" for e in sig["evidence"][-1:])
    return {"bias": 1.0, "known": 1.0 if enriched["known"] else 0.0, "clv": _unit(profile.get("clv") or 0.0, CLV_SCALE),
            "returning": 1.0 if returning else 0.0, "mobile": 1.0 if mobile else 0.0,
            "pages": _unit(sig["session_pages"], PAGES_SCALE), "events": _unit(sig["session_events"], EVENTS_SCALE),
            "cart": _unit(sig["cart_value"], CART_SCALE), "dwell": _unit(sig.get("session_seconds") or 0.0, DWELL_SCALE_S),
            "hour_sin": round(math.sin(2 * math.pi * hour / 24), 6), "hour_cos": round(math.cos(2 * math.pi * hour / 24), 6)}


def vector(features: dict[str, float], channel: str | None) -> np.ndarray:
    """The model input for one candidate: the signal's features and whether its channel needs an agent."""
    values = dict(features, agent_led=1.0 if channel in AGENT_LED else 0.0)
    return np.array([float(values.get(name, 0.0)) for name in FEATURES])


@dataclass
class Evidence:
    """Sufficient statistics of one arm of one action: additive, so partitions merge by summing."""

    xtx: np.ndarray
    xty: np.ndarray
    n: int = 0

    @classmethod
    def empty(cls, dims: int) -> "Evidence":
        return cls(np.zeros((dims, dims)), np.zeros(dims), 0)

    def add(self, x: np.ndarray, y: float) -> None:
        self.xtx += np.outer(x, x)
        self.xty += x * y
        self.n += 1

    def merged(self, other: "Evidence") -> "Evidence":
        return Evidence(self.xtx + other.xtx, self.xty + other.xty, self.n + other.n)

    def as_json(self) -> dict:
        return {"xtx": self.xtx.tolist(), "xty": self.xty.tolist(), "n": self.n}

    @classmethod
    def from_json(cls, doc: dict) -> "Evidence":
        return cls(np.array(doc["xtx"], dtype=float), np.array(doc["xty"], dtype=float), int(doc["n"]))


@dataclass
class Posterior:
    mean: np.ndarray
    cov: np.ndarray
    chol: np.ndarray

    def predict(self, x: np.ndarray) -> tuple[float, float]:
        """P(convert) (clipped to [0, 1]) and its standard deviation under the posterior."""
        p = float(x @ self.mean)
        sd = float(np.sqrt(max(0.0, x @ self.cov @ x)))
        return min(1.0, max(0.0, p)), sd

    def sample(self, x: np.ndarray, rng: np.random.Generator) -> float:
        """A Thompson draw of P(convert), within EXPLORE_SD sds of the mean."""
        w = self.mean + self.chol @ rng.standard_normal(len(self.mean))
        mean = float(x @ self.mean)
        sd = float(np.sqrt(max(0.0, x @ self.cov @ x)))
        drawn = min(mean + EXPLORE_SD * sd, max(mean - EXPLORE_SD * sd, float(x @ w)))
        return min(1.0, max(0.0, drawn))


def posterior(prior_mean: np.ndarray, prior_prec: np.ndarray, xtx: np.ndarray, xty: np.ndarray) -> Posterior:
    """The Gaussian posterior of the weights given an independent Gaussian prior and the evidence.

    Precisions are in units of 1 / NOISE_VAR: the noise variance scales the covariance only."""
    precision = np.diag(prior_prec) + xtx
    rhs = prior_prec * prior_mean + xty
    cov = np.linalg.inv(precision) * NOISE_VAR
    cov = (cov + cov.T) / 2
    mean = np.linalg.solve(precision, rhs)
    return Posterior(mean, cov, np.linalg.cholesky(cov))


def draw_seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


@dataclass
class UpliftModel:
    """Both arms of a set of actions, pooled: P(convert | arm) = w_arm . x[1:] + b_arm[action].

    The features' weights are shared by every action (how persuadable, or how sure to convert, a
    person looks does not depend on what is offered), so each outcome teaches every action; each
    action keeps its own intercept per arm, whose prior is its rule's (uplift.act, uplift.baseline).
    The pooled statistics are assembled from the per-action ones: x[0] is the constant 1, so an
    action's XᵀX holds its count and feature sums in its first row and column.
    """

    priors: dict[str, tuple[float, float]]        # action id -> (P(act), P(no act)) of its rule, in a fixed order
    treated: dict[str, Evidence] = field(default_factory=dict)
    untreated: dict[str, Evidence] = field(default_factory=dict)
    dims: int = DIMS
    _cache: dict = field(default_factory=dict, repr=False)

    def _pooled(self, evidence: dict[str, Evidence], arm: int) -> Posterior:
        shared, order = self.dims - 1, list(self.priors)
        size = shared + len(order)
        xtx, xty = np.zeros((size, size)), np.zeros(size)
        for i, action in enumerate(order):
            ev = evidence.get(action)
            if ev is None or ev.n == 0:
                continue
            j = shared + i
            xtx[:shared, :shared] += ev.xtx[1:, 1:]
            xtx[:shared, j] += ev.xtx[1:, 0]
            xtx[j, :shared] += ev.xtx[0, 1:]
            xtx[j, j] += ev.xtx[0, 0]
            xty[:shared] += ev.xty[1:]
            xty[j] += ev.xty[0]
        prior_prec = np.concatenate([np.full(shared, WEIGHT_PRIOR), np.full(len(order), PRIOR_STRENGTH)])
        prior_mean = np.concatenate([np.zeros(shared), [self.priors[a][arm] for a in order]])
        return posterior(prior_mean, prior_prec, xtx, xty)

    def posteriors(self) -> tuple[Posterior, Posterior]:
        key = tuple(e.n for e in self.treated.values()), tuple(e.n for e in self.untreated.values())
        if self._cache.get("key") != key:
            self._cache = {"key": key, "value": (self._pooled(self.treated, 0), self._pooled(self.untreated, 1))}
        return self._cache["value"]

    def design(self, action_id: str, x: np.ndarray) -> np.ndarray:
        """The pooled input: the shared features, and a one for the action's intercept."""
        onehot = np.zeros(len(self.priors))
        onehot[list(self.priors).index(action_id)] = 1.0
        return np.concatenate([x[1:], onehot])

    def terms(self, action_id: str, x: np.ndarray, rng: np.random.Generator | None = None) -> dict:
        """P(act), P(no act) (sampled when `rng` is given, else the posterior means), the mean uplift and its sd."""
        act, base = self.posteriors()
        z = self.design(action_id, x)
        (pa, sa), (pb, sb) = act.predict(z), base.predict(z)
        out = {"uplift_mean": pa - pb, "uplift_sd": float(np.hypot(sa, sb))}
        if rng is not None:
            pa, pb = act.sample(z, rng), base.sample(z, rng)
        return {"p_act": pa, "p_no_act": pb, "sd_act": sa, "sd_no_act": sb, **out}

    def learn(self, action_id: str, x: np.ndarray, treated: bool, converted: bool) -> None:
        arm = self.treated if treated else self.untreated
        arm.setdefault(action_id, Evidence.empty(self.dims)).add(x, 1.0 if converted else 0.0)
        self._cache = {}


class ActionModel(UpliftModel):
    """One action alone (its features' weights its own)."""

    ACTION = "action"

    @classmethod
    def new(cls, dims: int, prior_act: float, prior_baseline: float) -> "ActionModel":
        return cls({cls.ACTION: (prior_act, prior_baseline)}, dims=dims)

    def terms(self, x: np.ndarray, rng: np.random.Generator | None = None) -> dict:  # type: ignore[override]
        return super().terms(self.ACTION, x, rng)

    def learn(self, x: np.ndarray, treated: bool, converted: bool) -> None:  # type: ignore[override]
        super().learn(self.ACTION, x, treated, converted)


ARMS = ("treated", "untreated")
PRIOR_VERSION = "prior"


def add_label(evidence: dict, action_id: str, treated: bool, x: np.ndarray, converted: bool) -> None:
    """Add one outcome to a partition's evidence (JSON form: {action: {arm: {xtx, xty, n}}})."""
    arms = evidence.setdefault(action_id, {})
    arm = ARMS[0] if treated else ARMS[1]
    ev = Evidence.from_json(arms[arm]) if arm in arms else Evidence.empty(DIMS)
    ev.add(x, 1.0 if converted else 0.0)
    arms[arm] = ev.as_json()


def evidence_record(partition: int, labels: int, clock_ts: int, evidence: dict) -> dict:
    """The partition's evidence as a ModelEvidence record (engage.models)."""
    arms = []
    for action_id in sorted(evidence):
        for arm in ARMS:
            doc = evidence[action_id].get(arm)
            if doc is not None:
                arms.append({"action_id": action_id, "arm": arm, "n": doc["n"],
                             "xtx": [v for row in doc["xtx"] for v in row], "xty": list(doc["xty"])})
    return {"partition": partition, "labels": labels, "clock_ts": clock_ts, "features": list(FEATURES), "arms": arms}


@dataclass
class Model:
    """The deployment's model: the rules' priors plus every partition's evidence; `version` names the evidence."""

    version: str = PRIOR_VERSION
    labels: int = 0
    evidence: dict = field(default_factory=dict)  # action id -> (treated Evidence, untreated Evidence)
    _models: dict = field(default_factory=dict, repr=False)

    def for_actions(self, priors: tuple[tuple[str, float, float], ...]) -> UpliftModel:
        """The pooled model of these actions ((id, P(act) prior, P(no act) prior), in the rules' order)."""
        model = self._models.get(priors)
        if model is None:
            treated = {a: self.evidence[a][0] for a, _, _ in priors if a in self.evidence}
            untreated = {a: self.evidence[a][1] for a, _, _ in priors if a in self.evidence}
            model = self._models[priors] = UpliftModel({a: (pa, pb) for a, pa, pb in priors}, treated, untreated)
        return model


def merge(records: dict[int, dict]) -> Model:
    """The model of the latest ModelEvidence record of each partition (partition -> record).

    Records for another feature list are left out (a release that changed the features starts afresh).
    The version is the total of outcomes learned and a digest of which partition versions went in:
    the same evidence gives the same version on every worker."""
    evidence: dict[str, tuple[Evidence, Evidence]] = {}
    parts, labels = [], 0
    for partition in sorted(records):
        rec = records[partition]
        if tuple(rec["features"]) != FEATURES:
            continue
        parts.append(f"{partition}:{rec['labels']}")
        labels += rec["labels"]
        for arm in rec["arms"]:
            ev = Evidence(np.array(arm["xtx"], dtype=float).reshape(DIMS, DIMS), np.array(arm["xty"], dtype=float),
                          int(arm["n"]))
            treated, untreated = evidence.get(arm["action_id"]) or (Evidence.empty(DIMS), Evidence.empty(DIMS))
            if arm["arm"] == ARMS[0]:
                treated = treated.merged(ev)
            else:
                untreated = untreated.merged(ev)
            evidence[arm["action_id"]] = (treated, untreated)
    if labels == 0:
        return Model()
    digest = hashlib.sha256(",".join(parts).encode()).hexdigest()[:8]
    return Model(version=f"{labels}-{digest}", labels=labels, evidence=evidence)
