"""The CROM ingest job: Kafka topics -> bronze, silver per source, quarantine, GE results.

One Structured Streaming query reads every topic of the operational directive; each
micro-batch is written by `BatchWriter`, whose writes are all idempotent per batch id, so a
batch replayed after a crash changes nothing. Streaming and until-caught-up runs share the
code path and the checkpoint.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipelines.config import Profile
from pipelines.crom import records
from pipelines.crom.parse import parse_all
from pipelines.crom.validate import RESULTS_SCHEMA, BatchValidator
from pipelines.directives import Loaded
from pipelines.errors import CrmError
from pipelines.lakehouse import BatchAppender, ensure_table
from pipelines.privacy import hmac_key
from pipelines.schemas import EventSchema
from pipelines.tables import CromTables

log = logging.getLogger(__name__)

APP_ID = "crom-ingest"


class BatchWriter:
    """Writes one micro-batch to every CROM table; safe to call twice with the same batch id."""

    def __init__(self, spark: SparkSession, profile: Profile, operational: Loaded, schemas: dict[str, EventSchema]):
        directive = operational.directive
        self.spark = spark
        self.directive = directive
        self.schemas = schemas
        self.topics = {src.topic: name for name, src in directive.sources.items()}
        self.by_topic = {topic: schemas[source] for topic, source in self.topics.items()}
        self.pii_keys = sorted({f for s in schemas.values() for f in s.pii_fields})
        self.key = hmac_key(profile.cache)
        self.tables = CromTables.of(profile, list(directive.sources))
        self.appender = BatchAppender(spark, APP_ID)
        self.validator = BatchValidator(directive.sources, directive.id, directive.version, str(operational.path))
        self._create_tables()

    def _create_tables(self) -> None:
        ensure_table(self.spark, self.tables.bronze, records.BRONZE_SCHEMA)
        ensure_table(self.spark, self.tables.quarantine, records.QUARANTINE_SCHEMA)
        ensure_table(self.spark, self.tables.validation_results, RESULTS_SCHEMA)
        ensure_table(self.spark, self.tables.batch_audit, records.BATCH_AUDIT_SCHEMA)
        for source, path in self.tables.silver.items():
            ensure_table(self.spark, path, records.silver_schema(self.schemas[source]))

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        parsed = parse_all(records.decode(batch), self.by_topic).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            counts = self._write(parsed, batch_id)
        finally:
            parsed.unpersist()
        if counts:
            log.info(
                "batch %d: %d records -> silver %d, quarantine %d, duplicates %d (%.1fs)",
                batch_id,
                sum(c["records"] for c in counts),
                sum(c["silver_rows"] for c in counts),
                sum(c["quarantined"] for c in counts),
                sum(c["duplicates"] for c in counts),
                time.monotonic() - started,
            )

    def _write(self, parsed: DataFrame, batch_id: int) -> list[dict]:
        outcomes = self._count_outcomes(parsed)
        if not outcomes:
            return []
        self.appender.append(records.to_bronze(parsed, self.pii_keys, batch_id), self.tables.bronze, batch_id)
        results: list[Row] = []
        counts: list[dict] = []
        for topic, source in self.topics.items():
            valid, rejected = outcomes.get(topic, (0, 0))
            if valid + rejected == 0:
                continue
            inserted = 0
            if valid:
                new_rows = self._new_silver_rows(parsed, source, batch_id).persist(StorageLevel.MEMORY_AND_DISK)
                try:
                    inserted = new_rows.count()
                    self.appender.append(new_rows, self.tables.silver[source], batch_id)
                    results += self.validator.validate(source, new_rows, batch_id)
                finally:
                    new_rows.unpersist()
            counts.append(
                dict(
                    batch_id=batch_id,
                    source=source,
                    records=valid + rejected,
                    silver_rows=inserted,
                    duplicates=valid - inserted,
                    quarantined=rejected,
                    finished_at=datetime.now(timezone.utc),
                )
            )
        if any(c["quarantined"] for c in counts):
            quarantine = records.to_quarantine(parsed, self.topics, self.pii_keys, self.directive.id, self.directive.version, batch_id)
            self.appender.append(quarantine, self.tables.quarantine, batch_id)
        if results:
            self.appender.append(self.spark.createDataFrame(results, RESULTS_SCHEMA), self.tables.validation_results, batch_id)
        audit = self.spark.createDataFrame([Row(**c) for c in counts], records.BATCH_AUDIT_SCHEMA)
        self.appender.append(audit, self.tables.batch_audit, batch_id)
        return counts

    def _new_silver_rows(self, parsed: DataFrame, source: str, batch_id: int) -> DataFrame:
        """Valid rows whose event_id is new: not in this batch twice, not in silver before.

        Rows an earlier attempt of this same batch wrote are not "before", so a replayed
        batch computes the same rows (and BatchAppender then skips its append).
        """
        candidates = records.to_silver(parsed, source, self.schemas[source], self.key, batch_id)
        candidates = candidates.dropDuplicates(["event_id"])
        earlier = (
            self.spark.read.format("delta")
            .load(self.tables.silver[source])
            .where(F.col("batch_id") != F.lit(batch_id))
            .select("event_id")
        )
        # Both joins broadcast the batch-sized side, so silver's ids are scanned, never shuffled.
        seen = earlier.join(F.broadcast(candidates.select("event_id")), "event_id", "left_semi")
        return candidates.join(F.broadcast(seen), "event_id", "left_anti")

    @staticmethod
    def _count_outcomes(parsed: DataFrame) -> dict[str, tuple[int, int]]:
        """{topic: (valid, rejected)} in one pass; the aggregate is a few numbers, not rows."""
        rows = (
            parsed.groupBy("kafka_topic")
            .agg(F.count(F.when(F.col("reason_code").isNull(), 1)).alias("valid"), F.count("reason_code").alias("rejected"))
            .collect()
        )
        return {r["kafka_topic"]: (r["valid"], r["rejected"]) for r in rows}


def _refuse_wiped_checkpoint(writer: BatchWriter, checkpoint: str) -> None:
    """A new checkpoint restarts batch ids at 0; over tables holding later batches every
    write would be skipped as a replay. Refuse instead of silently writing nothing."""
    commits = Path(checkpoint) / "commits"
    if commits.is_dir() and any(commits.iterdir()):
        return
    last = writer.appender.last_batch(writer.tables.bronze)
    if last >= 0:
        raise CrmError(
            f"checkpoint {checkpoint} is empty but {writer.tables.bronze} already holds batches up to {last} "
            f"from {APP_ID}; restore the checkpoint, or move the CROM tables away to re-ingest from scratch"
        )


def start_ingest(
    spark: SparkSession,
    profile: Profile,
    operational: Loaded,
    schemas: dict[str, EventSchema],
    until_caught_up: bool,
    checkpoint: str | None = None,
) -> StreamingQuery:
    """Start the CROM query; the caller waits on it."""
    directive = operational.directive
    writer = BatchWriter(spark, profile, operational, schemas)
    topics = ",".join(src.topic for src in directive.sources.values())
    kafka = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", profile.kafka.bootstrap_servers)
        .option("subscribe", topics)
        .option("startingOffsets", profile.ingest.starting_offsets)
        .option("maxOffsetsPerTrigger", profile.ingest.max_offsets_per_trigger)
        .option("failOnDataLoss", "true")
        .load()
    )
    checkpoint = checkpoint or profile.checkpoint_path("crom_ingest")
    _refuse_wiped_checkpoint(writer, checkpoint)
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    stream = kafka.writeStream.queryName("crom_ingest").foreachBatch(writer).option("checkpointLocation", checkpoint)
    if until_caught_up:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=profile.ingest.trigger_interval)
    return stream.start()
