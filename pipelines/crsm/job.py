"""The CRSM job: the functional table -> a strategic KPI table, one snapshot per input version.

Each run appends the KPIs computed from one version of the functional table; rerunning on
the same version is skipped (see BatchAppender), so nothing is counted twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crsm.kpis import kpi_rows
from pipelines.directives import DirectiveSet, Loaded
from pipelines.errors import CrmError
from pipelines.lakehouse import BatchAppender
from pipelines.tables import functional_table, strategic_table

log = logging.getLogger(__name__)
APP_ID = "crsm-kpis"


@dataclass(frozen=True)
class StrategicRun:
    table: str
    functional_version: int
    kpis: list[Row]


def run_strategic(spark: SparkSession, profile: Profile, directives: DirectiveSet, strategic: Loaded) -> StrategicRun:
    directive = strategic.directive
    serving = [f for f in directives.functional.values() if f.directive.serves == directive.id]
    if len(serving) != 1:
        raise CrmError(f"{strategic.path}: expected one functional directive serving {directive.id}, found {len(serving)}")
    source = functional_table(profile, serving[0].directive.id)
    if not DeltaTable.isDeltaTable(spark, source):
        raise CrmError(f"functional table {source} does not exist yet; run `crm functional` first")
    version = DeltaTable.forPath(spark, source).history(1).select("version").first()[0]
    params = spark.read.format("delta").option("versionAsOf", version).load(source)

    kpis = kpi_rows(params, directive, str(strategic.path)).select(
        "*",
        F.lit(version).cast("long").alias("functional_version"),
        F.lit(directive.id).alias("directive_id"),
        F.lit(directive.version).alias("directive_version"),
        F.current_timestamp().alias("computed_at"),
    )
    out = strategic_table(profile, directive.id)
    BatchAppender(spark, APP_ID).append(kpis, out, version)
    latest = (
        spark.read.format("delta").load(out).where(F.col("functional_version") == version).orderBy("kpi").collect()
    )
    return StrategicRun(out, version, latest)
