"""Delta table helpers shared by every layer: declared schemas and idempotent writes."""

from __future__ import annotations

import logging

import deltalake
from delta.tables import DeltaMergeBuilder, DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.errors import CrmError

log = logging.getLogger(__name__)

USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


CHECKPOINT_INTERVAL_PROPERTY = "delta.checkpointInterval"
STATS_COLUMNS_PROPERTY = "delta.dataSkippingStatsColumns"
# Column types whose min/max statistics say nothing about a person: times and numbers.
_STATS_TYPES = (T.TimestampType, T.DateType, T.LongType, T.IntegerType, T.ShortType, T.DoubleType, T.FloatType)


def stats_columns(schema: T.StructType) -> str:
    """The columns a table keeps Delta statistics on (data skipping): top-level times and
    numbers, never strings, which could name a customer in the log after `crm forget`."""
    return ",".join(f.name for f in schema if isinstance(f.dataType, _STATS_TYPES))


def ensure_table(spark: SparkSession, path: str, schema: T.StructType, checkpoint_interval: int | None = None) -> None:
    """Create the table with its declared schema, or check an existing one still has it.

    `checkpoint_interval`: commits between Delta checkpoints (Delta's default is 10), set on
    an existing table too, as are the statistics columns (`stats_columns`)."""
    wanted = {STATS_COLUMNS_PROPERTY: stats_columns(schema)} if stats_columns(schema) else {}
    if checkpoint_interval is not None:
        wanted[CHECKPOINT_INTERVAL_PROPERTY] = str(checkpoint_interval)
    if DeltaTable.isDeltaTable(spark, path):
        properties = table_properties(spark, path)
        changed = {k: v for k, v in wanted.items() if properties.get(k) != v}
        if changed:
            settings = ", ".join(f"'{k}' = '{v}'" for k, v in changed.items())
            spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ({settings})")
        actual = {f.name: f.dataType for f in spark.read.format("delta").load(path).schema}
        for field in schema:
            if field.name not in actual:
                raise CrmError(f"table {path} lacks column {field.name!r}; it was written by another schema version")
            if actual[field.name] != field.dataType:
                raise CrmError(
                    f"table {path}: column {field.name!r} is {actual[field.name].simpleString()}, "
                    f"expected {field.dataType.simpleString()}"
                )
        return
    _clear_interrupted_create(spark, path)
    create = DeltaTable.createIfNotExists(spark).location(path).addColumns(schema)
    for key, value in wanted.items():
        create = create.property(key, value)
    create.execute()


def table_properties(spark: SparkSession, path: str) -> dict[str, str]:
    """The table properties of an existing Delta table, read from its metadata alone
    (`DeltaTable.detail()` also lists every data file, a Spark job per table)."""
    return {r["key"]: r["value"] for r in spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()}


def table_property(spark: SparkSession, path: str, key: str) -> str | None:
    """A table property of an existing Delta table, or None when it is not set."""
    return table_properties(spark, path).get(key)


def has_data_files(path: str) -> bool:
    """Whether a Delta table has any data file, from its log by delta-rs (no Spark job)."""
    return bool(deltalake.DeltaTable(path).file_uris())


def table_version(path: str) -> int:
    """The latest Delta version of a table another job reads, from its log by delta-rs (no
    Spark job); a clear error if ingest never wrote it."""
    try:
        return deltalake.DeltaTable(path).version()
    except deltalake.exceptions.TableNotFoundError:
        raise CrmError(f"table {path} does not exist yet; run `crm ingest --until-caught-up` first") from None


def overwrite_unless_current(spark: SparkSession, path: str, source_version: int, build, force: bool = False) -> bool:
    """Overwrite the table at `path` with `build()` plus a `source_version` column, unless it
    already holds that version (and not `force`); True if it was rebuilt. For tables derived
    whole from others."""
    if not force and DeltaTable.isDeltaTable(spark, path):
        done = spark.read.format("delta").load(path).agg(F.max("source_version")).first()[0]
        if done == source_version:
            return False
    frame = build().withColumn("source_version", F.lit(source_version).cast("long"))
    frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)
    return True


def _clear_interrupted_create(spark: SparkSession, path: str) -> None:
    """Remove a `_delta_log` that holds no commit: a create killed before its first commit.

    Delta takes such a folder for a table and then fails with DELTA_TABLE_NOT_FOUND, so a
    job killed at that moment could never start again.
    """
    jvm = spark.sparkContext._jvm
    log_dir = jvm.org.apache.hadoop.fs.Path(f"{path}/_delta_log")
    fs = log_dir.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(log_dir):
        return
    if any(status.getPath().getName().endswith(".json") for status in fs.listStatus(log_dir)):
        return
    log.warning("removing %s: a table creation was interrupted before its first commit", log_dir)
    fs.delete(log_dir, True)


class BatchAppender:
    """Writes (appends or MERGEs) each (table, batch id) at most once, so replaying a batch changes nothing.

    foreachBatch is at-least-once. Delta's txnAppId/txnVersion would do this, but it rebuilds
    the table state on every commit (about 1 s each here). Instead each commit carries
    `userMetadata = "<app_id>:<batch id>"`; the last one is read from the history once per
    table, then kept in memory. Batch ids only grow, so an id at or below it was written.
    """

    HISTORY_DEPTH = 100  # commits searched for our last batch (other jobs may commit too)

    def __init__(self, spark: SparkSession, app_id: str, enabled: bool = True):
        self.spark = spark
        self.app_id = app_id
        self.enabled = enabled  # False only to show what a replay does without it (a test control)
        self._last: dict[str, int] = {}

    def last_batch(self, path: str) -> int:
        """The newest batch id this app committed to the table, or -1."""
        if path not in self._last:
            self._last[path] = -1
            if DeltaTable.isDeltaTable(self.spark, path):
                prefix = f"{self.app_id}:"
                for row in DeltaTable.forPath(self.spark, path).history(self.HISTORY_DEPTH).select("userMetadata").collect():
                    meta = row["userMetadata"] or ""
                    if meta.startswith(prefix):
                        self._last[path] = int(meta[len(prefix):])
                        break
        return self._last[path]

    def append(self, df: DataFrame, path: str, batch_id: int, add_columns: bool = False) -> bool:
        """Append unless this batch is already in the table; True if written. With `add_columns`,
        columns the table lacks are added to it (a table that gained columns in a release)."""
        if self.enabled and batch_id <= self.last_batch(path):
            return False
        writer = df.write.format("delta").mode("append").option("userMetadata", f"{self.app_id}:{batch_id}")
        if add_columns:
            writer = writer.option("mergeSchema", "true")
        writer.save(path)
        self._last[path] = batch_id
        return True

    def merge(self, merge: DeltaMergeBuilder, path: str, batch_id: int) -> bool:
        """Run a MERGE into the table at `path` unless this batch is already in it; True if run."""
        if self.enabled and batch_id <= self.last_batch(path):
            return False
        # A MERGE takes no writer options; its commit metadata comes from the session.
        self.spark.conf.set(USER_METADATA, f"{self.app_id}:{batch_id}")
        try:
            merge.execute()
        finally:
            self.spark.conf.unset(USER_METADATA)
        self._last[path] = batch_id
        return True
