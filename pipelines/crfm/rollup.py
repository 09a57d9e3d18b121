"""Roll up only the keys that new partials can change (the job MERGEs them, or rewrites the
table with every other row shifted when as_of moved).

A functional table has one row per key (a customer or a breakdown's grain value; per variant
in `_variants`), computed from that key's daily partials and the as_of day alone. Between two
runs a partials table grows by appends only (a compaction adds rows up without changing a
sum); after any other commit (an erasure, a purge, a rebuild) its part is recomputed whole.
So when a run appended partials and moved as_of from a0 to a1, a row can change only if its key

- has new partials: the keys in the files the partials tables' appends added since the
  table was computed;
- has partials on a day that entered or left a parameter's scope (a window, a holdout, a
  variant's earlier as_of) when as_of moved.

Those keys are recomputed from their own partials. For every other key only the measures
counted from as_of (recency_days, tenure_days) move, by exactly a1 - a0 days, so their rows
are shifted, not recomputed. A key never loses its partials, so no row disappears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from functools import reduce
from pathlib import Path
from urllib.parse import urlparse

import deltalake
from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.crfm.incremental import APP_ID, COMPACTION, MONTH
from pipelines.crfm.parameters import DAY
from pipelines.directives import Parameter

FROM_AS_OF = ("recency_days", "tenure_days")  # measures counted from as_of, not from the events alone


@dataclass(frozen=True)
class PartialsState:
    """Where a partials table stood when a table was computed from it: its Delta table's id
    (a rebuilt table has another) and version."""

    table_id: str
    version: int

    @classmethod
    def of(cls, path: str) -> PartialsState:
        table = deltalake.DeltaTable(path)
        return cls(table.metadata().id, table.version())


def appends_since(path: str, then: PartialsState) -> list[tuple[int, int]] | None:
    """The ranges of versions after `then` that appended partials (compactions left out); None
    when the table is another one or another kind of commit came in between."""
    table = deltalake.DeltaTable(path)
    now = table.version()
    if table.metadata().id != then.table_id or now < then.version:
        return None
    ranges: list[tuple[int, int]] = []
    for commit in sorted(table.history(now - then.version), key=lambda c: c["version"]):
        meta = commit.get("userMetadata") or ""
        if meta == COMPACTION:
            continue
        if not meta.startswith(f"{APP_ID}:"):
            return None
        v = commit["version"]
        if ranges and ranges[-1][1] == v - 1:
            ranges[-1] = (ranges[-1][0], v)
        else:
            ranges.append((v, v))
    return ranges


def appended_files(path: str, ranges: list[tuple[int, int]]) -> list[str] | None:
    """The data files the appends in those version ranges added (an append removes none);
    None when one is gone (a VACUUM after a compaction removed it)."""
    files: set[str] = set()
    for first, last in ranges:
        files |= set(deltalake.DeltaTable(path, version=last).file_uris()) - set(deltalake.DeltaTable(path, version=first - 1).file_uris())
    local = [urlparse(f).path for f in files if urlparse(f).scheme in ("", "file")]
    return sorted(files) if all(Path(f).exists() for f in local) else None


def moved_days(params: Iterable[Parameter], offsets: Iterable[int], before: date, after: date) -> list[tuple[date, date]]:
    """The days that entered or left some parameter's scope when as_of moved from `before` to
    `after`, as merged ranges (first, last]. A scope (a - window, a], (a, a + holdout] or
    (-inf, a] moves at each finite edge; `offsets` are the earlier as_of days also read."""
    ranges = []
    for param in params:
        for offset in offsets:
            low, high = sorted((before - timedelta(days=offset), after - timedelta(days=offset)))
            if low == high:
                continue
            ranges.append((low, high))  # the edge at a itself
            if param.holdout_days:
                ranges.append((low + timedelta(days=param.holdout_days), high + timedelta(days=param.holdout_days)))
            elif param.window_days:
                ranges.append((low - timedelta(days=param.window_days), high - timedelta(days=param.window_days)))
    merged: list[tuple[date, date]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
        else:
            merged.append((first, last))
    return merged


def on_days(ranges: list[tuple[date, date]]) -> Column:
    """Rows of a partials table on those days; the month bounds let Delta skip other months' files."""
    def one(first: date, last: date) -> Column:
        after, through = F.lit(first), F.lit(last)
        months = F.col(MONTH).between(F.trunc(F.date_add(after, 1), "month"), F.trunc(through, "month"))
        return months & (F.col(DAY) > after) & (F.col(DAY) <= through)

    return reduce(Column.__or__, [one(*r) for r in ranges], F.lit(False))


def changed_keys(
    spark: SparkSession,
    partials: dict[str, str],
    then: dict[str, PartialsState],
    grain: str,
    params: list[Parameter],
    offsets: list[int],
    before: date,
    after: date,
) -> DataFrame | None:
    """The grain values whose rows can differ from those computed at `then` and as_of `before`;
    None when a partials table was not only appended to (the part is then recomputed whole)."""
    frames = []
    for path in partials.values():
        ranges = appends_since(path, then[path]) if path in then else None
        files = appended_files(path, ranges) if ranges is not None else None
        if files is None:
            return None
        if files:
            frames.append(spark.read.parquet(*files).select(grain))
        if days := moved_days(params, offsets, before, after):
            frames.append(spark.read.format("delta").load(path).where(on_days(days)).select(grain))
    if not frames:  # nothing appended and as_of did not move
        return spark.read.format("delta").load(next(iter(partials.values()))).select(grain).limit(0)
    return reduce(DataFrame.unionByName, frames).distinct()


def of_keys(daily: dict[str, DataFrame], keys: DataFrame, grain: str) -> dict[str, DataFrame]:
    """Each partials table's rows of those keys only."""
    return {name: frame.join(F.broadcast(keys), grain, "left_semi") for name, frame in daily.items()}


def shifted(old: DataFrame, keys: DataFrame, grain: str, days: int, columns: Iterable[str], rescore: Callable[[DataFrame], DataFrame]) -> DataFrame:
    """The rows of the other keys with the measures counted from as_of moved `days` later,
    and what is derived from them recomputed."""
    moved = old.join(F.broadcast(keys), grain, "left_anti")
    return rescore(moved.withColumns({c: F.col(c) + F.lit(days) for c in columns}))


def merge(spark: SparkSession, path: str, rows: DataFrame, keys: list[str]) -> None:
    """Upsert `rows` into the table at `path`, matched on `keys`."""
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    DeltaTable.forPath(spark, path).alias("t").merge(rows.alias("s"), on).whenMatchedUpdateAll().whenNotMatchedInsertAll().execute()
