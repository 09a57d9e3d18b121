"""Spark helpers against a real session."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.spark import keep_jars_off_python_path, remember_resolved_jars, resolved_jars, resolved_jars_file, session_builder, with_constants

_factors = itertools.count(1_000_003)


def _compilations(spark: SparkSession) -> int:
    return spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME().getCount()


@pytest.mark.usefixtures("codegen")
def test_values_joined_as_constants_reuse_the_compiled_code_and_literals_do_not(spark):
    rows = spark.range(100)
    factor = next(_factors)  # code no earlier test compiled

    def run(value: int, joined: bool) -> list[int]:
        if joined:
            frame = with_constants(rows, spark.createDataFrame([(value,)], "v long"))
        else:
            frame = rows.withColumn("v", F.lit(value))
        return [r.x for r in frame.where(F.col("id") >= F.col("v")).select((F.col("id") * factor + F.col("v")).alias("x")).collect()]

    assert run(98, joined=True) == [98 * factor + 98, 99 * factor + 98]
    before = _compilations(spark)
    assert run(99, joined=True) == [99 * factor + 99]
    assert _compilations(spark) == before
    run(98, joined=False)
    literal = _compilations(spark)
    run(99, joined=False)
    assert _compilations(spark) > literal  # the same query with another literal compiles again


@pytest.mark.usefixtures("codegen")
def test_the_same_code_at_another_stage_number_is_not_compiled_again(spark):
    # CROM's plans grow a union piece every batch, which renumbers the stages after it.
    assert spark.conf.get("spark.sql.codegen.useIdInClassName") == "false"  # from conf/local.yaml
    scaled = lambda: spark.range(0, 4, 1, 1).select((F.col("id") * F.lit(next(_factors))).alias("x"))  # noqa: E731
    write = lambda frame: frame.write.format("noop").mode("overwrite").save()  # noqa: E731
    known = scaled()
    before = _compilations(spark)
    write(known)  # its stage is the query's first
    one_stage = _compilations(spark) - before
    before = _compilations(spark)
    write(scaled().union(known))  # a new stage first, `known`'s second
    assert one_stage > 0
    assert _compilations(spark) - before == one_stage  # only the new stage's (twice as many with ids in class names)


def test_maven_jars_are_not_on_the_python_path_of_driver_or_workers(spark):
    """spark-submit lists `spark.jars.packages` as Python includes; every Python task would re-read them."""
    keep_jars_off_python_path(spark)
    assert spark.sparkContext._python_includes is not None
    assert not [p for p in spark.sparkContext._python_includes if p.lower().endswith(".jar")]
    assert not [p for p in sys.path if p.lower().endswith(".jar")]

    @F.udf("string")
    def worker_path(_):
        import sys as worker_sys

        return ",".join(worker_sys.path)

    seen = spark.range(1).select(worker_path("id")).first()[0].split(",")
    # Spark always adds its own core jar (under pyspark/jars); the packages' jars would be in the session's files.
    assert seen and not [p for p in seen if p.lower().endswith(".jar") and "pyspark/jars" not in p]



def test_the_jars_a_start_resolved_are_listed_for_the_next_start_while_each_is_on_disk(spark, profile, tmp_path):
    profile = profile.model_copy(update={"cache": tmp_path / "cache"})
    assert resolved_jars(profile) is None  # nothing listed yet: the next start asks Ivy
    remember_resolved_jars(spark, profile)
    listed = resolved_jars(profile)
    assert listed and all(Path(j).is_file() for j in listed)
    assert any("delta-spark" in j for j in listed) and any("spark-sql-kafka" in j for j in listed)
    assert session_builder(profile, "next")._options["spark.jars"] == ",".join(listed)

    own_conf = {**profile.spark.conf, "spark.jars": "/opt/udfs.jar"}
    own = profile.model_copy(update={"cache": tmp_path / "own", "spark": profile.spark.model_copy(update={"conf": own_conf})})
    options = session_builder(own, "next")._options
    assert options["spark.jars"] == "/opt/udfs.jar" and options["spark.jars.packages"] == ",".join(profile.spark.packages)  # Ivy merges them
    remember_resolved_jars(spark, own)
    assert not resolved_jars_file(own).exists()  # the list would carry the profile's own jars

    other = profile.model_copy(update={"spark": profile.spark.model_copy(update={"packages": [*profile.spark.packages, "org.example:more:1.0"]})})
    assert resolved_jars(other) is None  # other packages: Ivy again
    resolved_jars_file(profile).write_text("\n".join([*listed, str(tmp_path / "gone.jar")]))
    assert resolved_jars(profile) is None  # a jar no longer on disk: Ivy again


def test_call_sites_of_columns_are_recorded_only_under_crm_debug(spark, base_profile, monkeypatch):
    # Recording them costs five JVM calls per Column built; CRM_DEBUG=1 wants them in errors.
    assert spark.conf.get("spark.python.sql.dataFrameDebugging.enabled") == "false"  # from conf/local.yaml
    monkeypatch.setenv("CRM_DEBUG", "1")
    assert session_builder(base_profile, "debug")._options["spark.python.sql.dataFrameDebugging.enabled"] == "true"
