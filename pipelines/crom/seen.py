"""The event ids CROM's silver tables hold, kept in Spark's memory between micro-batches.

A row is a duplicate when its event id is already in its source's silver table, within the
watermark. Reading each silver table for that in every batch planned one Delta scan per
source, and the planning alone cost seconds of every batch, however small. Silver is read
once per run instead; each batch then adds the ids it offered to silver.
"""

from __future__ import annotations

from datetime import datetime
from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

# Batches kept as separate cached pieces before they are merged into one: every piece is one
# more scan to plan in each later batch.
MAX_PIECES = 8


def seen_ids(rows: DataFrame, source: str, time_column: str) -> DataFrame:
    """(source, event_id, event_time) of silver-shaped rows of one source."""
    return rows.select(F.lit(source).alias("source"), F.col("event_id"), F.col(time_column).cast("timestamp").alias("event_time"))


class SeenEvents:
    """The ids each source's silver table holds, as (source, event_id, event_time) rows.

    Only the CROM query writes silver, so silver's ids when a run's first batch starts, plus
    the ids every later batch offered to silver, cover what silver holds. Some of those ids
    never reached silver (duplicates, which were there already; late rows, which are older
    than every later watermark), so they match nothing that silver would not.

    Ids of batch `b` and later are never part of `before(b)`: a batch replayed after a failure
    sees what its first attempt saw, as the Delta scan did by leaving out its own batch id.
    """

    def __init__(self, spark: SparkSession, silver: dict[str, str], time_column: str):
        self.spark = spark
        self.silver = silver  # source -> silver table path
        self.time_column = time_column
        self._base: DataFrame | None = None
        self._base_before = -1  # `_base` holds no ids of this batch or later
        self._pieces: list[tuple[int, DataFrame]] = []  # (batch id, the ids it offered)

    def before(self, batch_id: int, marks: dict[str, datetime | None]) -> dict[str, DataFrame]:
        """Per source, the event ids silver held before `batch_id`, at or after its watermark."""
        if self._base is None or batch_id < self._base_before:
            self._replace(self._read_silver(batch_id, marks), batch_id)
        else:
            self._drop_pieces_from(batch_id)
            if len(self._pieces) > MAX_PIECES:
                self._replace(self._within(self._all(), marks).localCheckpoint(eager=True), batch_id)
        seen = self._within(self._all(), marks)
        return {source: seen.where(F.col("source") == source).select("event_id") for source in self.silver}

    def add(self, batch_id: int, ids: DataFrame) -> None:
        """Keep the ids batch `batch_id` offered to silver (see `seen_ids`); computed now."""
        self._drop_pieces_from(batch_id)
        self._pieces.append((batch_id, ids.localCheckpoint(eager=True)))

    def release(self) -> None:
        """Free the cached ids; the next `before` reads silver again."""
        self._replace(None, -1)

    def _read_silver(self, batch_id: int, marks: dict[str, datetime | None]) -> DataFrame:
        frames = [
            seen_ids(self.spark.read.format("delta").load(path).where(F.col("batch_id") != F.lit(batch_id)), source, self.time_column)
            for source, path in self.silver.items()
        ]
        return self._within(reduce(DataFrame.unionByName, frames), marks).localCheckpoint(eager=True)

    def _replace(self, base: DataFrame | None, before: int) -> None:
        for old in [self._base, *(piece for _, piece in self._pieces)]:
            if old is not None:
                old.unpersist()
        self._base, self._base_before, self._pieces = base, before, []

    def _drop_pieces_from(self, batch_id: int) -> None:
        for _, piece in (p for p in self._pieces if p[0] >= batch_id):
            piece.unpersist()
        self._pieces = [p for p in self._pieces if p[0] < batch_id]

    def _all(self) -> DataFrame:
        return reduce(DataFrame.unionByName, [self._base, *(piece for _, piece in self._pieces)])

    @staticmethod
    def _within(ids: DataFrame, marks: dict[str, datetime | None]) -> DataFrame:
        """Ids at or after their source's watermark: older rows are late, never compared."""
        kept: Column = F.lit(True)
        for source, mark in marks.items():
            if mark is not None:
                kept = kept & ((F.col("source") != source) | (F.col("event_time") >= F.lit(mark)))
        return ids.where(kept)
