"""Customer lifetime value from purchase histories: BG/NBD for how many purchases a customer
will make, Gamma-Gamma for what they will be worth (Fader, Hardie and Lee 2005).

A customer is (x, t_x, T): x repeat purchases, the last at t_x, observed for T, all in time
units since the first purchase. Spark reduces the customers to their distinct tuples with a
count; the likelihood is maximised over those on the driver, so fitting costs the same for
ten thousand customers or ten million. Scoring is vectorised numpy, run by Spark per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from pipelines.errors import CrmError


def _maximise(neg_log_likelihood, start: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    """Parameters (all positive) that minimise neg_log_likelihood, searched on their logs."""
    with np.errstate(all="ignore"):  # the search tries extreme values; their non-finite likelihoods lose
        result = optimize.minimize(lambda logs: neg_log_likelihood(np.exp(logs)), np.log(start), method="Nelder-Mead",
                                   options={"xatol": 1e-7, "fatol": 1e-9, "maxiter": 20_000, "maxfev": 40_000})  # fmt: skip
    if not result.success or not np.isfinite(result.fun):
        raise CrmError(f"{what}: the fit did not converge ({result.message})")
    return np.exp(result.x), -float(result.fun)


@dataclass(frozen=True)
class BgNbd:
    """Purchases follow Poisson(λ), λ ~ Gamma(r, α); after each purchase the customer
    drops out with probability p, p ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    customers: int

    @classmethod
    def fit(cls, x, t_x, T, weight, start: "BgNbd | None" = None) -> "BgNbd":
        """Maximum likelihood over customers, or distinct histories weighted by their count;
        `start` (an earlier fit) only speeds the search up."""
        x, t_x, T, weight = (np.asarray(v, dtype=float) for v in (x, t_x, T, weight))
        if weight.sum() < 4 or not (x > 0).any():
            raise CrmError(f"BG/NBD needs repeat buyers among several customers; got {int(weight.sum())} customers")

        def nll(params):
            r, alpha, a, b = params
            return -float(np.sum(weight * _bgnbd_log_likelihood(r, alpha, a, b, x, t_x, T)))

        initial = np.array([start.r, start.alpha, start.a, start.b] if start else [1.0, 1.0, 1.0, 1.0])
        (r, alpha, a, b), ll = _maximise(nll, initial, "BG/NBD")
        return cls(float(r), float(alpha), float(a), float(b), ll, int(weight.sum()))

    def _dropout_odds(self, x, t_x, T):
        """Odds that a customer with repeat purchases dropped out after the last one (0 if none)."""
        x = np.asarray(x, dtype=float)
        safe = np.maximum(self.b + x - 1, 1e-12)
        odds = (self.a / safe) * np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x)))
        return np.where(x > 0, odds, 0.0)

    def p_alive(self, x, t_x, T):
        """P(still a customer | history)."""
        return 1.0 / (1.0 + self._dropout_odds(x, t_x, T))

    def expected_purchases(self, t, x, t_x, T):
        """E[purchases in (T, T + t] | history], FHL 2005 equation 10."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        tail = np.exp((r + x) * np.log((alpha + T) / (alpha + T + t))) * special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        return (a + b + x - 1) / (a - 1) * (1 - tail) / (1 + self._dropout_odds(x, t_x, T))

    def params(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


def _bgnbd_log_likelihood(r, alpha, a, b, x, t_x, T):
    """Per-customer log-likelihood, FHL 2005 equation 6, in logs to stay finite for large x."""
    common = (
        special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        + special.betaln(a, b + x) - special.betaln(a, b)
    )  # fmt: skip
    still_alive = -(r + x) * np.log(alpha + T)
    dropped = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    return common + np.logaddexp(still_alive, dropped)


MAX_SHAPE = 50.0  # a purchase's value within 14% (1/sqrt(p)) of its customer's mean: not spend the model fits


@dataclass(frozen=True)
class GammaGamma:
    """A purchase's value is Gamma(p, ν) around the customer's mean; ν ~ Gamma(q, γ)."""

    p: float
    q: float
    gamma: float
    log_likelihood: float
    customers: int

    @classmethod
    def fit(cls, x, mean_value, weight, start: "GammaGamma | None" = None) -> "GammaGamma":
        """Fitted on repeat buyers only: x > 0 purchases averaging mean_value > 0; `start` as for BG/NBD."""
        x, m, weight = (np.asarray(v, dtype=float) for v in (x, mean_value, weight))
        keep = (x > 0) & (m > 0)
        x, m, weight = x[keep], m[keep], weight[keep]
        if weight.sum() < 4:
            raise CrmError(f"Gamma-Gamma needs several repeat buyers with spend; got {int(weight.sum())}")

        def nll(params):
            p, q, gamma = params
            ll = (
                special.gammaln(p * x + q) - special.gammaln(p * x) - special.gammaln(q) + q * np.log(gamma)
                + (p * x - 1) * np.log(m) + p * x * np.log(x) - (p * x + q) * np.log(gamma + m * x)
            )  # fmt: skip
            return -float(np.sum(weight * ll))

        # Without an earlier fit, start where the population mean spend p·γ/(q - 1) is the data's:
        # γ is in money, and a search started far from its scale can run off along p.
        initial = np.array([start.p, start.q, start.gamma] if start else [2.0, 3.0, float(np.average(m, weights=weight))])
        (p, q, gamma), ll = _maximise(nll, initial, "Gamma-Gamma")
        if q <= 1:
            raise CrmError(f"Gamma-Gamma: q = {q:.3f} <= 1, so the expected spend is undefined")
        if p > MAX_SHAPE:  # the likelihood rises towards p = infinity when values barely vary within customers
            raise CrmError(f"Gamma-Gamma: p ran off to {p:.3g}: spend does not vary within customers as the model needs")
        return cls(float(p), float(q), float(gamma), ll, int(weight.sum()))

    def expected_spend(self, x, mean_value):
        """E[value of a future purchase | x purchases averaging mean_value]; the population
        mean for customers without repeat purchases."""
        x = np.asarray(x, dtype=float)
        m = np.nan_to_num(np.asarray(mean_value, dtype=float))
        population = self.p * self.gamma / (self.q - 1)
        weight = self.p * x / (self.p * x + self.q - 1)
        return (1 - weight) * population + weight * m

    def params(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "gamma": self.gamma}


def lifetime_value(bgnbd: BgNbd, spend: GammaGamma, x, t_x, T, mean_value, *, horizon: float, steps: int,
                   margin: float, discount_per_step: float):  # fmt: skip
    """Discounted margin over the horizon: the purchases expected in each of `steps` equal
    periods, times the expected spend and the margin, discounted per period."""
    edges = np.linspace(0.0, horizon, steps + 1)
    cumulative = np.stack([bgnbd.expected_purchases(t, x, t_x, T) for t in edges[1:]])
    per_step = np.diff(np.vstack([np.zeros_like(cumulative[0]), cumulative]), axis=0)
    discount = (1.0 + discount_per_step) ** -np.arange(1, steps + 1)
    return margin * spend.expected_spend(x, mean_value) * (discount[:, None] * per_step).sum(axis=0)
