"""The CROM ingest job: Kafka topics -> bronze, silver per source, quarantine, GE results.

One Structured Streaming query reads every topic of the operational directive; each
micro-batch is written by `BatchWriter`, whose writes are all idempotent per batch id, so a
batch replayed after a crash changes nothing. Streaming and until-caught-up runs share the
code path and the checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import reduce
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery
from pyspark.util import inheritable_thread_target

from pipelines.config import REPO_ROOT, Profile
from pipelines.crom import records
from pipelines.crom.lifecycle import lifecycle_columns
from pipelines.crom.logs import mine_templates
from pipelines.crom.orders import order_columns
from pipelines.crom.parse import Parser
from pipelines.crom.progress import ProgressListener
from pipelines.crom.seen import SeenEvents, event_micros, new_events
from pipelines.crom.sentiment_model import load_model, predict_sentiment
from pipelines.crom.text import text_columns, with_derived
from pipelines.crom.web import web_columns
from pipelines.crom.validate import RESULTS_SCHEMA, BatchValidator, compile_rules, failures_that_stop, prefixed
from pipelines.directives import UNTRUSTED, Loaded
from pipelines.errors import CrmError
from pipelines.lakehouse import BatchAppender, ensure_table
from pipelines.privacy import hmac_key
from pipelines.rates import read_rates
from pipelines.schemas import EventSchema
from pipelines.spark import local_frame, with_constants
from pipelines.tables import CromTables
from pipelines.timing import describe, timed

log = logging.getLogger(__name__)

APP_ID = "crom-ingest"
# Up to this many records (a default-sized batch), each of the batch's writes runs as one
# task: a task's fixed cost (code generated for the wide staged row, Delta's statistics)
# outweighs splitting the rows, and the writes run at once, so they fill the cores between
# them. The parse, which runs alone, takes one task per core.
ONE_TASK_BATCH = 50_000
# Commits between Delta checkpoints of the tables a batch writes (Delta's default is 10).
# These tables all commit once a batch, so one batch in ten would write every checkpoint at
# once; one in a hundred keeps that slow batch rare, and the log a snapshot replays short.
CHECKPOINT_INTERVAL = 100


@dataclass(frozen=True)
class BatchResult:
    """What one micro-batch did: its rows per source (as in batch_audit, empty for an empty
    batch) and the seconds of each step."""

    batch_id: int
    counts: list[dict]
    phases: dict[str, float]

    def total(self, key: str) -> int:
        return sum(c[key] for c in self.counts)

    @property
    def watermarks(self) -> dict[str, str]:
        """Per source with one, its watermark after the batch (ISO 8601)."""
        return {c["source"]: c["watermark"].isoformat() for c in self.counts if c["watermark"] is not None}


@dataclass(frozen=True)
class Routed:
    """A batch routed to its tables: the writes of bronze, validation results, quarantine and
    late, and each source's valid rows for silver (the new ones are found while the writes run)."""

    writes: dict[str, Callable[[], object]]
    silver: dict[str, DataFrame]


StreamTimes = dict[str, dict[int, datetime | None]]  # source -> Kafka partition -> stream time


def _known(times: StreamTimes, source: str) -> list[datetime]:
    """The source's partitions' stream times, leaving out partitions with no valid row yet."""
    return [t for t in times.get(source, {}).values() if t is not None]


class BatchWriter:
    """Writes one micro-batch to every CROM table; safe to call twice with the same batch id.

    A batch goes through named steps (docs/design/crom.md):
    - stage: parse, rule conditions and flags, and each row's watermark (its Kafka partition's
      stream time minus the delay), into a local checkpoint; one aggregation then gives every
      count, GE metric and the newest event time per partition;
    - judge: Great Expectations' results; a failed `fail` rule stops the batch before anything
      is written, so it leaves no trace;
    - route: which rows go to which table;
    - write: every table in parallel, the new rows found meanwhile; batch_audit last.
    Each batch's `BatchResult` goes to `on_batch`, if given (the progress listener, the
    bench); the writer keeps none of them.
    """

    def __init__(
        self,
        spark: SparkSession,
        profile: Profile,
        operational: Loaded,
        schemas: dict[str, EventSchema],
        on_batch: Callable[[BatchResult], None] | None = None,
    ):
        directive = operational.directive
        self.spark = spark
        self.directive = directive
        self.schemas = schemas
        self.topics = {src.topic: name for name, src in directive.sources.items()}
        self.by_topic = {topic: schemas[source] for topic, source in self.topics.items()}
        self.evolution = {name: src.evolution for name, src in directive.sources.items()}
        self.pii_keys = sorted({f for s in schemas.values() for f in s.pii_fields})
        self.key = hmac_key(profile.cache)
        self.tables = CromTables.of(profile, list(directive.sources))
        self.appender = BatchAppender(spark, APP_ID, enabled=profile.ingest.idempotent_writes)
        self.time_column = directive.watermark.column
        self.seen_events = SeenEvents(spark, self.tables.silver, self.time_column)
        self.delay = timedelta(hours=directive.watermark.delay_hours)
        self._stream_times: tuple[int, StreamTimes] = (-1, {})  # (last batch, its partitions' stream times after it): none before batch 0
        self.on_batch = on_batch
        with self._tables_created():
            self._build_expressions(spark, profile, operational)

    def _build_expressions(self, spark: SparkSession, profile: Profile, operational: Loaded) -> None:
        """Column expressions are built once: building them costs thousands of JVM calls."""
        directive = self.directive
        rules = compile_rules(directive.sources, str(operational.path))
        self.rule_columns = {
            name: sorted({c for r in rules if r.source == name for c in r.rule.columns()}) for name in directive.sources
        }
        self.validator = BatchValidator(spark, rules, self._frame_schema(), directive.id, directive.version)
        decoded = ("key", "value", "value_utf8", "payload_bytes", "kafka_topic", "kafka_timestamp")
        skew = {name: src.max_future_skew_hours or directive.watermark.max_future_skew_hours for name, src in directive.sources.items()}
        self.parser = Parser(
            self.by_topic, limits=directive.limits, evolution=self.evolution, columns=decoded, future_skew_hours=skew, time_column=self.time_column
        )
        self.stage_columns = records.stage_columns(
            self.topics,
            self.rule_columns,
            lambda source: self.validator.failed_rules(source, "quarantine"),
            lambda source: self.validator.failed_rules(source, "warn"),
            self.time_column,
        )
        self.stream_time = records.stream_time_columns(self.topics, self.time_column, self.delay)
        self.totals = self._totals()
        self.sentiment_models = {
            name: load_model(profile.sentiment_model)
            for name, src in directive.sources.items()
            if src.datafy.text is not None and src.datafy.text.model == "trained"
        }
        self.valid = {name: records.routed_valid(name) for name in directive.sources}
        self.silver_columns = {name: records.silver_columns(name, self.schemas[name], src.trust, self.key) for name, src in directive.sources.items()}
        self.candidates = self._candidate_columns()
        self.derived_columns = {name: self._derived_columns(name) for name in directive.sources}

    def _frame_schema(self) -> T.StructType:
        fields = []
        for source, columns in self.rule_columns.items():
            typed = {f.name: f.dataType for f in self.schemas[source].spark_schema}
            for column in columns:
                fields.append(T.StructField(prefixed(source, column), typed.get(column, T.DoubleType()), True))
        return T.StructType(fields)

    @contextmanager
    def _tables_created(self):
        """Create every table, or check its schema and properties, while the body runs: each is
        a Delta commit or a read of one's metadata, JVM work that overlaps the body's."""
        tables = {
            self.tables.bronze: records.BRONZE_SCHEMA,
            self.tables.quarantine: records.QUARANTINE_SCHEMA,
            self.tables.late: records.LATE_SCHEMA,
            self.tables.validation_results: RESULTS_SCHEMA,
            self.tables.batch_audit: records.BATCH_AUDIT_SCHEMA,
        }
        for source, path in self.tables.silver.items():
            tables[path] = records.silver_schema(self.schemas[source], self.directive.sources[source].datafy.derived_fields())
        with ThreadPoolExecutor(4, thread_name_prefix="crom-create") as pool:
            created = [pool.submit(ensure_table, self.spark, path, schema, CHECKPOINT_INTERVAL) for path, schema in tables.items()]
            yield
            for future in created:
                future.result()

    def stage(self, batch: DataFrame) -> DataFrame:
        """Kafka rows -> parsed, with rule columns, failed quarantine rules and warn flags."""
        return records.stage(self.parser(records.decode(batch)), self.stage_columns)

    def _staged(self, batch: DataFrame, constants: DataFrame) -> DataFrame:
        """`stage`, then the batch's constants and each row's watermark."""
        return with_constants(self.stage(batch), constants).withColumns(self.stream_time)

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        started = self._started = time.monotonic()
        self.phases, self.table_seconds, self.table_finished = {}, {}, {}
        before = self._stream_times_before(batch_id)
        constants = records.batch_constants(self.spark, batch_id, self._watermarks(before), before)
        # A local checkpoint cuts the large parse plan off: every write below plans in
        # milliseconds instead of re-optimising it (several seconds a batch when persisted).
        # One task per core, not per Kafka partition: every task of every job generates code
        # for the wide parsed row, which costs more than a small batch's data.
        with self._phase("parse+validate"):
            staged = self._staged(batch.coalesce(self.spark.sparkContext.defaultParallelism), constants).localCheckpoint(eager=True)
        try:
            with self._phase("parse+validate"):
                totals = staged.agg(*self.totals).first()
            counts = self._write(staged, constants, totals, self._advance(before, totals, batch_id), batch_id)
        finally:
            staged.unpersist()
        silver_done = [s for name, s in self.table_finished.items() if name.startswith("silver ")]
        # How long after the batch started its last silver commit made its records visible.
        visible = {"silver visible": max(silver_done)} if silver_done else {}
        phases = {**self.phases, **{f"table {name}": s for name, s in self.table_seconds.items()}, **visible}
        result = BatchResult(batch_id, counts, phases)
        if counts:
            log.info(
                "CROM batch %d: %s records -> silver %s, quarantine %s, late %s, duplicates %s (%.1fs)",
                batch_id, *(f"{result.total(k):,}" for k in ("records", "silver_rows", "quarantined", "late", "duplicates")),
                time.monotonic() - started,
            )  # fmt: skip
            log.debug("batch %d steps: %s; tables in parallel: %s", batch_id, describe(self.phases), describe(self.table_seconds))
        if self.on_batch is not None:
            self.on_batch(result)

    def _phase(self, name: str):
        """Time a step of the batch; the log line shows where the batch spent its time."""
        return timed(self.phases, name)

    def _totals(self) -> list[Column]:
        """Every count the batch needs, per source, plus every GE metric: one aggregation."""
        out = []
        for topic, source in self.topics.items():
            this = F.col("kafka_topic") == topic
            valid = this & records.routed_valid(source)
            out += [
                F.count(F.when(this, 1)).alias(f"records_{source}"),
                F.count(F.when(valid, 1)).alias(f"valid_{source}"),
                F.count(F.when(valid & (records.trust_level(source, self.directive.sources[source].trust) == UNTRUSTED), 1)).alias(
                    f"untrusted_{source}"
                ),
                F.count(F.when(valid & ~records.on_time(F.col(f"{source}.{self.time_column}")), 1)).alias(f"late_{source}"),
                # (partition, newest valid event time in the batch) for each partition the batch read
                F.collect_set(F.when(this, F.struct(F.col("kafka_partition"), F.col(records.BATCH_NEWEST)))).alias(f"partitions_{source}"),
            ]
        sources_by_name = {source: topic for topic, source in self.topics.items()}
        return out + self.validator.aggregates(lambda source: (F.col("kafka_topic") == sources_by_name[source]) & F.col(source).isNotNull())

    def _write(self, staged: DataFrame, constants: DataFrame, totals: Row, after: StreamTimes, batch_id: int) -> list[dict]:
        """judge, route, write, audit: the batch's counts per source, as batch_audit has them;
        `after` is the stream times after the batch."""
        records_in_batch = sum(totals[f"records_{s}"] for s in self.topics.values())
        if not records_in_batch:
            return []
        if records_in_batch <= ONE_TASK_BATCH:
            staged = staged.coalesce(1)
        results = self._judge(totals, batch_id)
        routed = self._route(staged, totals, results, batch_id)
        with self._phase("tables"):
            inserted = self._write_tables(staged, constants, routed, batch_id)
        counts = self._counts(totals, after, inserted, batch_id)
        with self._phase("audit"):  # last: it records the batch as complete
            rows = [tuple(c[f.name] for f in records.BATCH_AUDIT_SCHEMA) for c in counts]
            self.appender.append(local_frame(self.spark, rows, records.BATCH_AUDIT_SCHEMA), self.tables.batch_audit, batch_id)
        return counts

    def _judge(self, totals: Row, batch_id: int) -> list[tuple]:
        """Great Expectations' results for the batch; a failed `fail` rule stops it before anything is written."""
        results = self.validator.judge(totals, batch_id)
        stops = failures_that_stop(results)
        if stops:
            rules = ", ".join(f"{r['source']}.{r['rule']} ({r['expectation_type']})" for r in stops)
            raise CrmError(f"batch {batch_id}: 'fail' rule(s) failed: {rules}; nothing of this batch was written")
        return results

    def _route(self, batch: DataFrame, totals: Row, results: list[tuple], batch_id: int) -> Routed:
        """Which tables the batch writes, and each one's rows (lazy frames over the staged rows)."""
        writes = {"bronze": lambda: self.appender.append(records.to_bronze(batch, self.pii_keys), self.tables.bronze, batch_id)}
        if results:
            frame = local_frame(self.spark, results, RESULTS_SCHEMA)
            writes["validation results"] = lambda: self.appender.append(frame, self.tables.validation_results, batch_id)
        if any(totals[f"records_{s}"] > totals[f"valid_{s}"] for s in self.topics.values()):
            quarantine = records.to_quarantine(batch, self.topics, self.pii_keys, self.directive.id, self.directive.version)
            writes["quarantine"] = lambda: self.appender.append(quarantine, self.tables.quarantine, batch_id)
        # a late write only when a row is late: it costs a commit
        late = [records.to_late(batch, self.valid[s], self.silver_columns[s], s, self.time_column) for s in self.topics.values() if totals[f"late_{s}"]]
        if late:
            writes["late"] = lambda: self.appender.append(reduce(DataFrame.unionByName, late), self.tables.late, batch_id)
        # `_new_events` keeps the on-time rows
        silver = {s: records.to_silver(batch, self.valid[s], self.silver_columns[s]) for s in self.topics.values() if totals[f"valid_{s}"]}
        return Routed(writes, silver)

    def _write_tables(self, batch: DataFrame, constants: DataFrame, routed: Routed, batch_id: int) -> Counter:
        """Every table of the batch at once, the audit aside. Each write is a few small Spark jobs
        and a Delta commit whose cost hardly depends on the data; meanwhile one check for every
        source finds the new rows, so that each silver write is a single job."""
        with ThreadPoolExecutor(len(routed.writes) + len(routed.silver), thread_name_prefix="crom-write") as pool:
            # Inheriting the batch thread's job group lets stopping the query cancel these jobs too.
            write_table = inheritable_thread_target(self._timed)
            running = {name: pool.submit(write_table, name, write) for name, write in routed.writes.items()}
            new, new_rows = self._new_events(batch, constants, batch_id) if routed.silver else (None, None)
            for source, rows in routed.silver.items():
                keys = self.spark.createDataFrame(new_rows.filter(pc.equal(new_rows["source"], source)).select(["kafka_partition", "kafka_offset"]))
                write = lambda rows=rows, keys=keys, source=source: self._write_silver(rows, keys, source, batch_id)
                running[f"silver {source}"] = pool.submit(write_table, f"silver {source}", write)
        for future in running.values():
            future.result()  # the first failure, if any, raises here
        if new is not None:
            self.seen_events.add(batch_id, new)
        return Counter(new_rows["source"].to_pylist()) if new_rows is not None else Counter()

    def _counts(self, totals: Row, after: StreamTimes, inserted: Counter, batch_id: int) -> list[dict]:
        """One batch_audit row per source."""
        counts, watermarks = [], self._watermarks(after)
        for source in self.topics.values():
            valid, late = totals[f"valid_{source}"], totals[f"late_{source}"]
            counts.append(
                dict(
                    batch_id=batch_id,
                    source=source,
                    records=totals[f"records_{source}"],
                    silver_rows=inserted[source],
                    quarantined=totals[f"records_{source}"] - valid,
                    untrusted=totals[f"untrusted_{source}"],
                    max_event_time=max(_known(after, source), default=None),
                    watermark=watermarks[source],
                    stream_times=after.get(source, {}),
                    late=late,
                    duplicates=valid - late - inserted[source],
                    finished_at=datetime.now(timezone.utc),
                )
            )
        return counts

    def _timed(self, table: str, write):
        try:
            with timed(self.table_seconds, table):
                return write()
        finally:
            self.table_finished[table] = time.monotonic() - self._started

    def _new_events(self, batch: DataFrame, constants: DataFrame, batch_id: int) -> tuple[DataFrame, pa.Table]:
        """(source, event_id, kafka_partition, kafka_offset, event_micros) of the rows each
        source's silver table gets: valid, on time, and new; checkpointed, and collected.
        `batch` is the staged rows with the batch's `constants`."""
        with timed(self.phases, "new ids"):
            where, columns = self.candidates
            # both joins read it: the wide staged rows are scanned once, not twice
            candidates = batch.where(where).select(*columns).localCheckpoint(eager=True)
            # Computed once: the silver writes and the counts read the collected rows, every later batch's check the frame.
            new = new_events(candidates, self.seen_events.before(batch_id, constants)).localCheckpoint(eager=True)
            return new, new.toArrow()

    def _candidate_columns(self) -> tuple[Column, list[Column]]:
        """Which staged rows may be new to silver (valid and on time), and their (source,
        event_id, kafka_partition, kafka_offset, event_micros): one scan of the staged batch for
        every source, not one per source, as each task over the wide staged row costs more than its data."""
        sources = list(self.directive.sources)
        on_time = {s: self.valid[s] & records.on_time(F.col(f"{s}.{self.time_column}")) for s in sources}
        of_source = lambda value: reduce(lambda other, s: F.when(on_time[s], value(s)).otherwise(other), sources, F.lit(None))  # noqa: E731
        return reduce(Column.__or__, on_time.values()), [
            of_source(F.lit).cast("string").alias("source"),
            of_source(lambda s: F.col(f"{s}.event_id")).alias("event_id"),
            F.col("kafka_partition"),
            F.col("kafka_offset"),
            of_source(lambda s: event_micros(F.col(f"{s}.{self.time_column}"))).alias("event_micros"),
        ]

    def _write_silver(self, rows: DataFrame, keys: DataFrame, source: str, batch_id: int) -> None:
        """The source's rows whose Kafka partition and offset are among `keys`, datafied, to its silver table."""
        kept = rows.join(F.broadcast(keys), ["kafka_partition", "kafka_offset"], "left_semi")
        self.appender.append(self._datafied(kept, source), self.tables.silver[source], batch_id)

    def _stream_times_before(self, batch_id: int) -> StreamTimes:
        """Per source and Kafka partition read so far, its stream time before this batch (None while
        it had no valid row).

        They come from batch_audit's rows of earlier batch ids, so a replayed batch gets the same
        watermarks; they are kept in memory between batches.
        """
        last, times = self._stream_times
        if last == batch_id - 1:
            return times
        rows = (
            self.spark.read.format("delta").load(self.tables.batch_audit)
            .where(F.col("batch_id") < batch_id)
            .select("source", F.explode("stream_times").alias("partition", "time"))
            .groupBy("source", "partition").agg(F.max("time").alias("time"))
            .collect()
        )  # a row per partition, read only after a restart
        times: StreamTimes = {}
        for r in rows:
            times.setdefault(r["source"], {})[r["partition"]] = r["time"]
        return times

    def _watermarks(self, times: StreamTimes) -> dict[str, datetime | None]:
        """Per source: its oldest partition's stream time minus the delay."""
        marks = {s: _known(times, s) for s in self.topics.values()}
        return {s: min(t) - self.delay if t else None for s, t in marks.items()}

    def _advance(self, before: StreamTimes, totals: Row, batch_id: int) -> StreamTimes:
        """The stream times after the batch: each partition it read moves to its newest valid event
        time, if newer; a partition read for the first time starts at its source's oldest."""
        after = {s: dict(times) for s, times in before.items()}
        for source in self.topics.values():
            known = after.setdefault(source, {})
            floor = min(_known(after, source), default=None)
            for partition, newest in totals[f"partitions_{source}"]:
                start = known[partition] if partition in known else floor
                known[partition] = max((t for t in (start, newest) if t is not None), default=None)
        self._stream_times = (batch_id, after)
        return after

    def _datafied(self, rows: DataFrame, source: str) -> DataFrame:
        """New silver rows plus the source's datafied columns, in Datafy.derived_fields' order;
        only rows that are kept are mined."""
        datafy = self.directive.sources[source].datafy
        if datafy.logs is not None:
            rows = mine_templates(rows, datafy.logs.field, datafy.logs.layout, self.tables.log_templates_state(source))
        if source in self.sentiment_models:
            rows = predict_sentiment(self.sentiment_models[source], rows, datafy.text.field)
        derived = self.derived_columns[source]
        return with_derived(rows, derived) if derived else rows

    def _derived_columns(self, source: str) -> list[Column]:
        """The source's datafied columns that are expressions over its row (text, orders, web, lifecycle),
        built once per job: building them takes thousands of calls into the JVM."""
        datafy, columns = self.directive.sources[source].datafy, []
        if datafy.text is not None:
            columns += text_columns(datafy.text, self.key, predicted=source in self.sentiment_models)
        if datafy.orders is not None:
            o = datafy.orders
            rates = read_rates(REPO_ROOT / o.rates)
            columns += order_columns(rates, o.amount, o.currency, o.items, o.promotion, self.time_column)
        if datafy.web is not None:
            w = datafy.web
            utm = {"source": w.utm_source, "medium": w.utm_medium, "campaign": w.utm_campaign}
            columns += web_columns(w.page, w.referrer, w.user_agent, utm, w.site_hosts)
        if datafy.lifecycle is not None:
            columns += lifecycle_columns(datafy.lifecycle.opened, datafy.lifecycle.target_hours, self.time_column)
        return columns


def _refuse_wiped_checkpoint(writer: BatchWriter, checkpoint: str) -> None:
    """Refuse a checkpoint that is behind the tables, e.g. wiped: its batch ids would restart
    below ones already written, and every write would be skipped as a replay.

    The offsets log names every batch the checkpoint has started, committed or not; a batch
    the tables hold but the log does not was written under another checkpoint.
    """
    offsets = Path(checkpoint) / "offsets"
    started = max((int(f.name) for f in offsets.iterdir() if f.name.isdigit()), default=-1) if offsets.is_dir() else -1
    last = writer.appender.last_batch(writer.tables.bronze)
    if last > started:
        state = "is empty" if started < 0 else f"has started batches only up to {started}"
        raise CrmError(
            f"checkpoint {checkpoint} {state} but {writer.tables.bronze} already holds batches up to {last} "
            f"from {APP_ID}; restore the checkpoint, or move the CROM tables away to re-ingest from scratch"
        )


QUERY_NAME = "crom_ingest"


def start_ingest(
    spark: SparkSession,
    profile: Profile,
    operational: Loaded,
    schemas: dict[str, EventSchema],
    until_caught_up: bool,
    checkpoint: str | None = None,
) -> StreamingQuery:
    """Start the CROM query; the caller waits on it."""
    return start_query(spark, profile, BatchWriter(spark, profile, operational, schemas), until_caught_up, checkpoint)


def start_query(
    spark: SparkSession, profile: Profile, writer: BatchWriter, until_caught_up: bool, checkpoint: str | None = None
) -> StreamingQuery:
    """The CROM query over the writer's topics, each micro-batch written by `writer`."""
    topics = ",".join(writer.topics)
    kafka = (
        spark.readStream.format("kafka")
        .options(**profile.kafka.spark_options())
        .option("subscribe", topics)
        .option("startingOffsets", profile.ingest.starting_offsets)
        .option("maxOffsetsPerTrigger", profile.ingest.max_offsets_per_trigger)
        .option("failOnDataLoss", "true")
        .load()
    )
    checkpoint = checkpoint or profile.checkpoint_path("crom_ingest")
    _refuse_wiped_checkpoint(writer, checkpoint)
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    stream = kafka.writeStream.queryName(QUERY_NAME).foreachBatch(writer).option("checkpointLocation", checkpoint)
    if until_caught_up:
        stream = stream.trigger(availableNow=True)
    else:
        stream = stream.trigger(processingTime=profile.ingest.trigger_interval)
    return stream.start()


# Spark 4.1.1's Kafka source throws this while reporting progress for the first batch after
# a restart when that batch is a replay (SPARK-55271, fixed after 4.1.1). The batch and its
# commit are already done by then, so starting the query again is safe.
_SPARK_55271 = 'Cannot invoke "scala.collection.IterableOps.map(scala.Function1)" because the return value of "scala.Option.get()" is null'


def query_failure(exc) -> str:
    """The line that says why a streaming query failed: our own error if the batch raised one."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "CrmError:" in line:
            return line.split("CrmError:", 1)[1].strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run_ingest(
    spark: SparkSession,
    profile: Profile,
    operational: Loaded,
    schemas: dict[str, EventSchema],
    until_caught_up: bool,
    checkpoint: str | None = None,
) -> None:
    """Run the CROM query until it is caught up (or stopped); CrmError with the reason if it fails."""
    for attempt in (1, 2):
        listener = ProgressListener(QUERY_NAME, profile.checkpoints / "progress")
        writer = BatchWriter(spark, profile, operational, schemas, on_batch=listener.add)
        spark.streams.addListener(listener)
        try:
            query = start_query(spark, profile, writer, until_caught_up, checkpoint)
        except BaseException:
            spark.streams.removeListener(listener)
            raise
        try:
            query.awaitTermination()
        except KeyboardInterrupt:
            log.info("stopping the query")
            query.stop()
        except Exception:  # noqa: BLE001 - the query's own exception is read just below
            pass
        finally:
            listener.close()  # the last batch's progress arrives after awaitTermination returns
            spark.streams.removeListener(listener)
            writer.seen_events.release()
        failure = query.exception()
        if failure is None:
            return
        if attempt == 1 and _SPARK_55271 in str(failure):
            log.warning("restarting once after Spark bug SPARK-55271 (progress metrics of a replayed batch)")
            continue
        raise CrmError(f"ingest query failed: {query_failure(failure)}")
