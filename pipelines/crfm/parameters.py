"""Compile a functional directive's parameters into Spark aggregations, per customer.

Windows count back from `as_of`, the newest event time in the inputs, so a rerun on the
same data gives the same numbers. Expressions are checked against the silver schemas by
building a plan on an empty DataFrame, which runs no job.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.errors import AnalysisException, ParseException

from pipelines.directives import FunctionalDirective, Parameter
from pipelines.errors import CrmError

EVENT_TIME = "event_time"


def _in_scope(param: Parameter, as_of: Column) -> Column:
    cond = F.col(EVENT_TIME).isNotNull()
    if param.window_days:
        cond = cond & (F.col(EVENT_TIME) > as_of - F.make_interval(days=F.lit(param.window_days)))
    if param.filter:
        cond = cond & F.coalesce(F.expr(param.filter), F.lit(False))
    return cond


def aggregate(param: Parameter, as_of: Column) -> Column:
    """The aggregate Column for one parameter; counts and sums are 0, not null, when empty."""
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
                _ = empty.groupBy(directive.grain).agg(aggregate(param, as_of)).schema  # analysis only
            except (AnalysisException, ParseException) as exc:
                reason = str(exc).strip().splitlines()[0]
                raise CrmError(f"{where}: parameters ({param.name}): {reason}") from exc


def customer_parameters(silver: dict[str, DataFrame], directive: FunctionalDirective, as_of: Column) -> DataFrame:
    """One row per customer with every parameter; customers missing from a source get 0 counts."""
    grain = directive.grain
    parts = []
    for source, params in _by_source(directive).items():
        frame = silver[source].where(F.col(grain).isNotNull())
        parts.append(frame.groupBy(grain).agg(*[aggregate(p, as_of) for p in params]))
    joined = reduce(lambda left, right: left.join(right, grain, "full_outer"), parts)
    zero_when_absent = {p.name: 0 for p in directive.parameters if p.measure in ("count", "count_distinct", "sum")}
    return joined.fillna(zero_when_absent).select(grain, *[p.name for p in directive.parameters])


def newest_event(silver: dict[str, DataFrame], sources: list[str]) -> Column:
    """as_of for the windows: the newest event time over the sources the directive reads."""
    frames = [silver[s].select(EVENT_TIME) for s in sources]
    union = reduce(DataFrame.unionByName, frames)
    newest = union.agg(F.max(EVENT_TIME)).first()[0]
    return F.lit(newest).cast("timestamp")
