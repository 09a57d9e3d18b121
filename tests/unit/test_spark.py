"""Spark helpers against a real session."""

from __future__ import annotations

import itertools

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.spark import CODEGEN_FACTORY_MODE, interpreted_expressions

_factors = itertools.count(1_000_003)


def _compilations(spark: SparkSession) -> int:
    return spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()


def _project_in_tasks(session: SparkSession) -> None:
    """A projection no earlier job compiled (a new literal is new source), evaluated in tasks only."""
    projected = session.range(4).select((F.col("id") * F.lit(next(_factors))).alias("x"))
    projected.write.format("noop").mode("overwrite").save()


def test_jobs_in_the_block_interpret_their_projections_and_later_jobs_compile_again(spark):
    session = spark.newSession()
    session.conf.set("spark.sql.codegen.wholeStage", "false")  # the projection is its own operator, built in each task
    before = _compilations(spark)
    with interpreted_expressions(spark.sparkContext):
        _project_in_tasks(session)
    inside = _compilations(spark)
    _project_in_tasks(session)
    assert inside == before
    assert _compilations(spark) > inside
    assert spark.sparkContext.getLocalProperty(CODEGEN_FACTORY_MODE) is None
