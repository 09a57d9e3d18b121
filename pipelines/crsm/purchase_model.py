"""The strategic directive's purchase model over the functional table: Spark reduces the
customers to distinct tuples, the driver fits BG/NBD and Gamma-Gamma, Spark scores each
customer (p_alive, expected_purchases, expected_spend, clv)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.crsm.clv import BgNbd, GammaGamma, lifetime_value
from pipelines.directives import MODEL_OUTPUTS, PurchaseModel
from pipelines.errors import CrmError

FIT_SCHEMA = T.StructType(
    [T.StructField(n, T.DoubleType(), True) for n in ("r", "alpha", "a", "b", "bg_nbd_log_likelihood")]
    + [T.StructField("customers", T.LongType(), True)]
    + [T.StructField(n, T.DoubleType(), True) for n in ("p", "q", "gamma", "gamma_gamma_log_likelihood")]
    + [T.StructField("repeat_buyers", T.LongType(), True)]
    + [T.StructField(n, T.DoubleType(), True) for n in ("holdout_units", "holdout_predicted", "holdout_actual")]
)


@dataclass(frozen=True)
class FittedModel:
    bgnbd: BgNbd
    spend: GammaGamma
    holdout_units: float | None
    holdout_predicted: float | None
    holdout_actual: float | None

    def row(self) -> dict:
        b, g = self.bgnbd, self.spend
        return {**b.params(), "bg_nbd_log_likelihood": b.log_likelihood, "customers": b.customers,
                **g.params(), "gamma_gamma_log_likelihood": g.log_likelihood, "repeat_buyers": g.customers,
                "holdout_units": self.holdout_units, "holdout_predicted": self.holdout_predicted,
                "holdout_actual": self.holdout_actual}  # fmt: skip


def _history(params: DataFrame, model: PurchaseModel, keep: tuple[str, ...] = ()) -> DataFrame:
    """The customers with a purchase up to as_of, as (x, t_x, T, m) in the model's time unit."""
    unit = float(model.time_unit_days)
    return params.where(F.col(model.frequency).isNotNull()).select(
        *keep,
        F.col(model.frequency).cast("double").alias("x"),
        (F.col(model.recency) / unit).alias("t_x"),
        (F.col(model.age) / unit).alias("T"),
        F.col(model.monetary).cast("double").alias("m"),
        *([F.col(model.holdout.purchases).cast("double").alias("holdout")] if model.holdout else []),
    )


def _distinct_histories(history: DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(x, t_x, T) and repeat spends rounded to the cent, each with its count: one row per
    distinct tuple (bounded by the calendar, not by the number of customers). Gamma-Gamma's
    likelihood needs each mean, not a summary, hence the cent."""
    tuples = history.groupBy(*keys, "x", "t_x", "T").agg(F.count(F.lit(1)).alias("n")).toPandas()
    spends = (
        history.where((F.col("x") > 0) & (F.col("m") > 0))
        .groupBy(*keys, "x", F.round("m", 2).alias("m")).agg(F.count(F.lit(1)).alias("n"))
        .toPandas()
    )  # fmt: skip
    return tuples, spends


def _fit(tuples: pd.DataFrame, spends: pd.DataFrame, start: FittedModel | None) -> tuple[BgNbd, GammaGamma]:
    if tuples.empty:
        raise CrmError("the purchase model has no customer with a purchase up to as_of")
    bgnbd = BgNbd.fit(tuples["x"], tuples["t_x"], tuples["T"], tuples["n"], start.bgnbd if start else None)
    spend = GammaGamma.fit(spends["x"], spends["m"], spends["n"], start.spend if start else None)
    return bgnbd, spend


def fit_purchase_model(params: DataFrame, model: PurchaseModel, start: FittedModel | None = None) -> FittedModel:
    """Fit both models on the distinct histories. `start`, an earlier fit, only speeds the search up."""
    history = _history(params, model)
    tuples, spends = _distinct_histories(history, [])
    bgnbd, spend = _fit(tuples, spends, start)
    predicted = actual = units = None
    if model.holdout:
        units = model.holdout.units
        expected = bgnbd.expected_purchases(units, tuples["x"], tuples["t_x"], tuples["T"])
        predicted = float(np.sum(expected * tuples["n"]))
        actual = float(history.agg(F.sum("holdout")).first()[0] or 0.0)
    return FittedModel(bgnbd, spend, units, predicted, actual)


def fit_purchase_models_by(params: DataFrame, model: PurchaseModel, by: str, start: FittedModel | None = None) -> dict:
    """One fit per value of `by`, from two Spark jobs whatever the number of groups: {group:
    FittedModel}; a group that cannot be fitted (e.g. no repeat buyer left) is absent."""
    tuples, spends = _distinct_histories(_history(params, model, keep=(by,)), [by])
    spends_of = {group: part for group, part in spends.groupby(by, sort=False)}
    fitted = {}
    for group, part in tuples.groupby(by, sort=False):
        try:
            bgnbd, spend = _fit(part, spends_of.get(group, spends.iloc[:0]), start)
        except CrmError:
            continue
        fitted[group] = FittedModel(bgnbd, spend, None, None, None)
    return fitted


def _outputs(frame: pd.DataFrame, model: PurchaseModel, fitted: FittedModel | None) -> dict[str, np.ndarray]:
    """The model's outputs for a batch of customers; NaN where there is no purchase yet or no fit."""
    if fitted is None:
        return {n: np.full(len(frame), np.nan) for n in MODEL_OUTPUTS}
    unit = float(model.time_unit_days)
    period_years = model.horizon_units * unit / 365.0 / model.periods
    discount = (1.0 + model.annual_discount_rate) ** period_years - 1.0
    bgnbd, spend = fitted.bgnbd, fitted.spend
    known = frame[model.frequency].notna().to_numpy()
    x = frame[model.frequency].fillna(0).to_numpy(dtype=float)
    t_x = frame[model.recency].fillna(0).to_numpy(dtype=float) / unit
    age = frame[model.age].fillna(0).to_numpy(dtype=float) / unit
    m = frame[model.monetary].to_numpy(dtype=float, na_value=np.nan)
    outputs = {
        "p_alive": bgnbd.p_alive(x, t_x, age),
        "expected_purchases": bgnbd.expected_purchases(model.horizon_units, x, t_x, age),
        "expected_spend": spend.expected_spend(x, m),
        "clv": lifetime_value(bgnbd, spend, x, t_x, age, m, horizon=model.horizon_units, steps=model.periods,
                              margin=model.margin, discount_per_step=discount),  # fmt: skip
    }
    return {k: np.where(known, v, np.nan) for k, v in outputs.items()}


def _scored(params: DataFrame, score) -> DataFrame:
    schema = T.StructType(params.schema.fields + [T.StructField(n, T.DoubleType(), True) for n in MODEL_OUTPUTS])
    scored = params.mapInPandas(score, schema)
    return scored.select(*params.columns, *[F.nanvl(F.col(n), F.lit(None).cast("double")).alias(n) for n in MODEL_OUTPUTS])


def score_customers(params: DataFrame, model: PurchaseModel, fitted: FittedModel) -> DataFrame:
    """params plus the model's outputs per customer; null for customers with no purchase yet."""
    return _scored(params, lambda batches: (frame.assign(**_outputs(frame, model, fitted)) for frame in batches))


def score_customers_by(params: DataFrame, model: PurchaseModel, fitted: dict, by: str) -> DataFrame:
    """score_customers with each group's own fit (from fit_purchase_models_by); null outputs
    in a group without one."""

    def score(batches):
        for frame in batches:
            for group, part in frame.groupby(by, sort=False, dropna=False):
                yield part.assign(**_outputs(part, model, fitted.get(group)))

    return _scored(params, score)


def fit_frame(spark: SparkSession, fitted: FittedModel) -> DataFrame:
    return spark.createDataFrame([fitted.row()], FIT_SCHEMA)


def unscored(params: DataFrame) -> DataFrame:
    """params with null model outputs: what KPIs see when the model cannot be fitted."""
    return params.select("*", *[F.lit(None).cast("double").alias(n) for n in MODEL_OUTPUTS])
