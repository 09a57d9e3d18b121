"""Keep the daily partials (see parameters.py) up to date from silver's new commits.

One AvailableNow stream per silver table folds the events appended since the last run into
every partials table that reads that source (the customer's `crfm/<name>_partials_<source>`
and each breakdown's); the stream's checkpoint records how far it got, so a run reads only
new data, once per source. A batch's partials are appended, not MERGEd: partials of the same
key add up wherever they are read, which is cheaper than a MERGE that reads and rewrites the
month's files; every COMPACT_EVERY appends, the months with repeated keys are added up into
one row per key. foreachBatch is at-least-once and an append adds, so each commit carries
its batch id and a replayed batch is skipped, table by table (BatchAppender).

The partials tables record a fingerprint of everything the stream folds. When the directive
changes it, when a table and the checkpoint disagree (one of them lost), or on request
(`full`), the tables and the checkpoint are removed and the stream starts from silver's first
version: a full recompute through the same code. So are tables whose stream finds that a
silver file it had not read was erased (see pipelines/erasure.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.errors import StreamingQueryException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.util import inheritable_thread_target

from pipelines.crfm.parameters import DAY, added_up, daily_partials, keys
from pipelines.directives import Parameter
from pipelines.lakehouse import BatchAppender, table_property

log = logging.getLogger(__name__)

FINGERPRINT = "crm.partials.fingerprint"
MONTH = "month"
LAYOUT = 4  # of the partials tables; a change rebuilds tables stored the old way
APP_ID = "crfm-partials"
COMPACTION = "crfm-partials-compaction"  # not APP_ID's prefix: BatchAppender reads batch ids there
COMPACT_EVERY = 8  # appends to a partials table before its repeated keys are added up
HISTORY_DEPTH = 2 * COMPACT_EVERY  # commits searched back for the last compaction


def _stored(partials: DataFrame) -> DataFrame:
    """Partials as stored: with the month of their day, which partitions the table."""
    return partials.withColumn(MONTH, F.trunc(DAY, "month"))


@dataclass(frozen=True)
class Fold:
    """One partials table a source's stream keeps: its parameters' partials at one grain."""

    table: str
    params: tuple[Parameter, ...]
    grain: str


@dataclass(frozen=True)
class PartialsRun:
    rebuilt: bool
    new_events: int  # silver rows read by this run


def fingerprint(folds: list[Fold]) -> str:
    """Changes whenever the stream would fold differently: another table, grain or parameter."""
    spec = [LAYOUT, [[Path(f.table).name, f.grain, [p.model_dump(mode="json") for p in f.params]] for f in folds]]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _reason_to_rebuild(spark: SparkSession, folds: list[Fold], checkpoint: Path, print_: str) -> str | None:
    missing = [f.table for f in folds if not DeltaTable.isDeltaTable(spark, f.table)]
    if len(missing) == len(folds) and not checkpoint.exists():
        return None  # a first run builds from scratch anyway
    if not checkpoint.exists():
        return "its checkpoint is missing"
    if missing:  # the stream cannot start one table from the beginning alone
        return f"{Path(missing[0]).name} is missing"
    if any(table_property(spark, f.table, FINGERPRINT) != print_ for f in folds):
        return "the directive's parameters changed"
    return None


def update_partials(spark: SparkSession, silver: str, folds: list[Fold], checkpoint: Path, full: bool = False) -> PartialsRun:
    """Fold silver's new events into each partials table; rebuild them when they cannot be trusted."""
    # Its own session: other sources' partials may be updated at the same time.
    spark = spark.newSession()
    print_ = fingerprint(folds)
    reason = "a full recompute was asked for" if full else _reason_to_rebuild(spark, folds, checkpoint, print_)
    if reason is not None:
        log.info("rebuilding the partials of %s from silver: %s", Path(silver).name, reason)
        shutil.rmtree(checkpoint, ignore_errors=True)  # first, so a crash in between leaves tables without checkpoint: rebuilt again
        for f in folds:
            shutil.rmtree(f.table, ignore_errors=True)
    empty = {f.table for f in folds if not DeltaTable.isDeltaTable(spark, f.table)}
    rebuilt = bool(empty)
    for f in folds:
        if f.table in empty:
            schema = _stored(daily_partials(spark.read.format("delta").load(silver).limit(0), list(f.params), f.grain)).schema
            (
                DeltaTable.createIfNotExists(spark).location(f.table).addColumns(schema)
                .partitionedBy(MONTH)  # new events touch the newest months: a compaction rewrites only those
                .property(FINGERPRINT, print_)  # no deletion vectors: delta-rs (deltalake), which analysts use, cannot read them
                .execute()
            )  # fmt: skip
    appender = BatchAppender(spark, APP_ID)

    def fold(batch: DataFrame, batch_id: int) -> None:
        batch = batch.persist()  # every table reads the batch's events: they are scanned once

        def append(f: Fold) -> None:
            appender.append(_stored(daily_partials(batch, list(f.params), f.grain)), f.table, batch_id)

        try:
            # Together: a small append is mostly Delta's commit, which leaves the cores idle.
            # Inheriting the batch thread's job group lets stopping the query cancel them too.
            with ThreadPoolExecutor(len(folds), thread_name_prefix="crfm-fold") as pool:
                list(pool.map(inheritable_thread_target(append), folds))
        finally:
            batch.unpersist()

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
        log.warning("rebuilding the partials of %s: silver files it had not read yet were erased (crm forget or purge)", Path(silver).name)
        return update_partials(spark, silver, folds, checkpoint, full=True)
    with ThreadPoolExecutor(len(folds), thread_name_prefix="crfm-compact") as pool:
        list(pool.map(lambda f: _compact_if_due(spark, f), folds))
    new_events = sum(p["numInputRows"] for p in query.recentProgress)
    return PartialsRun(rebuilt, new_events)


def _compact_if_due(spark: SparkSession, fold: Fold) -> None:
    """Add up the repeated keys of a partials table, month by month, once COMPACT_EVERY appends
    have come since the last compaction. The roll-up adds repeated keys up anyway: this only
    keeps the table from growing with the number of runs."""
    history = DeltaTable.forPath(spark, fold.table).history(HISTORY_DEPTH).select("userMetadata").collect()
    appends = 0  # since the last compaction; other commits (an erasure) do not count
    for row in history:
        meta = row["userMetadata"] or ""
        if meta == COMPACTION:
            break
        appends += meta.startswith(f"{APP_ID}:")
    if appends < COMPACT_EVERY:
        return
    # Found by counting, not from the change data feed: the feed would keep erased rows (crm forget).
    rows = spark.read.format("delta").load(fold.table)
    repeated = rows.groupBy(MONTH).agg((F.count(F.lit(1)) - F.count_distinct(*keys(fold.grain))).alias("repeated"))
    months = sorted(row[0] for row in repeated.where("repeated > 0").select(MONTH).collect())
    if not months:
        return
    (
        _stored(added_up(rows.where(F.col(MONTH).isin(months)), list(fold.params), keys(fold.grain))).write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", " OR ".join(f"{MONTH} = DATE'{m.isoformat()}'" for m in months))
        .option("userMetadata", COMPACTION)
        .save(fold.table)
    )  # fmt: skip
    log.info("compacted %s: the repeated keys of %d months added up", Path(fold.table).name, len(months))


def _vacuumed_before_read(exc: Exception) -> bool:
    return any(sign in str(exc) for sign in ("FileNotFoundException", "FILE_NOT_EXIST", "DELTA_FILE_NOT_FOUND"))
