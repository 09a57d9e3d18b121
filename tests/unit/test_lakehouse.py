"""Delta helpers on real Delta tables: declared schemas, interrupted creates, idempotent appends."""

from __future__ import annotations

import pytest
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


def test_a_batch_is_appended_once_even_by_a_new_appender(spark, tmp_path):
    path = str(tmp_path / "t")
    ensure_table(spark, path, SCHEMA)
    rows = spark.createDataFrame([(1,), (2,)], SCHEMA)
    assert BatchAppender(spark, "job").append(rows, path, 0)
    assert not BatchAppender(spark, "job").append(rows, path, 0)  # a restarted job replays batch 0
    assert BatchAppender(spark, "other-job").append(rows, path, 0)
    assert spark.read.format("delta").load(path).count() == 4
