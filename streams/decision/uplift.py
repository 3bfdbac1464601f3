"""Decides what the engine believes about an action's effect: P(convert | act) and P(convert | no act) for one customer, and how sure it is.

One Bayesian linear model per action and arm (treated, held out) over the same features, on the
0/1 conversion label: a linear probability model with a Gaussian prior centred on the action
rule's priors (`uplift.act`, `uplift.baseline`) and a fixed noise variance. Its evidence is
sufficient statistics, XᵀX, Xᵀy and n, which add up: each partition accumulates its own, and a
worker's model is the prior plus the sum over partitions, whatever worker learned them, in
whatever order they are merged. So one model serves the whole deployment.

Thompson sampling explores: a decision draws the weights from the posterior, with a generator
seeded by the decision id and the model version, so the same inputs give the same draw, and the
draws narrow as evidence grows. The mean is used when exploration is off.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

NOISE_VAR = 0.25        # p(1 - p) at its largest: a conservative variance for a 0/1 label
PRIOR_STRENGTH = 20.0   # the rule's prior counts as this many observations on the intercept
WEIGHT_PRIOR = 4.0      # precision of the other weights' zero-centred prior (in units of NOISE_VAR)


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
        w = self.mean + self.chol @ rng.standard_normal(len(self.mean))
        return min(1.0, max(0.0, float(x @ w)))


def posterior(prior_intercept: float, evidence: Evidence) -> Posterior:
    """The Gaussian posterior of the weights given the prior (intercept = the rule's prior) and the evidence.

    Feature 0 must be the constant 1 (the intercept)."""
    d = len(evidence.xty)
    prior_prec = np.full(d, WEIGHT_PRIOR)
    prior_prec[0] = PRIOR_STRENGTH
    prior_mean = np.zeros(d)
    prior_mean[0] = prior_intercept
    precision = np.diag(prior_prec) + evidence.xtx
    rhs = prior_prec * prior_mean + evidence.xty
    # precisions are in units of 1 / NOISE_VAR: the noise variance scales the covariance only
    cov = np.linalg.inv(precision) * NOISE_VAR
    cov = (cov + cov.T) / 2
    mean = np.linalg.solve(precision, rhs)
    return Posterior(mean, cov, np.linalg.cholesky(cov))


def draw_seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


@dataclass
class ActionModel:
    """Both arms of one action: treated and held out."""

    prior_act: float
    prior_baseline: float
    treated: Evidence
    control: Evidence
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def new(cls, dims: int, prior_act: float, prior_baseline: float) -> "ActionModel":
        return cls(prior_act, prior_baseline, Evidence.empty(dims), Evidence.empty(dims))

    def posteriors(self) -> tuple[Posterior, Posterior]:
        key = (self.treated.n, self.control.n)
        if self._cache.get("key") != key:
            self._cache = {"key": key, "value": (posterior(self.prior_act, self.treated),
                                                 posterior(self.prior_baseline, self.control))}
        return self._cache["value"]

    def terms(self, x: np.ndarray, rng: np.random.Generator | None = None) -> dict:
        """P(act), P(no act) (sampled when `rng` is given, else the posterior means) and their uncertainty."""
        act, base = self.posteriors()
        (pa, sa), (pb, sb) = act.predict(x), base.predict(x)
        if rng is not None:
            pa, pb = act.sample(x, rng), base.sample(x, rng)
        return {"p_act": pa, "p_no_act": pb, "sd_act": sa, "sd_no_act": sb}

    def learn(self, x: np.ndarray, treated: bool, converted: bool) -> None:
        (self.treated if treated else self.control).add(x, 1.0 if converted else 0.0)
        self._cache = {}
