"""Delta helpers on real Delta tables: declared schemas, interrupted creates, idempotent appends and MERGEs."""

from __future__ import annotations

import pytest
from delta.tables import DeltaTable
from pyspark.sql import types as T

from pipelines.errors import CrmError
from pipelines.lakehouse import BatchAppender, ensure_table

SCHEMA = T.StructType([T.StructField("id", T.LongType())])


def test_a_create_killed_before_its_first_commit_does_not_block_the_next(spark, tmp_path):
    # What a kill between Delta's mkdir of _delta_log and its first commit leaves behind.
    path = tmp_path / "t"
    (path / "_delta_log").mkdir(parents=True)
    ensure_table(spark, str(path), SCHEMA)
    assert spark.read.format("delta").load(str(path)).schema == SCHEMA


def test_an_existing_table_with_another_type_is_refused(spark, tmp_path):
    path = str(tmp_path / "t")
    ensure_table(spark, path, SCHEMA)
    with pytest.raises(CrmError, match="column 'id' is bigint, expected string"):
        ensure_table(spark, path, T.StructType([T.StructField("id", T.StringType())]))


def test_the_checkpoint_interval_is_set_on_new_and_existing_tables(spark, tmp_path):
    interval = lambda path: DeltaTable.forPath(spark, path).detail().first()["properties"].get("delta.checkpointInterval")  # noqa: E731
    new, existing = str(tmp_path / "new"), str(tmp_path / "existing")
    ensure_table(spark, new, SCHEMA, checkpoint_interval=100)
    ensure_table(spark, existing, SCHEMA)
    assert (interval(new), interval(existing)) == ("100", None)
    ensure_table(spark, existing, SCHEMA, checkpoint_interval=100)  # a table made before the setting
    assert interval(existing) == "100"


def test_a_batch_is_appended_once_even_by_a_new_appender(spark, tmp_path):
    path = str(tmp_path / "t")
    ensure_table(spark, path, SCHEMA)
    rows = spark.createDataFrame([(1,), (2,)], SCHEMA)
    assert BatchAppender(spark, "job").append(rows, path, 0)
    assert not BatchAppender(spark, "job").append(rows, path, 0)  # a restarted job replays batch 0
    assert BatchAppender(spark, "other-job").append(rows, path, 0)
    assert spark.read.format("delta").load(path).count() == 4


def test_a_merge_that_adds_runs_once_per_batch_even_by_a_new_appender(spark, tmp_path):
    path = str(tmp_path / "t")
    counts = T.StructType([T.StructField("id", T.LongType()), T.StructField("n", T.LongType())])
    spark.createDataFrame([(1, 10)], counts).write.format("delta").save(path)

    def add(appender: BatchAppender, batch_id: int) -> bool:
        new = spark.createDataFrame([(1, 5), (2, 5)], counts)
        merge = (
            DeltaTable.forPath(spark, path).alias("old").merge(new.alias("new"), "old.id = new.id")
            .whenMatchedUpdate(set={"n": "old.n + new.n"}).whenNotMatchedInsertAll()
        )  # fmt: skip
        return appender.merge(merge, path, batch_id)

    assert add(BatchAppender(spark, "job"), 0)
    assert not add(BatchAppender(spark, "job"), 0)  # replayed after a restart: skipped
    assert add(BatchAppender(spark, "job"), 1)
    assert sorted(tuple(r) for r in spark.read.format("delta").load(path).collect()) == [(1, 20), (2, 10)]
    assert spark.conf.get("spark.databricks.delta.commitInfo.userMetadata", None) is None  # not left set for other writes


def test_delta_logs_keep_statistics_of_times_and_numbers_never_of_strings(spark, tmp_path):
    from datetime import datetime

    from pyspark.sql import types as T

    from pipelines.erasure import values_in_log

    schema = T.StructType([T.StructField("customer_id", T.StringType()), T.StructField("n", T.LongType()), T.StructField("at", T.TimestampType())])
    rows = spark.createDataFrame([("C001201", 7, datetime(2026, 6, 1))], schema)
    declared, written = tmp_path / "declared", tmp_path / "written"
    ensure_table(spark, str(declared), schema)  # a CROM table
    rows.write.format("delta").mode("append").save(str(declared))
    rows.write.format("delta").save(str(written))  # a table made by its first write, as CRFM's are
    for table in (declared, written):
        log = "".join(p.read_text() for p in (table / "_delta_log").glob("*.json"))
        assert "C001201" not in log and not values_in_log(table), table.name
    declared_log = "".join(p.read_text() for p in (declared / "_delta_log").glob("*.json"))
    assert '\\"n\\":7' in declared_log  # numbers keep their statistics for data skipping
    # Control: the check sees string statistics when a table keeps them.
    legacy = tmp_path / "legacy"
    rows.write.format("delta").option("delta.dataSkippingNumIndexedCols", "32").save(str(legacy))
    spark.sql(f"ALTER TABLE delta.`{legacy}` SET TBLPROPERTIES ('delta.dataSkippingNumIndexedCols' = '32')")
    rows.write.format("delta").mode("append").save(str(legacy))
    assert values_in_log(legacy) and "C001201" in "".join(p.read_text() for p in (legacy / "_delta_log").glob("*.json"))
