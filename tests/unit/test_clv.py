"""BG/NBD and Gamma-Gamma: fits on the published CDNOW summary, and the predictions checked
against a simulation of the processes the models assume."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from pipelines.config import sample_data
from pipelines.crsm.clv import BgNbd, GammaGamma, lifetime_value
from pipelines.errors import CrmError
from pipelines.generator import EventStream

# Fader, Hardie and Lee (2005), on the CDNOW sample (see ../shared/data/README.md).
PUBLISHED_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
MODEL = BgNbd(**PUBLISHED_BGNBD, log_likelihood=0.0, customers=0)
SPEND = GammaGamma(p=6.25, q=3.74, gamma=15.44, log_likelihood=0.0, customers=0)


def test_bgnbd_fit_on_the_published_summary_gives_the_published_parameters():
    summary = pd.read_csv(sample_data() / "cdnow" / "cdnow_customers_summary.csv")
    tuples = summary.groupby(["frequency", "recency", "T"]).size().reset_index(name="n")
    fitted = BgNbd.fit(tuples["frequency"], tuples["recency"], tuples["T"], tuples["n"])
    for name, value in PUBLISHED_BGNBD.items():
        assert fitted.params()[name] == pytest.approx(value, rel=0.005), name
    assert fitted.customers == len(summary) == 2357
    assert fitted.log_likelihood == pytest.approx(-9582.4, abs=0.5)  # FHL 2005 report -9582.4


def test_new_customer_expectation_matches_a_simulation_of_the_process():
    """A customer seen only at their first purchase (x = t_x = T = 0): repeat purchases in
    (0, t] are min(Poisson(λt), D), λ ~ Gamma(r, α), p ~ Beta(a, b), where the customer drops
    out after the D-th repeat purchase, D ~ Geometric(p) on 1, 2, ... (never at the first)."""
    rng = np.random.default_rng(7)
    n, t = 400_000, 39.0
    lam = rng.gamma(MODEL.r, 1.0 / MODEL.alpha, n)
    dropout = rng.beta(MODEL.a, MODEL.b, n)
    purchases = np.minimum(rng.poisson(lam * t), rng.geometric(dropout))
    stderr = purchases.std() / np.sqrt(n)
    assert MODEL.expected_purchases(t, 0, 0, 0) == pytest.approx(purchases.mean(), abs=4 * stderr)


def test_activity_follows_the_history():
    # No repeat purchase: nothing says the customer left.
    assert MODEL.p_alive(0, 0, 30) == 1.0
    # The same 3 purchases, ever longer ago: less likely alive, fewer purchases expected.
    ages = np.array([20.0, 30.0, 40.0])
    alive = MODEL.p_alive(3, 10, ages)
    assert np.all(np.diff(alive) < 0) and np.all((alive > 0) & (alive < 1))
    assert np.all(np.diff(MODEL.expected_purchases(39, 3, 10, ages)) < 0)
    # Expected purchases grow with the horizon.
    assert np.all(np.diff(MODEL.expected_purchases(np.array([1.0, 10.0, 52.0]), 2, 20, 30)) > 0)


def test_expected_spend_moves_from_the_population_mean_to_the_customer_mean():
    population = SPEND.p * SPEND.gamma / (SPEND.q - 1)
    assert SPEND.expected_spend(0, np.nan) == pytest.approx(population)
    spends = SPEND.expected_spend(np.array([1, 10, 1000]), 100.0)
    assert population < spends[0] < spends[1] < spends[2] < 100.0
    assert spends[2] == pytest.approx(100.0, rel=0.01)


def test_lifetime_value_is_margin_times_spend_times_purchases_when_undiscounted():
    x, t_x, T, m = np.array([0, 2, 5]), np.array([0.0, 20.0, 30.0]), np.array([30.0, 30.0, 35.0]), np.array([np.nan, 40.0, 25.0])
    flat = lifetime_value(MODEL, SPEND, x, t_x, T, m, horizon=52, steps=12, margin=0.3, discount_per_step=0.0)
    expected = 0.3 * SPEND.expected_spend(x, m) * MODEL.expected_purchases(52, x, t_x, T)
    assert flat == pytest.approx(expected)
    discounted = lifetime_value(MODEL, SPEND, x, t_x, T, m, horizon=52, steps=12, margin=0.3, discount_per_step=0.01)
    assert np.all(discounted < flat)


def test_a_fit_without_repeat_buyers_is_refused():
    with pytest.raises(CrmError, match="repeat buyers"):
        BgNbd.fit([0, 0, 0, 0], [0, 0, 0, 0], [5, 6, 7, 8], [1, 1, 1, 1])
    with pytest.raises(CrmError, match="repeat buyers"):
        GammaGamma.fit([0, 0], [np.nan, np.nan], [1, 1])


def test_gamma_gamma_on_spend_that_never_varies_within_a_customer_is_refused():
    # Each customer spends exactly their own level every time: only p = infinity explains it.
    rng = np.random.default_rng(3)
    levels = 4.0 / rng.gamma(4.0, 1 / 600.0, 500)
    x = rng.integers(1, 20, 500)
    with pytest.raises(CrmError, match="p ran off"):
        GammaGamma.fit(x, levels, np.ones(500))
    # The same levels with Gamma(4) scatter around them per purchase: a finite fit near the truth.
    means = np.array([rng.gamma(4.0, level / 4.0, n).mean() for level, n in zip(levels, x)])
    fitted = GammaGamma.fit(x, means, np.ones(500))
    assert 2 < fitted.p < 8 and fitted.p * fitted.gamma / (fitted.q - 1) == pytest.approx(np.mean(levels), rel=0.25)


def test_fits_on_the_generators_orders_tell_who_has_left():
    """The generator's customers stop ordering and spend as the models assume: fitted on
    100k generated events (about 104 days), p_alive separates who left from who did not."""
    stream = EventStream(11, {s: f"crm.{s}" for s in ("web", "social", "log", "transaction")})
    spend: dict[str, dict] = defaultdict(lambda: defaultdict(float))  # customer -> day -> amount
    for e in stream.events(0, 100_000):
        if e.kind == "valid" and e.source == "transaction":
            order = json.loads(e.value)
            at = datetime.fromisoformat(order["event_time"])
            spend[order["customer_id"]][at.date()] += order["amount"]
    end = max(day for days in spend.values() for day in days)
    ids = sorted(spend)
    x = np.array([len(spend[c]) - 1 for c in ids], dtype=float)
    t_x = np.array([(max(spend[c]) - min(spend[c])).days / 7 for c in ids])
    age = np.array([(end - min(spend[c])).days / 7 for c in ids])
    m = np.array([(sum(spend[c].values()) - spend[c][min(spend[c])]) / max(len(spend[c]) - 1, 1) for c in ids])
    bgnbd, gamma_gamma = BgNbd.fit(x, t_x, age, np.ones(len(ids))), GammaGamma.fit(x, m, np.ones(len(ids)))
    assert 2 < gamma_gamma.p < 8  # the generator's spend shape is 4; a day may sum several orders
    leaves_at = {c.customer_id: c.leaves_at.date() for c in stream.customers}
    left = np.array([leaves_at[c] < end for c in ids])
    alive = bgnbd.p_alive(x, t_x, age)
    assert 0.1 < left.mean() < 0.4 and alive[left].mean() < alive[~left].mean() - 0.2
