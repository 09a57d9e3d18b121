"""Retention and erasure across the lakehouse, for `crm purge` and `crm forget`.

- **Purge**: each operational source may set `delta_retention_days`. Its interaction rows older
  than that are deleted from CROM: silver and late events by event time; bronze and
  quarantine, whose payload may not parse, by Kafka timestamp; web sessions by their end.
  VACUUM then keeps Delta's default retention, so a reader that is behind still finds its
  files. CRFM's daily partials, which are aggregates, keep their history.
- **Forget**: one customer is erased from every table of every layer. A row is the
  customer's when a string column names the customer id as a whole word (an id column, a
  Kafka key, a payload, a log line) or a pseudonym column holds one of the customer's
  pseudonyms (e-mail, phone and cookie keys the identity map and web sessions tie to them).
  Those rows are deleted; in arrays of ids (distinct customers of a breakdown, claimants of
  a key) only the id is removed. VACUUM with no retention then removes the files that held
  them, so no Parquet file keeps them.

Both are DELETEs, not appends: the CRFM streams skip those commits (skipChangeCommits), and a
stream that had not read a file forget removed rebuilds its partials (crfm/incremental.py).
Kafka keeps the raw events until the topic's `retention_hours`; single records cannot be
deleted from a topic.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path

import deltalake as rs
from delta.tables import DeltaTable
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.directives import Source
from pipelines.errors import CrmError
from pipelines.tables import CromTables, lakehouse_tables, table_name

log = logging.getLogger(__name__)

PSEUDONYM_COLUMNS = ("key_hash",)  # besides every *_hmac column
CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:-]+")
TABLES_AT_ONCE = 4  # a small table's scan, DELETE and VACUUM are mostly job start-up: overlap them


@dataclass(frozen=True)
class Erased:
    table: str  # layer/table
    deleted: int
    updated: int  # rows that kept their place but lost the id from an array


def _whole_word(column: Column, word: str) -> Column:
    r"""`word` in the text, not as part of a longer id (C0001 is not in C00012). \Q..\E quotes it for Java."""
    return column.rlike(rf"(?<![A-Za-z0-9_])\Q{word}\E(?![A-Za-z0-9_])")


def _is_pseudonym(name: str) -> bool:
    return name.endswith("_hmac") or name in PSEUDONYM_COLUMNS


def rows_of(schema: T.StructType, customer_id: str, pseudonyms: list[str]) -> Column | None:
    """The condition that picks the customer's rows of a table, or None if no column can hold them."""
    conditions = [_whole_word(F.col(f.name), customer_id) for f in schema if isinstance(f.dataType, T.StringType)]
    if pseudonyms:
        conditions += [F.col(f.name).isin(pseudonyms) for f in schema if _is_pseudonym(f.name) and isinstance(f.dataType, T.StringType)]
    return reduce(lambda a, b: a | b, (F.coalesce(c, F.lit(False)) for c in conditions)) if conditions else None


def _id_arrays(schema: T.StructType) -> list[str]:
    return [f.name for f in schema if isinstance(f.dataType, T.ArrayType) and isinstance(f.dataType.elementType, T.StringType)]


def pseudonyms_of(spark: SparkSession, crom: CromTables, customer_id: str) -> list[str]:
    """The keys CROM resolved to the customer alone: hashed e-mails and phones, and cookies."""
    found: list[str] = []
    if DeltaTable.isDeltaTable(spark, crom.identity_map):
        keys = spark.read.format("delta").load(crom.identity_map).where(F.col("resolved_customer_id") == customer_id)
        found += [r[0] for r in keys.select("key_hash").distinct().collect()]  # a customer's few keys
    for sessions in crom.web_sessions.values():
        if DeltaTable.isDeltaTable(spark, sessions):
            cookies = spark.read.format("delta").load(sessions).where(F.col("resolved_customer_id") == customer_id)
            found += [r[0] for r in cookies.select("cookie_id_hmac").distinct().collect() if r[0]]
    return sorted(set(found))


def vacuum(spark: SparkSession, path: str, hours: float | None) -> None:
    """Remove the files no longer in the table; `hours=0` also those a late reader might want."""
    table = rs.DeltaTable(path)
    if table.metadata().configuration.get("delta.enableDeletionVectors") == "true":
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")  # rows deleted through a vector are still in their file
        table = rs.DeltaTable(path)
    # delta-rs: Spark's VACUUM takes 5-7 s even for a small table here (a listing job, then a
    # join with the snapshot); delta-rs lists and deletes in well under a second.
    table.vacuum(retention_hours=hours, enforce_retention_duration=hours is None, dry_run=False)


def forget(spark: SparkSession, lakehouse: Path, crom: CromTables, customer_id: str) -> list[Erased]:
    """Erase one customer from every Delta table under the lakehouse; the tables that changed."""
    customer_id = customer_id.strip()
    if not CUSTOMER_ID.fullmatch(customer_id):
        raise CrmError(f"crm forget: {customer_id!r} is not a customer id (letters, digits and . _ - : only)")
    tables = lakehouse_tables(lakehouse)
    if not tables:
        raise CrmError(f"no Delta tables under {lakehouse}; nothing to forget")
    pseudonyms = pseudonyms_of(spark, crom, customer_id)  # before the identity map loses them
    log.info("forgetting %s and %d pseudonyms linked to them in %d tables", customer_id, len(pseudonyms), len(tables))
    with ThreadPoolExecutor(TABLES_AT_ONCE, thread_name_prefix="crm-forget") as pool:
        done = list(pool.map(lambda path: _forget_in(spark, path, customer_id, pseudonyms), tables))
    return [e for e in done if e is not None]


def _forget_in(spark: SparkSession, path: Path, customer_id: str, pseudonyms: list[str]) -> Erased | None:
    table = DeltaTable.forPath(spark, str(path))
    schema = table.toDF().schema
    where = rows_of(schema, customer_id, pseudonyms)
    arrays = _id_arrays(schema)
    holds = reduce(lambda a, b: a | b, (F.coalesce(F.array_contains(a, customer_id), F.lit(False)) for a in arrays)) if arrays else None
    # Counted first, in one scan: a DELETE or UPDATE that matches nothing would still commit a version.
    kept_rows = holds & ~where if where is not None and holds is not None else holds
    counts = [F.count_if(c) for c in (where, kept_rows) if c is not None]
    found = iter(table.toDF().agg(*counts).first() if counts else ())
    deleted = next(found) if where is not None else 0
    updated = next(found) if holds is not None else 0
    if deleted:
        table.delete(where)
    if updated:  # rows left after the DELETE; their other columns are aggregates, not the customer's
        table.update(holds, {a: F.array_remove(a, customer_id) for a in arrays})
    vacuum(spark, str(path), 0)  # also the files of earlier versions, which still hold the rows
    if not (deleted or updated):
        return None
    log.info("%s: %d rows deleted, %d rows lost the id from an array", table_name(path), deleted, updated)
    return Erased(table_name(path), deleted, updated)


def purge_conditions(crom: CromTables, source: str, topic: str, cutoff: datetime) -> dict[str, Column]:
    """Table -> the condition that picks the source's rows older than the cutoff."""
    before = F.lit(cutoff).cast("timestamp")
    return {
        crom.silver[source]: F.col("event_time") < before,
        crom.late: (F.col("source") == source) & (F.col("event_time") < before),
        crom.quarantine: (F.col("source") == source) & (F.col("kafka_timestamp") < before),
        crom.bronze: (F.col("kafka_topic") == topic) & (F.col("kafka_timestamp") < before),
        crom.web_sessions[source]: F.col("session_end") < before,
    }


def purge(spark: SparkSession, crom: CromTables, sources: dict[str, Source], now: datetime) -> list[Erased]:
    """Delete each source's interaction rows older than its `delta_retention_days`, then VACUUM."""
    erased = []
    touched: set[str] = set()
    for name, src in sorted(sources.items()):
        if src.delta_retention_days is None:
            log.info("source %s keeps its rows: no delta_retention_days", name)
            continue
        cutoff = now - timedelta(days=src.delta_retention_days)
        log.info("source %s: deleting rows older than %s (%d days)", name, f"{cutoff:%Y-%m-%d %H:%M}", src.delta_retention_days)
        for path, where in purge_conditions(crom, name, src.topic, cutoff).items():
            if not DeltaTable.isDeltaTable(spark, path):
                continue
            table = DeltaTable.forPath(spark, path)
            deleted = table.toDF().where(where).count()
            if deleted:  # a DELETE that matches nothing would still commit a version
                table.delete(where)
                touched.add(path)
                erased.append(Erased(f"{table_name(Path(path))} ({name})", deleted, 0))
    for path in sorted(touched):
        vacuum(spark, path, None)
    return erased
