"""V1-V5: does each KPI's insight still hold as data grows, ages, changes source, varies, or
comes from producers nobody vouches for? Each check re-measures every KPI on perturbed
functional parameters and judges how far it moves (see Validity in pipelines.directives):

- V1 volume: nested random shares of the customers; the deviation is the largest move,
  relative to the full value, among the shares of at least `converged_from`;
- V2 velocity: the parameters as of successively earlier windows (CRFM's variants);
- V3 variety: each source left out in turn (CRFM's variants); a KPI that cannot be computed
  without some source is at best sensitive;
- V4 variability: Poisson bootstrap of the customers; the deviation is the half-width of the
  95% interval, which is also the KPI's confidence interval;
- V5 veracity: events of untrusted producers included or left out, whichever the directive
  did not choose (CRFM's variants).

Sampling is hashed on the customer id, so reruns and any partitioning give the same numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.crsm.kpis import kpi_rows
from pipelines.crsm.purchase_model import FittedModel, fit_purchase_models_by, score_customers_by
from pipelines.directives import FunctionalDirective, StrategicDirective, Validity

log = logging.getLogger(__name__)

# values_by(frame, group column) -> {group: {kpi: value or None}}
ValuesBy = Callable[[DataFrame, str], dict[object, dict[str, float | None]]]

GROUP = "_group"
SEED = 20240917  # the subsampling hash's seed; fixed so that V1's shares are nested and stable
# P(Poisson(1) <= k), k = 0..7: a hashed uniform above k of these draws weight k + 1.
POISSON_1_CDF = (0.36787944, 0.73575888, 0.91969860, 0.98101184, 0.99634015, 0.99940582, 0.99991676, 0.99998975)

CHECK_SCHEMA = T.StructType(
    [
        T.StructField("kpi", T.StringType(), False),
        T.StructField("v", T.StringType(), False),
        T.StructField("check", T.StringType(), False),
        T.StructField("verdict", T.StringType(), False),
        T.StructField("deviation", T.DoubleType(), True),
        T.StructField("value", T.DoubleType(), True),
        T.StructField("ci_low", T.DoubleType(), True),
        T.StructField("ci_high", T.DoubleType(), True),
        T.StructField("detail", T.StringType(), False),
    ]
)
CURVE_SCHEMA = T.StructType(
    [
        T.StructField("kpi", T.StringType(), False),
        T.StructField("v", T.StringType(), False),
        T.StructField("point", T.StringType(), False),
        T.StructField("x", T.DoubleType(), False),
        T.StructField("value", T.DoubleType(), True),
    ]
)


def kpi_values_by(directive: StrategicDirective, fitted: FittedModel | None = None) -> ValuesBy:
    """KPIs per group of rows. With a purchase model each group is refitted (starting from
    `fitted`) and rescored, so the checks see the model's own uncertainty too: all groups'
    histories come back in one pass, and one pass scores every group with its own fit."""
    model = directive.purchase_model

    def values_by(frame: DataFrame, by: str) -> dict:
        if model is not None:
            cached = frame.cache()  # read the perturbed frame once for the fits and the scores
            try:
                fits = fit_purchase_models_by(cached, model, by, start=fitted)
                return _values(score_customers_by(cached, model, fits, by), by)
            finally:
                cached.unpersist()
        return _values(frame, by)

    def _values(frame: DataFrame, by: str) -> dict:
        found: dict = {}
        for r in kpi_rows(frame, directive, by=by).select(by, "kpi", "value").collect():  # groups x KPIs
            found.setdefault(r[by], {})[r["kpi"]] = r["value"]
        return found

    return values_by


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    values: dict[str, float | None]


def _uniform(grain: str, salt) -> F.Column:
    """A uniform in [0, 1) from the customer id and a salt: the same on every run."""
    return F.pmod(F.xxhash64(F.col(grain), salt), F.lit(1 << 30)) / float(1 << 30)


def volume_points(spark: SparkSession, params: DataFrame, grain: str, fractions: list[float], values_by: ValuesBy) -> list[Point]:
    """V1: KPIs on nested shares of the customers (a customer in a share is in every larger one)."""
    shares = spark.createDataFrame([(f,) for f in fractions], f"{GROUP} double")
    nested = params.crossJoin(F.broadcast(shares)).where(_uniform(grain, F.lit(SEED)) < F.col(GROUP))
    found = values_by(nested, GROUP)
    return [Point(f"{f:.0%}", f, found.get(f, {})) for f in fractions]


def bootstrap_points(spark: SparkSession, params: DataFrame, grain: str, samples: int, values_by: ValuesBy) -> list[Point]:
    """V4: KPIs on Poisson bootstrap replicates: each customer appears Poisson(1) times."""
    replicates = spark.range(samples).select(F.col("id").cast("int").alias(GROUP))
    draw = _uniform(grain, F.col(GROUP))
    weight = sum((draw > F.lit(p)).cast("int") for p in POISSON_1_CDF)
    resampled = params.crossJoin(F.broadcast(replicates)).withColumn("_w", weight).where(F.col("_w") > 0)
    resampled = resampled.withColumn("_copy", F.explode(F.array_repeat(F.lit(1), F.col("_w")))).drop("_w", "_copy")
    found = values_by(resampled, GROUP)
    return [Point(f"replicate {b}", float(b), found.get(b, {})) for b in range(samples)]


def variant_points(variants: DataFrame, names: list[tuple[str, float]], values_by: ValuesBy) -> list[Point]:
    """KPIs on CRFM's parameter variants, by name; a variant with no customer has no values."""
    found = values_by(variants.withColumnRenamed("variant", GROUP), GROUP)
    return [Point(name, x, found.get(name, {})) for name, x in names]


@dataclass(frozen=True)
class Judged:
    checks: list[tuple]  # rows of CHECK_SCHEMA
    curves: list[tuple]  # rows of CURVE_SCHEMA


def judge(directive: StrategicDirective, base: dict[str, float | None], v1: list[Point], v2: list[Point], v3: list[Point],
          v4: list[Point], v5: list[Point]) -> Judged:  # fmt: skip
    """The verdict of each V for each KPI, and the points of its convergence curves."""
    validity: Validity = directive.validity
    checks, curves = [], []
    for kpi in (k.name for k in directive.kpis):
        full = base.get(kpi)
        scale = max(abs(full), validity.floor) if full is not None else None

        def moves(points: list[Point]) -> list[float | None]:
            return [None if full is None or p.values.get(kpi) is None else abs(p.values[kpi] - full) / scale for p in points]

        def largest(points: list[Point]) -> float | None:
            """The largest move; None (unresolved) if the KPI or any point has no value."""
            found = moves(points)
            return None if full is None or None in found else max(found, default=0.0)

        def add(v: str, check: str, deviation: float | None, detail: str, ci=(None, None), floor_verdict: str | None = None):
            verdict = validity.verdict(deviation)
            if floor_verdict == "sensitive" and verdict == "resolved":
                verdict = "sensitive"
            checks.append((kpi, v, check, verdict, deviation, full, ci[0], ci[1], detail))

        judged = [p for p in v1 if validity.converged_from <= p.x < 1]
        add("V1", "volume", largest(judged),
            f"largest move from the full value over {', '.join(p.label for p in judged) or 'no share'} of the customers")  # fmt: skip
        add("V2", "velocity", largest(v2), f"largest move over {len(v2)} windows, as of now and earlier")
        d3 = moves(v3)
        missing = [p.label.removeprefix("without_") for p, d in zip(v3, d3) if d is None]
        defined = [d for d in d3 if d is not None]
        if full is None or not defined:
            add("V3", "variety", None, "no value" if full is None else f"needs every source: {', '.join(missing)}")
        else:
            detail = "largest move with one source left out" + (f"; no value without {', '.join(missing)}" if missing else "")
            add("V3", "variety", max(defined), detail, floor_verdict="sensitive" if missing else None)
        replicates = np.array([p.values[kpi] for p in v4 if p.values.get(kpi) is not None], dtype=float)
        if full is None or len(replicates) < len(v4):
            add("V4", "variability", None, f"{len(replicates)} of {len(v4)} bootstrap replicates have a value")
        else:
            low, high = np.percentile(replicates, [2.5, 97.5])
            add("V4", "variability", float((high - low) / 2 / scale), f"95% bootstrap interval over {len(v4)} replicates",
                ci=(float(low), float(high)))  # fmt: skip
        detail = f"move with {v5[0].label.replace('_', ' ')} events" if v5 else "no variant with the other trust choice"
        add("V5", "veracity", largest(v5) if v5 else None, detail)
        for v, points in (("V1", v1), ("V2", v2), ("V3", v3), ("V4", v4), ("V5", v5)):
            curves += [(kpi, v, p.label, p.x, p.values.get(kpi)) for p in points]
    return Judged(checks, curves)


def assess(spark: SparkSession, directive: StrategicDirective, functional: FunctionalDirective, params: DataFrame,
           variants: DataFrame, base: dict[str, float | None], values_by: ValuesBy) -> Judged:  # fmt: skip
    """Every check for every KPI. `params` is the functional table of `functional`, `variants`
    CRFM's variants of it, `base` the KPI values on params, and values_by computes KPIs per
    group of rows. A variant without rows (a source that was the only one) has no values."""
    validity = directive.validity
    step, count = validity.windows.step_days, validity.windows.count
    windows = [(f"as_of_minus_{k * step}d", -float(k * step)) for k in range(1, count)]
    left_out = [f"without_{s}" for s in sorted({p.source for p in functional.parameters})]
    flipped = "without_untrusted" if functional.include_untrusted else "with_untrusted"
    grain = functional.grain

    def measured(what: str, points: Callable[[], list[Point]]) -> list[Point]:
        started = time.monotonic()
        got = points()
        log.info("CRSM %s validity: %s, %d re-measures (%.1fs)", directive.id, what, len(got), time.monotonic() - started)
        return got

    v1 = measured("V1 volume", lambda: volume_points(spark, params, grain, validity.volume_fractions, values_by))
    v2 = [Point("as_of", 0.0, base)] + measured("V2 velocity", lambda: variant_points(variants, windows, values_by))
    v3 = measured("V3 variety", lambda: variant_points(variants, [(n, float(i)) for i, n in enumerate(left_out)], values_by))
    v4 = measured("V4 variability", lambda: bootstrap_points(spark, params, grain, validity.bootstrap_samples, values_by))
    v5 = measured("V5 veracity", lambda: variant_points(variants, [(flipped, 1.0)], values_by))
    return judge(directive, base, v1, v2, v3, v4, v5)
