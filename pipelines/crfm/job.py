"""The CRFM job: silver tables -> one functional Delta table per functional directive.

The job recomputes when any silver table it reads has a new Delta version, and does
nothing otherwise; `source_version` in the output records what it was computed from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crfm.parameters import check_plan, customer_parameters, newest_event
from pipelines.directives import UNTRUSTED, DirectiveSet, Loaded
from pipelines.lakehouse import overwrite_unless_current, table_version
from pipelines.tables import functional_table, silver_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionalRun:
    table: str
    customers: int
    source_version: int
    skipped: bool


def trusted(silver, include_untrusted: bool):
    """Silver rows the directive accepts: events of unknown producers only when it says so (V5)."""
    return silver if include_untrusted else silver.where(F.col("trust_level") != F.lit(UNTRUSTED))


def run_functional(spark: SparkSession, profile: Profile, directives: DirectiveSet, functional: Loaded) -> FunctionalRun:
    directive = functional.directive
    sources = sorted({p.source for p in directive.parameters})
    paths = {s: silver_table(profile, s) for s in sources}
    # Versions only grow, so their sum identifies the input state and grows with it.
    source_version = sum(table_version(spark, paths[s]) for s in sources)
    silver = {s: trusted(spark.read.format("delta").load(p), directive.include_untrusted) for s, p in paths.items()}
    check_plan(spark, directive, {s: df.schema for s, df in silver.items()}, str(functional.path))

    out = functional_table(profile, directive.id)

    def parameters():
        as_of = newest_event(silver, sources)
        return customer_parameters(silver, directive, as_of).select(
            "*",
            as_of.alias("as_of"),
            F.lit(directive.id).alias("directive_id"),
            F.lit(directive.version).alias("directive_version"),
            F.current_timestamp().alias("computed_at"),
        )

    if not overwrite_unless_current(spark, out, source_version, parameters):
        return FunctionalRun(out, spark.read.format("delta").load(out).count(), source_version, skipped=True)
    customers = spark.read.format("delta").load(out).count()
    log.info("functional %s: %d customers from silver version %d", directive.id, customers, source_version)
    return FunctionalRun(out, customers, source_version, skipped=False)
