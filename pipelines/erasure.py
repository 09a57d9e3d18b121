"""Retention and erasure across the lakehouse, for `crm purge` and `crm forget`.

- **Purge**: each operational source may set `delta_retention_days`. Its interaction rows older
  than that are deleted from CROM: silver and late events by event time; bronze and
  quarantine, whose payload may not parse, by Kafka timestamp; web sessions by their end.
  VACUUM then keeps Delta's default retention, so a reader that is behind still finds its
  files. CRFM's daily partials, which are aggregates, keep their history.
- **Forget**: customers are erased from every table of every layer in one pass. A row is a
  customer's when a string column names their id as a whole word (an id column, a Kafka key,
  a payload, a log line) or a pseudonym column holds one of their pseudonyms (their own, and
  the e-mail, phone and cookie keys the identity map and web sessions tie to them). Those
  rows are deleted; from arrays of distinct values (a breakdown's customers or visitors,
  claimants of a key) only their ids and pseudonyms are removed. Each table gets one MERGE against a one-row frame of the request,
  so the ids are never written into a commit's description, and the tables keep no string
  column statistics (conf/local.yaml, `lakehouse.ensure_table`), so no log entry names them.
  VACUUM with no retention then deletes the files the tables removed. Time travel to a
  version before the erasure fails: its files are gone.

Both are deletes, not appends: the CRFM streams skip those commits (skipChangeCommits), and
a stream that had not read a file forget removed rebuilds its partials (crfm/incremental.py).
Kafka keeps the raw events until the topic's `retention_hours`; single records cannot be
deleted from a topic.
"""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import reduce
from pathlib import Path

import deltalake as rs
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.directives import Source
from pipelines.errors import CrmError
from pipelines.tables import CromTables, lakehouse_tables, table_name

log = logging.getLogger(__name__)

PSEUDONYM_COLUMNS = ("key_hash", "customer_key")  # besides every *_hmac column
CUSTOMER_ID = re.compile(r"[A-Za-z0-9._:-]+")
WORD = re.compile(r"\w+", re.ASCII)  # ids made of word characters alone are matched by splitting text into words
TABLES_AT_ONCE = 4  # a small table's scan, MERGE and VACUUM are mostly job start-up: overlap them
ATTEMPTS = 5  # a table a running job appends to may change under the MERGE: it is tried again


@dataclass(frozen=True)
class Erased:
    table: str  # layer/table
    deleted: int
    updated: int  # rows that kept their place but lost the id from an array


@dataclass(frozen=True)
class Forgotten:
    erased: list[Erased]  # the tables that held the customers
    vacuumed: int  # tables whose removed files were deleted
    with_values_in_log: list[str]  # tables whose Delta log still holds column statistics (written before they were limited)


def customer_ids(given: list[str]) -> list[str]:
    """The ids of an erasure request, checked and without repeats; CrmError naming how many
    are not ids (not which: the values may be personal data)."""
    values = [g.strip() for g in given]
    bad = [n for n, v in enumerate(values, start=1) if v and not CUSTOMER_ID.fullmatch(v)]
    if bad:
        raise CrmError(f"crm forget: {len(bad)} of the values given is not a customer id (letters, digits and . _ - : only), the first at position {bad[0]}")
    ids = sorted({v for v in values if v})
    if not ids:
        raise CrmError("crm forget: no customer id given")
    return ids


def read_requests(path: Path) -> list[str]:
    """Customer ids from a file of erasure requests: one per line, `#` starts a comment."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CrmError(f"cannot read the erasure requests in {path}: {exc}") from exc
    return [line.split("#", 1)[0].strip() for line in lines]


def _is_pseudonym(name: str) -> bool:
    return name.endswith("_hmac") or name in PSEUDONYM_COLUMNS


def _whole_words(ids: list[str]) -> str:
    r"""One Java regex matching any of the ids as a whole word (C0001 is not in C00012); \Q..\E quotes each."""
    return r"(?<![A-Za-z0-9_])(?:" + "|".join(rf"\Q{i}\E" for i in ids) + r")(?![A-Za-z0-9_])"


def _request(spark: SparkSession, ids: list[str], pseudonyms: list[str]) -> DataFrame:
    """The request as a one-row frame: a MERGE joins it, so no id is written into a commit's
    description (a DELETE's predicate would be)."""
    row = [(ids, pseudonyms, [*ids, *pseudonyms], _whole_words(ids), all(WORD.fullmatch(i) for i in ids))]
    return spark.createDataFrame(row, "ids array<string>, pseudonyms array<string>, keys array<string>, pattern string, words boolean")


def _names_an_id(text: Column) -> Column:
    """Whether the text names one of the request's ids as a whole word. Ids of word characters
    are looked up among the text's words (one pass, a hash lookup, however many ids); others
    through one regex of them all."""
    words = F.split(text, r"[^A-Za-z0-9_]+")
    return F.when(F.col("s.words"), F.arrays_overlap(words, F.col("s.ids"))).otherwise(F.regexp_like(text, F.col("s.pattern")))


def rows_of(schema: T.StructType) -> Column | None:
    """The condition, over a table row `t` joined to the request `s` (see `_request`), that picks
    the customers' rows, or None if no column can hold them: a string column naming an id as a
    whole word (an id column, a Kafka key, a payload, a log line), or a pseudonym column holding
    one of theirs."""
    strings = [f.name for f in schema if isinstance(f.dataType, T.StringType)]
    conditions = [_names_an_id(F.col(f"t.{name}")) for name in strings]
    conditions += [F.array_contains(F.col("s.pseudonyms"), F.col(f"t.{name}")) for name in strings if _is_pseudonym(name)]
    return reduce(lambda a, b: a | b, (F.coalesce(c, F.lit(False)) for c in conditions)) if conditions else None


def _id_arrays(schema: T.StructType) -> list[str]:
    return [f.name for f in schema if isinstance(f.dataType, T.ArrayType) and isinstance(f.dataType.elementType, T.StringType)]


def pseudonyms_of(spark: SparkSession, crom: CromTables, ids: list[str]) -> list[str]:
    """The keys CROM resolved to the customers alone: their own pseudonyms, hashed e-mails and phones, and cookies."""
    found: list[str] = []
    if DeltaTable.isDeltaTable(spark, crom.identity_map):
        keys = spark.read.format("delta").load(crom.identity_map).where(F.col("resolved_customer_id").isin(ids))
        found += [r[0] for r in keys.select("key_hash").distinct().collect()]  # the customers' few keys
    for sessions in crom.web_sessions.values():
        if DeltaTable.isDeltaTable(spark, sessions):
            cookies = spark.read.format("delta").load(sessions).where(F.col("resolved_customer_id").isin(ids))
            found += [r[0] for r in cookies.select("cookie_id_hmac").distinct().collect() if r[0]]
    return sorted(set(found))


def vacuum(spark: SparkSession, path: str, hours: float | None) -> None:
    """Delete the files the table has removed; `hours=0` also those a late reader might want.

    Only removed files (tombstones) go, never files the log does not know: those may be a
    running job's write that is about to commit."""
    table = rs.DeltaTable(path)
    if table.metadata().configuration.get("delta.enableDeletionVectors") == "true":
        spark.sql(f"REORG TABLE delta.`{path}` APPLY (PURGE)")  # rows deleted through a vector are still in their file
        table = rs.DeltaTable(path)
    # delta-rs: Spark's VACUUM takes 5-7 s even for a small table here (a listing job, then a
    # join with the snapshot); delta-rs lists and deletes in well under a second.
    table.vacuum(retention_hours=hours, enforce_retention_duration=hours is None, dry_run=False, full=False)


def values_in_log(path: Path) -> bool:
    """Whether the table's Delta log holds statistics (min/max values) of a string column,
    which name what the files held. Tables this project creates keep none (conf/local.yaml)."""
    strings: set[tuple[str, ...]] = set()
    for commit in sorted((path / "_delta_log").glob("*.json")):
        for line in commit.read_text(encoding="utf-8").splitlines():
            action = json.loads(line)
            if "metaData" in action:
                strings |= _string_paths(json.loads(action["metaData"]["schemaString"]))
            stats = action.get("add", {}).get("stats")
            if stats and _paths(json.loads(stats).get("minValues", {})) & strings:
                return True
    return False


def _string_paths(struct: dict, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The paths of a Delta schema's string fields, nested structs included."""
    found = set()
    for field in struct["fields"]:
        kind, path = field["type"], (*prefix, field["name"])
        if kind == "string":
            found.add(path)
        elif isinstance(kind, dict) and kind.get("type") == "struct":
            found |= _string_paths(kind, path)
    return found


def _paths(values: dict, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    return {p for k, v in values.items() for p in (_paths(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k)})}


def forget(spark: SparkSession, lakehouse: Path, crom: CromTables, ids: list[str]) -> Forgotten:
    """Erase customers from every Delta table under the lakehouse, in one pass: one MERGE per
    table that holds any of them, then every table's removed files are deleted."""
    ids = customer_ids(ids)
    tables = lakehouse_tables(lakehouse)
    if not tables:
        raise CrmError(f"no Delta tables under {lakehouse}; nothing to forget")
    pseudonyms = pseudonyms_of(spark, crom, ids)  # before the identity map loses them
    log.info("forgetting %d customers and %d pseudonyms linked to them in %d tables", len(ids), len(pseudonyms), len(tables))
    request = _request(spark, ids, pseudonyms).cache()
    try:
        with ThreadPoolExecutor(TABLES_AT_ONCE, thread_name_prefix="crm-forget") as pool:
            done = list(pool.map(lambda path: _forget_in(spark, path, request), tables))
    finally:
        request.unpersist()
    # Every table, not only those that held the customers now: earlier versions' files (a
    # functional table overwritten by each run) may still hold them.
    with ThreadPoolExecutor(TABLES_AT_ONCE, thread_name_prefix="crm-vacuum") as pool:
        list(pool.map(lambda path: vacuum(spark, str(path), 0), tables))
    logged = [table_name(path) for path in tables if values_in_log(path)]
    return Forgotten([e for e in done if e is not None], len(tables), logged)


def _forget_in(spark: SparkSession, path: Path, request: DataFrame) -> Erased | None:
    table = DeltaTable.forPath(spark, str(path))
    schema = table.toDF().schema
    where = rows_of(schema)
    arrays = _id_arrays(schema)
    # Arrays of distinct values (a breakdown's customers or visitors) lose the ids and pseudonyms alone.
    holds = reduce(lambda a, b: a | b, (F.coalesce(F.arrays_overlap(F.col(f"t.{a}"), F.col("s.keys")), F.lit(False)) for a in arrays)) if arrays else None
    if where is None and holds is None:
        return None
    # Counted first, in one scan: a MERGE that matches nothing would still commit a version.
    kept_rows = holds & ~where if where is not None and holds is not None else holds
    counts = [F.count_if(c) for c in (where, kept_rows) if c is not None]
    found = iter(table.toDF().alias("t").crossJoin(F.broadcast(request.alias("s"))).agg(*counts).first())
    deleted = next(found) if where is not None else 0
    updated = next(found) if holds is not None else 0
    if not (deleted or updated):
        return None
    for attempt in range(1, ATTEMPTS + 1):
        merge = table.alias("t").merge(request.alias("s"), reduce(lambda a, b: a | b, [c for c in (where, holds) if c is not None]))
        if where is not None:
            merge = merge.whenMatchedDelete(where)
        if holds is not None:  # rows left; their other columns are aggregates, not the customers'
            merge = merge.whenMatchedUpdate(set={a: F.filter(F.col(f"t.{a}"), lambda x: ~F.array_contains(F.col("s.keys"), x)) for a in arrays})
        try:
            merge.execute()
            break
        except Exception as exc:  # noqa: BLE001 - only a concurrent writer's commit is tried again
            if "Concurrent" not in type(exc).__name__ + str(exc)[:200] or attempt == ATTEMPTS:
                raise
            log.info("%s changed under the erasure (a running job appended); trying again", table_name(path))
    log.info("%s: %d rows deleted, %d rows lost an id from an array", table_name(path), deleted, updated)
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
