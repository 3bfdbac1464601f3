"""Decides what the engine believes about an action's effect: P(convert | act) and P(convert | no act) for one customer, and how sure it is.

One Bayesian linear probability model with a treatment interaction (UpliftModel) over every action,
on the 0/1 conversion label, with Gaussian priors centred on the action rules' priors
(`uplift.act`, `uplift.baseline`) and a fixed noise variance. Its evidence is sufficient statistics,
XᵀX, Xᵀy and n per action and arm, which add up: each partition accumulates its own, and a worker's
model is the prior plus the sum over partitions, whatever worker learned them, in whatever order
they are merged. So one model serves the whole deployment.

Thompson sampling explores: a decision draws the weights from the posterior, with a generator
seeded by the decision id and the model version, so the same inputs give the same draw, and the
draws narrow as evidence grows. The mean is used when exploration is off. Exploration is bounded: a draw
stays within EXPLORE_SD posterior standard deviations of the mean.

The features (FEATURES) are what the engine knows when the signal arrives, scaled to [0, 1] (or
[-1, 1] for the hour) and centred (CENTRE) before they meet the weights.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from streams.decision.clock import local_time

NOISE_VAR = 0.25        # p(1 - p) at its largest: a conservative variance for a 0/1 label
# Prior standard deviations (the precisions below are NOISE_VAR / sd², in units of 1 / NOISE_VAR):
PRIOR_STRENGTH = 20.0   # an action's intercepts (its rule's priors) count as this many observations: sd 0.11
BASE_WEIGHT_SD = 0.30   # how much a feature may move P(convert | no action): much (who buys anyway varies)
UPLIFT_WEIGHT_SD = 0.10 # how much a feature may move the uplift: less, so exploration starts near the priors
EXPLORE_SD = 2.0        # a Thompson draw stays within this many posterior sds of the mean

# The model's inputs, in order. bias is 1; agent_led depends on the candidate's channel; the rest on
# the signal and the profile. A new feature is a new model: evidence with other names is not merged.
FEATURES = ("bias", "known", "clv", "returning", "mobile", "pages", "events", "cart", "dwell", "hour_sin", "hour_cos",
            "agent_led")
DIMS = len(FEATURES)
AGENT_LED = frozenset({"chat", "voice_callback", "click_to_call"})  # channels a person (an agent) takes up
CLV_SCALE, PAGES_SCALE, EVENTS_SCALE, CART_SCALE, DWELL_SCALE_S = 5000.0, 10.0, 30.0, 300.0, 600.0
# Features are centred before they meet the weights, so an action's intercepts (its rule's priors) are
# about a typical person, not about one with every feature at zero: yes/no features at 1/2, the others
# near where most sessions are. The hour's sine and cosine are centred already.
CENTRE = {"known": 0.5, "clv": 0.2, "returning": 0.5, "mobile": 0.5, "pages": 0.3, "events": 0.3, "cart": 0.2,
          "dwell": 0.3, "agent_led": 0.5}


def _unit(value: float, scale: float) -> float:
    return min(max(float(value), 0.0), scale) / scale


def _local_hour(ts_ms: int, tz: str | None) -> float:
    local = local_time(ts_ms, tz)
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
    clv = (enriched.get("value") or {}).get("clv") or profile.get("clv") or 0.0  # CRM's, else the estimate
    return {"bias": 1.0, "known": 1.0 if enriched["known"] else 0.0, "clv": _unit(clv, CLV_SCALE),
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
    """Every action, both arms, in one model with a treatment interaction:

        P(convert | no action) = b[action] + w · x
        P(convert | act)       = b[action] + w · x + u[action] + v · x

    x are the centred features (bias left out). The features' weights w (who converts anyway) and v
    (who is moved by an offer) are shared by every action, so each outcome teaches them all; each
    action has its own intercepts b and u, whose priors are its rule's P(no action) and
    P(act) - P(no action). The joint posterior gives the uplift u + v · x with its uncertainty directly,
    so Thompson sampling explores the uplift, not two independent arms. The statistics are assembled
    from the per-action, per-arm ones: x[0] is the constant 1, so XᵀX holds the count and the feature
    sums in its first row and column, and centring is a linear map of x.
    """

    priors: dict[str, tuple[float, float]]        # action id -> (P(act), P(no act)) of its rule, in a fixed order
    treated: dict[str, Evidence] = field(default_factory=dict)
    untreated: dict[str, Evidence] = field(default_factory=dict)
    dims: int = DIMS
    centre: np.ndarray | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        # M with M x = [1, x[1:] - centre], and each action's column: fixed for the model's life
        self._m = np.eye(self.dims)
        if self.centre is not None:
            self._m[1:, 0] = -self.centre
        self._column = {a: self.dims - 1 + i for i, a in enumerate(self.priors)}
        self._block = self.dims - 1 + len(self.priors)  # the shared weights and one intercept per action

    def _posterior(self) -> Posterior:
        shared, order, m, block = self.dims - 1, list(self.priors), self._m, self._block
        # per arm: Z_armᵀ Z_arm and Z_armᵀ y over [shared features, action one-hot]
        zz = {True: np.zeros((block, block)), False: np.zeros((block, block))}
        zy = {True: np.zeros(block), False: np.zeros(block)}
        for arm, evidence in ((True, self.treated), (False, self.untreated)):
            for i, action in enumerate(order):
                ev = evidence.get(action)
                if ev is None or ev.n == 0:
                    continue
                xtx, xty = m @ ev.xtx @ m.T, m @ ev.xty
                j = shared + i
                zz[arm][:shared, :shared] += xtx[1:, 1:]
                zz[arm][:shared, j] += xtx[1:, 0]
                zz[arm][j, :shared] += xtx[0, 1:]
                zz[arm][j, j] += xtx[0, 0]
                zy[arm][:shared] += xty[1:]
                zy[arm][j] += xty[0]
        # the design of a label is [z, t z] (t: treated): its statistics, in blocks
        xtx = np.block([[zz[True] + zz[False], zz[True]], [zz[True], zz[True]]])
        xty = np.concatenate([zy[True] + zy[False], zy[True]])
        n_actions = len(order)
        sd = np.concatenate([np.full(shared, BASE_WEIGHT_SD), np.full(n_actions, np.sqrt(NOISE_VAR / PRIOR_STRENGTH)),
                             np.full(shared, UPLIFT_WEIGHT_SD), np.full(n_actions, np.sqrt(NOISE_VAR / PRIOR_STRENGTH))])
        mean = np.concatenate([np.zeros(shared), [self.priors[a][1] for a in order],
                               np.zeros(shared), [self.priors[a][0] - self.priors[a][1] for a in order]])
        return posterior(mean, NOISE_VAR / sd ** 2, xtx, xty)

    def posteriors(self) -> Posterior:
        key = tuple(e.n for e in self.treated.values()), tuple(e.n for e in self.untreated.values())
        if self._cache.get("key") != key:
            self._cache = {"key": key, "value": self._posterior()}
        return self._cache["value"]

    def design(self, action_id: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of P(no action) and of P(act) - P(no action) for this action and these features."""
        z = np.zeros(self._block)
        z[: self.dims - 1] = (self._m @ x)[1:]
        z[self._column[action_id]] = 1.0
        zero = np.zeros_like(z)
        return np.concatenate([z, zero]), np.concatenate([zero, z])

    def terms(self, action_id: str, x: np.ndarray, rng: np.random.Generator | None = None) -> dict:
        """P(act), P(no act) (sampled when `rng` is given, else the posterior means), the mean uplift and its sd."""
        post = self.posteriors()
        base, lift = self.design(action_id, x)
        b_mean, u_mean = float(base @ post.mean), float(lift @ post.mean)
        b_sd = float(np.sqrt(max(0.0, base @ post.cov @ base)))
        u_sd = float(np.sqrt(max(0.0, lift @ post.cov @ lift)))
        b, u = b_mean, u_mean
        if rng is not None:
            w = post.mean + post.chol @ rng.standard_normal(len(post.mean))
            b = min(b_mean + EXPLORE_SD * b_sd, max(b_mean - EXPLORE_SD * b_sd, float(base @ w)))
            u = min(u_mean + EXPLORE_SD * u_sd, max(u_mean - EXPLORE_SD * u_sd, float(lift @ w)))
        p_no = min(1.0, max(0.0, b))
        p_act = min(1.0, max(0.0, b + u))
        return {"p_act": p_act, "p_no_act": p_no, "uplift_mean": u_mean, "uplift_sd": u_sd}

    def learn(self, action_id: str, x: np.ndarray, treated: bool, converted: bool) -> None:
        arm = self.treated if treated else self.untreated
        arm.setdefault(action_id, Evidence.empty(self.dims)).add(x, 1.0 if converted else 0.0)
        self._cache = {}


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
            model = self._models[priors] = UpliftModel({a: (pa, pb) for a, pa, pb in priors}, treated, untreated,
                                                       centre=np.array([CENTRE.get(f, 0.0) for f in FEATURES[1:]]))
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
