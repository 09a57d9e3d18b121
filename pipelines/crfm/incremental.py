"""Keep each source's daily partials (see parameters.py) up to date from silver's new commits.

An AvailableNow stream from each silver Delta table folds the events appended since the
last run into partials and MERGEs them into `crfm/<name>_partials_<source>`; the stream's
checkpoint records how far it got, so a run reads only new data. foreachBatch is
at-least-once and a MERGE that adds is not idempotent, so each MERGE commit carries its
batch id and a replayed batch is skipped (BatchAppender).

The partials table records a fingerprint of the parameters it folds. When the directive
changes them, when the table and its checkpoint disagree (one of them lost), or on request
(`full`), both are removed and the stream starts from silver's first version: a full
recompute through the same code. So is a table whose stream finds that a silver file it
had not read was erased (see pipelines/erasure.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.crfm.parameters import DAY, daily_partials, keys, merge_partials
from pipelines.directives import Parameter
from pipelines.lakehouse import BatchAppender

log = logging.getLogger(__name__)

FINGERPRINT = "crm.partials.fingerprint"
MONTH = "month"
LAYOUT = 3  # of the partials table; a change rebuilds tables stored the old way
APP_ID = "crfm-partials"


def _stored(partials: DataFrame) -> DataFrame:
    """Partials as stored: with the month of their day, which partitions the table."""
    return partials.withColumn(MONTH, F.trunc(DAY, "month"))


@dataclass(frozen=True)
class PartialsRun:
    table: str
    rebuilt: bool
    new_events: int  # silver rows read by this run


def fingerprint(params: list[Parameter], grain: str) -> str:
    """Changes whenever the partials would be computed differently."""
    spec = json.dumps([LAYOUT, grain, [p.model_dump(mode="json") for p in params]], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _stored_fingerprint(spark: SparkSession, table: str) -> str | None:
    return DeltaTable.forPath(spark, table).detail().first()["properties"].get(FINGERPRINT)


def _reason_to_rebuild(spark: SparkSession, table: str, checkpoint: Path, print_: str) -> str | None:
    has_table, has_checkpoint = DeltaTable.isDeltaTable(spark, table), checkpoint.exists()
    if not has_table and not has_checkpoint:
        return None  # a first run builds from scratch anyway
    if has_table != has_checkpoint:
        return "its checkpoint is missing" if has_table else "its table is missing"
    if _stored_fingerprint(spark, table) != print_:
        return "the directive's parameters changed"
    return None


def update_partials(
    spark: SparkSession,
    silver: str,
    table: str,
    checkpoint: Path,
    params: list[Parameter],
    grain: str,
    full: bool = False,
) -> PartialsRun:
    """Fold silver's new events into the partials table; rebuild it when it cannot be trusted."""
    # Its own session: the MERGE's commit metadata is a session setting, and other sources'
    # partials may be updated at the same time.
    spark = spark.newSession()
    print_ = fingerprint(params, grain)
    reason = "a full recompute was asked for" if full else _reason_to_rebuild(spark, table, checkpoint, print_)
    rebuilt = reason is not None or not DeltaTable.isDeltaTable(spark, table)
    if reason is not None:
        log.info("rebuilding %s from silver: %s", table, reason)
        shutil.rmtree(checkpoint, ignore_errors=True)  # first, so a crash in between leaves a table without checkpoint: rebuilt again
        shutil.rmtree(table, ignore_errors=True)
    empty = not DeltaTable.isDeltaTable(spark, table)
    if empty:
        schema = _stored(daily_partials(spark.read.format("delta").load(silver).limit(0), params, grain)).schema
        (
            DeltaTable.createIfNotExists(spark).location(table).addColumns(schema)
            .partitionedBy(MONTH)  # new events touch the newest months: a MERGE reads and rewrites only those
            .property(FINGERPRINT, print_)  # no deletion vectors: delta-rs (deltalake), which analysts use, cannot read them
            .execute()
        )  # fmt: skip
    appender = BatchAppender(spark, APP_ID)
    on = " AND ".join(f"old.{k} = new.{k}" for k in (MONTH, *keys(grain)))

    def fold(batch: DataFrame, batch_id: int) -> None:
        nonlocal empty
        new = _stored(daily_partials(batch, params, grain))
        if empty:  # nothing to add to: the first batch of a build is appended
            appender.append(new, table, batch_id)
            empty = False
            return
        new = new.persist()  # read twice below; the batch's events are scanned once
        try:
            # A literal list of the batch's months lets Delta prune the others (a few dozen at most).
            months = [row[0] for row in new.select(MONTH).distinct().collect()]
            in_months = F.col(f"old.{MONTH}").isin(months)
            merge = (
                DeltaTable.forPath(spark, table).alias("old").merge(new.alias("new"), F.expr(on) & in_months)
                .whenMatchedUpdate(set=merge_partials(params, "old", "new"))
                .whenNotMatchedInsertAll()
            )  # fmt: skip
            appender.merge(merge, table, batch_id)
        finally:
            new.unpersist()

    query = (
        # DELETEs (crm purge, crm forget) rewrite silver's files: their commits are not new events.
        spark.readStream.format("delta").option("skipChangeCommits", "true").load(silver)
        .writeStream.foreachBatch(fold)
        .option("checkpointLocation", str(checkpoint))
        .trigger(availableNow=True)
        .start()
    )  # fmt: skip
    try:
        query.awaitTermination()
    except StreamingQueryException as exc:
        if full or not _vacuumed_before_read(exc):
            raise
        # crm forget (or a purge past VACUUM's retention) rewrote and removed a file this stream
        # had not read: its other rows are only in the rewrite, a commit the stream skips.
        log.warning("rebuilding %s: silver files it had not read yet were erased (crm forget or purge)", table)
        return update_partials(spark, silver, table, checkpoint, params, grain, full=True)
    new_events = sum(p["numInputRows"] for p in query.recentProgress)
    return PartialsRun(table, rebuilt, new_events)


def _vacuumed_before_read(exc: Exception) -> bool:
    return any(sign in str(exc) for sign in ("FileNotFoundException", "FILE_NOT_EXIST", "DELTA_FILE_NOT_FOUND"))
