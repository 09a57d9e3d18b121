"""The CRFM job: silver tables -> one functional Delta table per functional directive.

The job recomputes when any silver table it reads has a new Delta version, and does
nothing otherwise; `source_version` in the output records what it was computed from. When
the strategic directive it serves asks for validity checks, `<table>_variants` holds the
parameters re-measured for them (see parameter_variants); with `segmentation`,
`<table>_segments` holds RFM scores, segments and k-means clusters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crfm.parameters import as_of_time, check_plan, customer_parameters, parameter_variants, trusted
from pipelines.crfm.segments import segments
from pipelines.directives import DirectiveSet, Loaded
from pipelines.lakehouse import overwrite_unless_current, table_version
from pipelines.tables import functional_table, silver_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionalRun:
    table: str
    customers: int
    source_version: int
    skipped: bool


def run_functional(spark: SparkSession, profile: Profile, directives: DirectiveSet, functional: Loaded) -> FunctionalRun:
    directive = functional.directive
    sources = sorted({p.source for p in directive.parameters})
    paths = {s: silver_table(profile, s) for s in sources}
    # Versions only grow, so their sum identifies the input state and grows with it.
    source_version = sum(table_version(spark, paths[s]) for s in sources)
    every_row = {s: spark.read.format("delta").load(p) for s, p in paths.items()}
    silver = {s: trusted(df, directive.include_untrusted) for s, df in every_row.items()}
    check_plan(spark, directive, {s: df.schema for s, df in silver.items()}, str(functional.path))

    out = functional_table(profile, directive.id)

    @cache
    def as_of():  # a job over silver: run only when something is rebuilt
        return as_of_time(directive, silver, sources)

    def lineage():
        return [
            as_of().alias("as_of"),
            F.lit(directive.id).alias("directive_id"),
            F.lit(directive.version).alias("directive_version"),
            F.current_timestamp().alias("computed_at"),
        ]

    def parameters():
        return customer_parameters(silver, directive, as_of()).select("*", *lineage())

    rebuilt = overwrite_unless_current(spark, out, source_version, parameters)
    # The validity checks of the strategic directive this one serves re-measure the parameters.
    validity = directives.strategic[directive.serves].directive.validity if directive.serves in directives.strategic else None
    if validity is not None:

        def variants():
            return parameter_variants(every_row, directive, as_of(), validity.windows).select("*", *lineage())

        overwrite_unless_current(spark, functional_table(profile, directive.id, "variants"), source_version, variants)
    if directive.segmentation is not None:

        def customer_segments():
            return segments(spark.read.format("delta").load(out), directive.segmentation, directive.grain)

        overwrite_unless_current(spark, functional_table(profile, directive.id, "segments"), source_version, customer_segments)
    customers = spark.read.format("delta").load(out).count()
    if rebuilt:
        log.info("functional %s: %d customers from silver version %d", directive.id, customers, source_version)
    return FunctionalRun(out, customers, source_version, skipped=not rebuilt)
