"""Spark helpers against a real session."""

from __future__ import annotations

import itertools

from pyspark import TaskContext
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


def test_a_foreach_batch_function_chooses_for_the_jobs_it_submits(spark, tmp_path):
    # CROM's batches run in the streaming query's thread, through a Python callback.
    spark.range(3).write.parquet(str(tmp_path / "in"))
    seen: list[str | None] = []

    def batch(frame, batch_id):
        mode = F.udf(lambda _: TaskContext.get().getLocalProperty(CODEGEN_FACTORY_MODE))
        with interpreted_expressions(frame.sparkSession.sparkContext):
            seen.extend(row[0] for row in frame.select(mode("id")).collect())

    query = (
        spark.readStream.schema("id long").parquet(str(tmp_path / "in"))
        .writeStream.foreachBatch(batch).option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True).start()
    )
    try:
        assert query.awaitTermination(120), "the query did not finish within 120 s"
    finally:
        query.stop()
    assert query.exception() is None
    assert seen == ["NO_CODEGEN"] * 3
