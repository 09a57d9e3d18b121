"""Strategic KPIs: aggregate expressions over the functional table, judged against targets."""

from __future__ import annotations

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.directives import Kpi, StrategicDirective
from pipelines.errors import CrmError


def _on_target(kpi: Kpi, value: Column) -> Column:
    target = F.lit(kpi.target.value)
    met = value >= target if kpi.target.op == ">=" else value <= target
    return F.coalesce(met, F.lit(False))


def _checked_value(params: DataFrame, kpi: Kpi, where: str) -> Column:
    """The KPI's aggregate, analysed (no job runs) against only the parameters it declares."""
    value = F.expr(kpi.expression).cast("double")
    try:
        _ = params.select(*kpi.uses).agg(value.alias("value")).schema  # analysis only
    except (AnalysisException, ParseException) as exc:
        reason = str(exc).strip().splitlines()[0]
        raise CrmError(f"{where}: kpis ({kpi.name}): expression: {reason}") from exc
    return value


def check_kpis(params: DataFrame, directive: StrategicDirective, where: str = "") -> None:
    """Analyse every KPI's expression against the parameters it declares; no job runs."""
    for kpi in directive.kpis:
        _checked_value(params, kpi, where)


def kpi_rows(params: DataFrame, directive: StrategicDirective, where: str = "", by: str | None = None) -> DataFrame:
    """One row per KPI (per `by` group, if given): value, target and whether it is met, computed
    in one aggregation.

    Each KPI sees only the parameters it declares in `uses`, so an undeclared one fails.
    """
    structs = []
    for kpi in directive.kpis:
        value = _checked_value(params, kpi, where)
        structs.append(
            F.struct(
                F.lit(kpi.name).alias("kpi"),
                F.lit(kpi.strategic_variable).alias("strategic_variable"),
                value.alias("value"),
                F.lit(kpi.unit).alias("unit"),
                F.lit(kpi.target.op).alias("target_op"),
                F.lit(kpi.target.value).alias("target_value"),
                _on_target(kpi, value).alias("on_target"),
            )
        )
    grouped = params.groupBy(by) if by else params
    keys = [by] if by else []
    return grouped.agg(F.count("*").alias("customers"), F.array(*structs).alias("k")).select(
        *keys, "customers", F.explode("k").alias("k")
    ).select(*keys, "k.*", "customers")
