"""The event ids CROM's silver tables hold, kept in Spark's memory between micro-batches.

A row is a duplicate when its event id is already in its source's silver table, within the
watermark. Reading each silver table for that in every batch planned one Delta scan per
source, and the planning alone cost seconds of every batch, however small. Silver is read
once per run instead; each batch then adds the ids it wrote.
"""

from __future__ import annotations

from functools import reduce

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.crom.records import WATERMARKS
from pipelines.lakehouse import has_data_files
from pipelines.spark import with_constants

# Batches kept as separate pieces before they are merged into one cached frame, so memory
# holds a bounded number of small plans. Merging after every batch measured no different
# (7.33 against 7.13 s a 500-record batch): 8 is a trade-off, not a measured optimum.
MAX_PIECES = 8
IDS_SCHEMA = "source string, event_id string, event_micros bigint"


def event_micros(time: Column) -> Column:
    """Event times are kept as microseconds: they reach Python and return without a time zone."""
    return F.unix_micros(time.cast("timestamp"))


class SeenEvents:
    """The ids each source's silver table holds, as (source, event_id, event_micros) rows.

    Only the CROM query writes silver, so silver's ids when a run's first batch starts, plus
    the ids every later batch wrote, are what silver holds.

    Ids of batch `b` and later are never part of `before(b)`: a batch replayed after a failure
    sees what its first attempt saw, as the Delta scan did by leaving out its own batch id.
    """

    def __init__(self, spark: SparkSession, silver: dict[str, str], time_column: str):
        self.spark = spark
        self.silver = silver  # source -> silver table path
        self.time_column = time_column
        self._base: DataFrame | None = None
        # `_base` holds no ids of this batch id: silver is read leaving it out, and merged pieces
        # are of earlier batches. Read from silver it may hold ids of later batch ids written
        # under another checkpoint; `_refuse_wiped_checkpoint` refuses to start on such tables.
        self._base_before = -1
        self._pieces: list[tuple[int, DataFrame]] = []  # (batch id, ids it wrote)

    def before(self, batch_id: int, constants: DataFrame) -> DataFrame:
        """(source, event_id) of every id silver held before `batch_id`, at or after its source's
        watermark; `constants` are the batch's (`records.batch_constants`)."""
        if self._base is None or batch_id < self._base_before:
            self._replace(self._read_silver(batch_id, constants), batch_id)
        else:
            self._drop_pieces_from(batch_id)
            if len(self._pieces) > MAX_PIECES:
                self._replace(self._cached(self._within(self._all(), constants)), batch_id)
        return self._within(self._all(), constants).select("source", "event_id")

    def add(self, batch_id: int, written: DataFrame) -> None:
        """Keep the (source, event_id, event_micros) of the rows batch `batch_id` wrote to silver.

        `written` should be computed once (e.g. checkpointed): every later batch scans it.
        Kept as local relations, the pieces' rows lived in every later plan: planning and
        shipping them took seconds a batch once 8 pieces of 25k ids were kept.
        """
        self._pieces.append((batch_id, written.select("source", "event_id", "event_micros")))

    def release(self) -> None:
        """Free the cached ids; the next `before` reads silver again."""
        self._replace(None, -1)

    def _read_silver(self, batch_id: int, constants: DataFrame) -> DataFrame:
        frames = [
            self.spark.read.format("delta").load(path).where(F.col("batch_id") != F.lit(batch_id))
            .select(F.lit(source).alias("source"), F.col("event_id"), event_micros(F.col(self.time_column)).alias("event_micros"))
            for source, path in self.silver.items()
            if has_data_files(path)  # a new table: nothing to scan, and a run's first Spark job spared
        ]  # fmt: skip
        if not frames:
            return self.spark.createDataFrame([], IDS_SCHEMA)
        return self._cached(self._within(reduce(DataFrame.unionByName, frames), constants))

    def _cached(self, ids: DataFrame) -> DataFrame:
        """`ids` computed once, in one partition per core: every batch scans them, and a
        partition per file or piece made as many tasks."""
        return ids.coalesce(self.spark.sparkContext.defaultParallelism).localCheckpoint(eager=True)

    def _replace(self, base: DataFrame | None, before: int) -> None:
        if self._base is not None:
            self._base.unpersist()
        self._base, self._base_before, self._pieces = base, before, []

    def _drop_pieces_from(self, batch_id: int) -> None:
        self._pieces = [p for p in self._pieces if p[0] < batch_id]

    def _all(self) -> DataFrame:
        return reduce(DataFrame.unionByName, [self._base, *(piece for _, piece in self._pieces)])

    @staticmethod
    def _within(ids: DataFrame, constants: DataFrame) -> DataFrame:
        """Ids at or after their source's watermark: older rows are late, never compared."""
        mark = F.col(WATERMARKS)[F.col("source")]
        kept = mark.isNull() | (F.timestamp_micros(F.col("event_micros")) >= mark)
        return with_constants(ids, constants.select(WATERMARKS)).where(kept).select(*ids.columns)


def new_events(candidates: DataFrame, seen: DataFrame) -> DataFrame:
    """The rows to write, one per new (source, event_id): not among the `seen` ids, and the first
    of the batch's copies (lowest Kafka partition, then offset), so a replay picks the same one.

    `candidates` has source, event_id, kafka_partition, kafka_offset and event_micros.
    """
    keys = ["source", "event_id"]
    # Both joins broadcast the batch-sized side, so the seen ids are scanned, never shuffled.
    seen_here = seen.join(F.broadcast(candidates.select(*keys)), keys, "left_semi")
    fresh = candidates.join(F.broadcast(seen_here), keys, "left_anti")
    first = F.min(F.struct("kafka_partition", "kafka_offset", "event_micros")).alias("first")
    return fresh.groupBy(*keys).agg(first).select(*keys, "first.*")
