"""Compile a functional directive's parameters into Spark aggregations, per customer.

Windows count back from `as_of`: the end of the directive's as_of day, else the newest event
time in the inputs, so a rerun on the same data gives the same numbers. Row measures
aggregate events; day measures first make each customer's events of one day one purchase
day, as BG/NBD and Gamma-Gamma count purchases. Expressions are checked against the silver
schemas by building a plan on an empty DataFrame, which runs no job.
"""

from __future__ import annotations

from datetime import datetime, time
from functools import reduce

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.directives import DAY_MEASURES, ROW_MEASURES, UNTRUSTED, FunctionalDirective, Parameter, Windows
from pipelines.errors import CrmError

EVENT_TIME = "event_time"
DAY = "_day"
VARIANT = "variant"


def _in_scope(param: Parameter, as_of: Column) -> Column:
    """Events the parameter counts: up to as_of (back window_days), or the holdout after it."""
    when = F.col(EVENT_TIME)
    if param.holdout_days:
        cond = (when > as_of) & (when <= as_of + F.make_interval(days=F.lit(param.holdout_days)))
    else:
        cond = when <= as_of
        if param.window_days:
            cond = cond & (when > as_of - F.make_interval(days=F.lit(param.window_days)))
    if param.filter:
        cond = cond & F.coalesce(F.expr(param.filter), F.lit(False))
    return when.isNotNull() & cond


def aggregate(param: Parameter, as_of: Column) -> Column:
    """The aggregate Column of a row measure over events; counts and sums are 0, not null, when empty."""
    scope = _in_scope(param, as_of)
    value = F.col(param.column) if param.column else F.lit(1)
    measure = param.measure
    if measure == "count":
        agg = F.count(F.when(scope, 1))
    elif measure == "sum":
        agg = F.coalesce(F.sum(F.when(scope, value)), F.lit(0).cast(T.DoubleType()))
    elif measure == "avg":
        agg = F.avg(F.when(scope, value))
    elif measure == "count_distinct":
        agg = F.count_distinct(F.when(scope, value))
    elif measure == "last":
        agg = F.max_by(F.when(scope, value), F.when(scope, F.col(EVENT_TIME)))
    elif measure == "recency_days":
        agg = F.datediff(F.to_date(as_of), F.to_date(F.max(F.when(scope, F.col(EVENT_TIME)))))
    else:  # the directive model admits no other measure
        raise ValueError(measure)
    return agg.alias(param.name)


def _daily(frame: DataFrame, grain: str, params: list[Parameter], as_of: Column) -> DataFrame:
    """One row per customer and day: whether each parameter counts the day, and its total."""
    per_param = []
    for i, param in enumerate(params):
        scope = _in_scope(param, as_of)
        value = F.col(param.column) if param.column else F.lit(0.0)
        per_param += [F.max(scope).alias(f"_in{i}"), F.sum(F.when(scope, value)).alias(f"_total{i}")]
    return frame.groupBy(grain, F.to_date(EVENT_TIME).alias(DAY)).agg(*per_param)


def day_aggregate(i: int, param: Parameter, as_of: Column) -> Column:
    """The aggregate Column of a day measure over `_daily` rows: a customer's purchase days."""
    day = F.when(F.col(f"_in{i}"), F.col(DAY))
    days = F.count(day)
    measure = param.measure
    if measure == "active_days":
        agg = days
    elif measure == "repeat_days":
        agg = F.when(days > 0, days - 1)
    elif measure == "first_to_last_days":
        agg = F.datediff(F.max(day), F.min(day))
    elif measure == "tenure_days":
        agg = F.datediff(F.to_date(as_of), F.min(day))
    elif measure == "repeat_avg":  # the first day's total left out: BG/NBD counts repeat purchases
        total = F.col(f"_total{i}")
        agg = F.when(days > 1, (F.sum(F.when(day.isNotNull(), total)) - F.min_by(total, day)) / (days - 1))
    else:  # the directive model admits no other measure
        raise ValueError(measure)
    return agg.alias(param.name)


def _source_part(frame: DataFrame, grain: str, params: list[Parameter], as_of: Column) -> DataFrame:
    """One row per customer with the given parameters of one source."""
    rows = [p for p in params if p.measure in ROW_MEASURES]
    days = [p for p in params if p.measure in DAY_MEASURES]
    parts = []
    if rows:
        parts.append(frame.groupBy(grain).agg(*[aggregate(p, as_of) for p in rows]))
    if days:
        parts.append(_daily(frame, grain, days, as_of).groupBy(grain).agg(*[day_aggregate(i, p, as_of) for i, p in enumerate(days)]))
    return reduce(lambda left, right: left.join(right, grain, "full_outer"), parts)


def _by_source(directive: FunctionalDirective) -> dict[str, list[Parameter]]:
    groups: dict[str, list[Parameter]] = {}
    for param in directive.parameters:
        groups.setdefault(param.source, []).append(param)
    return groups


def check_plan(spark: SparkSession, directive: FunctionalDirective, schemas: dict[str, T.StructType], where: str) -> None:
    """Analyse every aggregation on an empty frame of each silver schema; no job runs."""
    as_of = F.lit("2000-01-01").cast("timestamp")
    for source, params in _by_source(directive).items():
        empty = spark.createDataFrame([], schemas[source])
        for param in params:
            try:
                _ = _source_part(empty, directive.grain, [param], as_of).schema  # analysis only
            except (AnalysisException, ParseException) as exc:
                reason = str(exc).strip().splitlines()[0]
                raise CrmError(f"{where}: parameters ({param.name}): {reason}") from exc


def customer_parameters(silver: dict[str, DataFrame], directive: FunctionalDirective, as_of: Column) -> DataFrame:
    """One row per customer with every parameter; customers missing from a source get 0 counts."""
    grain = directive.grain
    parts = []
    for source, params in _by_source(directive).items():
        frame = silver[source].where(F.col(grain).isNotNull())
        parts.append(_source_part(frame, grain, params, as_of))
    joined = reduce(lambda left, right: left.join(right, grain, "full_outer"), parts)
    zero_when_absent = {p.name: 0 for p in directive.parameters if p.measure in ("count", "count_distinct", "sum", "active_days")}
    return joined.fillna(zero_when_absent).select(grain, *[p.name for p in directive.parameters])


def as_of_time(directive: FunctionalDirective, silver: dict[str, DataFrame], sources: list[str]) -> Column:
    """The instant windows count back from: the end of the directive's as_of day, else the
    newest event time over the sources it reads."""
    if directive.as_of is not None:
        return F.lit(datetime.combine(directive.as_of, time.max)).cast("timestamp")
    frames = [silver[s].select(EVENT_TIME) for s in sources]
    union = reduce(DataFrame.unionByName, frames)
    newest = union.agg(F.max(EVENT_TIME)).first()[0]
    return F.lit(newest).cast("timestamp")


def trusted(silver: DataFrame, include_untrusted: bool) -> DataFrame:
    """Silver rows a directive accepts: events of unknown producers only when it says so (V5)."""
    return silver if include_untrusted else silver.where(F.col("trust_level") != F.lit(UNTRUSTED))


def parameter_variants(silver: dict[str, DataFrame], directive: FunctionalDirective, as_of: Column, windows: Windows) -> DataFrame:
    """The parameters re-measured for the strategic validity checks, one `variant` each:

    - `with_untrusted` / `without_untrusted`: the other choice of include_untrusted (V5);
    - `without_<source>`: one source left out (V3);
    - `as_of_minus_<n>d`: as of n days earlier, for each earlier window (V2).

    `silver` holds every silver row, trusted or not; the directive's choice is applied here.
    """
    chosen = {s: trusted(df, directive.include_untrusted) for s, df in silver.items()}
    flipped = {s: trusted(df, not directive.include_untrusted) for s, df in silver.items()}
    variants = [("without_untrusted" if directive.include_untrusted else "with_untrusted", customer_parameters(flipped, directive, as_of))]
    for source in sorted(chosen):
        variants.append((f"without_{source}", customer_parameters({**chosen, source: chosen[source].limit(0)}, directive, as_of)))
    for k in range(1, windows.count):
        days = k * windows.step_days
        earlier = as_of - F.make_interval(days=F.lit(days))
        variants.append((f"as_of_minus_{days}d", customer_parameters(chosen, directive, earlier)))
    tagged = [frame.withColumn(VARIANT, F.lit(name)) for name, frame in variants]
    return reduce(DataFrame.unionByName, tagged)
