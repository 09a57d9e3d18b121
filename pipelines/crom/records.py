"""Shapes of CROM's tables, and the pure transforms that produce them from Kafka records."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.crom.parse import EXPECTATION_FAILED
from pipelines.directives import UNTRUSTED, Trust
from pipelines.privacy import card_token, hmac_sha256, mask_payload, normalise_identifier, normalise_phone, scrub_text
from pipelines.schemas import EventSchema, FieldSpec, card_names, hashed_name
from pipelines.spark import local_frame

KAFKA_METADATA = [
    T.StructField("kafka_topic", T.StringType(), True),
    T.StructField("kafka_partition", T.IntegerType(), True),
    T.StructField("kafka_offset", T.LongType(), True),
    T.StructField("kafka_timestamp", T.TimestampType(), True),
    T.StructField("batch_id", T.LongType(), True),
    T.StructField("ingested_at", T.TimestampType(), True),
]

BRONZE_SCHEMA = T.StructType(
    [
        T.StructField("key", T.StringType(), True),
        T.StructField("payload", T.StringType(), True),
        T.StructField("payload_bytes", T.IntegerType(), True),
        *KAFKA_METADATA,
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType(), True),
        T.StructField("reason_code", T.StringType(), False),
        T.StructField("reason_detail", T.StringType(), True),
        T.StructField("failed_rules", T.ArrayType(T.StringType()), True),
        T.StructField("event_id", T.StringType(), True),
        T.StructField("payload", T.StringType(), True),
        T.StructField("payload_bytes", T.IntegerType(), True),
        T.StructField("directive_id", T.StringType(), True),
        T.StructField("directive_version", T.IntegerType(), True),
        *KAFKA_METADATA,
    ]
)

LATE_SCHEMA = T.StructType(
    [
        T.StructField("source", T.StringType(), False),
        T.StructField("event_id", T.StringType(), True),
        T.StructField("event_time", T.TimestampType(), True),
        T.StructField("watermark", T.TimestampType(), True),
        T.StructField("event", T.StringType(), True),  # the silver row as JSON, identifiers keyed
        *KAFKA_METADATA,
    ]
)

PARTITION_TIMES = T.MapType(T.IntegerType(), T.TimestampType(), True)  # Kafka partition -> stream time
BATCH_AUDIT_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("records", T.LongType(), False),
        T.StructField("silver_rows", T.LongType(), False),
        T.StructField("duplicates", T.LongType(), False),
        T.StructField("quarantined", T.LongType(), False),
        T.StructField("late", T.LongType(), False),
        T.StructField("untrusted", T.LongType(), False),
        T.StructField("max_event_time", T.TimestampType(), True),
        T.StructField("watermark", T.TimestampType(), True),
        T.StructField("stream_times", PARTITION_TIMES, True),  # after the batch; CROM restarts from them
        T.StructField("finished_at", T.TimestampType(), False),
    ]
)

# Per-row columns the batch writer adds before routing (see `stage`).
QUARANTINE_RULES = "_quarantine_rules"
WARN_FLAGS = "_warn_flags"
# The batch's constants, joined to its rows (see `batch_constants`): each source's watermark,
# and the stream time of each Kafka partition of each source, as they were before the batch.
WATERMARKS = "_watermarks"
STREAM_TIMES = "_stream_times"
BATCH_CONSTANTS_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType(), False),
        T.StructField("ingested_at", T.TimestampType(), False),
        T.StructField(WATERMARKS, T.MapType(T.StringType(), T.TimestampType(), True), False),
        T.StructField(STREAM_TIMES, T.MapType(T.StringType(), PARTITION_TIMES, True), False),
    ]
)
# Per-row columns of the stream-time step (see `stream_time_columns`).
WATERMARK = "_watermark"
BATCH_NEWEST = "_batch_newest"


def silver_schema(schema: EventSchema, derived: tuple[T.StructField, ...] = ()) -> T.StructType:
    """The silver table of a source; `derived` are datafied columns (e.g. log templates), last."""
    as_stored = {
        "hmac": lambda f: [T.StructField(hashed_name(f.name), T.StringType(), True)],
        "card": lambda f: [T.StructField(name, T.StringType(), True) for name in card_names(f.name)],
    }
    fields = [c for f in schema.fields for c in as_stored.get(f.pii, lambda f: [T.StructField(f.name, f.spark_type, True)])(f)]
    extra = [
        T.StructField("trust_level", T.StringType(), True),
        T.StructField("warn_flags", T.ArrayType(T.StringType()), True),
    ]
    return T.StructType(fields + extra + KAFKA_METADATA + list(derived))


def decode(kafka: DataFrame) -> DataFrame:
    """Kafka source rows -> string key/value plus Kafka metadata.

    Casting bytes to string replaces invalid UTF-8 silently, so validity is kept aside.
    """
    return kafka.select(
        F.col("key").cast("string").alias("key"),
        F.col("value").cast("string").alias("value"),
        F.coalesce(F.is_valid_utf8(F.col("value")), F.lit(True)).alias("value_utf8"),
        F.length(F.col("value")).cast("int").alias("payload_bytes"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
    )


def batch_constants(
    spark: SparkSession, batch_id: int, watermarks: dict[str, datetime | None], stream_times: dict[str, dict[int, datetime | None]]
) -> DataFrame:
    """The batch's id, when it was ingested, each source's watermark and its partitions' stream
    times, as one row to join to the batch's rows (`pipelines.spark.with_constants`) rather
    than to write in as literals."""
    return local_frame(spark, [(batch_id, datetime.now(timezone.utc), watermarks, stream_times)], BATCH_CONSTANTS_SCHEMA)


def stream_time_columns(topics: dict[str, str], time_column: str, delay: timedelta) -> dict[str, Column]:
    """Each staged row's watermark, and the newest valid event time of its Kafka partition in the
    batch, to build once per job; over staged rows joined to the batch's constants.

    A Kafka partition's stream time is the newest event time of the valid rows before it in the
    partition, this batch's and earlier batches' (Kafka Streams' rule); a row older than its
    partition's stream time minus the delay is late. Lateness so follows each partition's own
    order, wherever batches split it. A partition no batch has read yet starts at its source's
    watermark, so every row on time is at or after it (the duplicate check looks that far back).
    """
    source = _source_of(topics)
    valid_time = F.coalesce(*[F.when(routed_valid(name), F.col(f"{name}.{time_column}")) for name in topics.values()])
    partition = Window.partitionBy("kafka_topic", "kafka_partition")
    before = F.max(valid_time).over(partition.orderBy("kafka_offset").rowsBetween(Window.unboundedPreceding, -1))
    known = F.col(STREAM_TIMES)[source]
    start = F.when(F.map_contains_key(known, F.col("kafka_partition")), known[F.col("kafka_partition")] - F.lit(delay))
    return {
        WATERMARK: F.greatest(before - F.lit(delay), start.otherwise(F.col(WATERMARKS)[source])),
        BATCH_NEWEST: F.max(valid_time).over(partition),
    }


def _source_of(topics: dict[str, str]) -> Column:
    """The name of the source whose topic a row came from (null for an unknown topic)."""
    source = F.lit(None).cast("string")
    for topic, name in topics.items():
        source = F.when(F.col("kafka_topic") == topic, F.lit(name)).otherwise(source)
    return source


def on_time(event_time: Column) -> Column:
    """Whether a staged row's event is at or after its watermark (always, before there is one)."""
    return F.col(WATERMARK).isNull() | (event_time >= F.col(WATERMARK))


def _metadata() -> list[Column]:
    """Kafka's columns, and the batch's id and ingestion time from its constants."""
    return [F.col(f.name) for f in KAFKA_METADATA]


def to_bronze(batch: DataFrame, pii_keys: list[str]) -> DataFrame:
    """Every record as received, personal data masked in the payload; `batch` has the batch's constants."""
    return batch.select(
        F.col("key"),
        mask_payload(F.col("value"), pii_keys).alias("payload"),
        F.col("payload_bytes"),
        *_metadata(),
    )


def derived_column(source: str, name: str, time_column: str) -> Column:
    """The columns rules may name besides the schema's (see directives.DERIVED_COLUMNS)."""
    if name == "event_lag_seconds":  # how long the event took to reach Kafka: freshness
        return (F.unix_micros(F.col("kafka_timestamp")) - F.unix_micros(F.col(f"{source}.{time_column}"))) / F.lit(1e6)
    return F.col(f"{source}.{name}")


def stage_columns(
    topics: dict[str, str], rule_columns: dict[str, list[str]], quarantine_rules, warn_flags, time_column: str
) -> tuple[list[Column], dict[str, Column]]:
    """What routing needs, as Columns built once per job (see `stage`): each rule's columns
    under `<source>__<column>`, then the quarantine rules a row fails and its warn flags
    (rule names, plus any accepted schema drift).

    `quarantine_rules(source)` and `warn_flags(source)` give array<string> Columns over the
    prefixed columns; `topics` maps topic -> source.
    """
    prefixed = [
        derived_column(source, column, time_column).alias(f"{source}__{column}")
        for source, columns in rule_columns.items()
        for column in columns
    ]
    failed = F.lit(None).cast("array<string>")
    warned = F.lit(None).cast("array<string>")
    for topic, source in topics.items():
        valid = (F.col("kafka_topic") == topic) & F.col(source).isNotNull()
        drift = F.when(F.col("drift").isNotNull(), F.array(F.concat(F.lit("drift:"), F.col("drift")))).otherwise(F.array())
        failed = F.when(valid, quarantine_rules(source)).otherwise(failed)
        warned = F.when(valid, F.concat(warn_flags(source), drift.cast("array<string>"))).otherwise(warned)
    return prefixed, {QUARANTINE_RULES: failed, WARN_FLAGS: warned}


def stage(parsed: DataFrame, columns: tuple[list[Column], dict[str, Column]]) -> DataFrame:
    prefixed, flags = columns
    return parsed.select("*", *prefixed).withColumns(flags)


def routed_valid(source: str) -> Column:
    """Rows of `source` that parsed and pass every quarantine rule."""
    return F.col(source).isNotNull() & (F.size(F.col(QUARANTINE_RULES)) == 0)


def trust_level(source: str, trust: Trust) -> Column:
    return F.when(F.col(f"{source}.producer").isin(trust.producers), F.lit(trust.level)).otherwise(F.lit(UNTRUSTED))


def to_silver(batch: DataFrame, valid: Column, columns: list[Column]) -> DataFrame:
    """A source's valid rows (`routed_valid`) -> its `silver_columns`; `batch` is the staged rows with the batch's constants."""
    return batch.where(valid).select(*columns)


def silver_columns(source: str, schema: EventSchema, trust: Trust, key: bytes) -> list[Column]:
    """A source's silver columns over staged rows, to build once per job: identifiers become
    keyed HMAC pseudonyms, card numbers a token and their last four digits, and free text
    declared `scrub` loses its emails, phones and card numbers."""
    event = lambda name: F.col(f"{source}.{name}")  # noqa: E731
    treated = {
        "hmac": lambda f: [hmac_sha256(_identifier(f, event), key).alias(hashed_name(f.name))],
        "scrub": lambda f: [scrub_text(event(f.name)).alias(f.name)],
        "card": lambda f: [c.alias(name) for c, name in zip(card_token(event(f.name), key), card_names(f.name))],
        None: lambda f: [event(f.name).alias(f.name)],
    }
    return [
        *(c for f in schema.fields for c in treated[f.pii](f)),
        trust_level(source, trust).alias("trust_level"),
        F.col(WARN_FLAGS).alias("warn_flags"),
        *_metadata(),
    ]


def _identifier(field: FieldSpec, event) -> Column:
    """An identifier as it is hashed: phones in E.164 (so every way of writing one links), others case-folded."""
    if field.identity == "phone":
        return normalise_phone(event(field.name), event(field.phone_region) if field.phone_region else None)
    return normalise_identifier(event(field.name))


def to_late(batch: DataFrame, valid: Column, columns: list[Column], source: str, time_column: str) -> DataFrame:
    """A source's valid rows older than their watermark, silver-shaped (`silver_columns`) and kept
    whole as JSON in the late table; `batch` is the staged rows."""
    event_time = F.col(f"{source}.{time_column}")
    rows = batch.where(valid & ~on_time(event_time)).select(*columns, F.col(WATERMARK))
    metadata = {f.name for f in KAFKA_METADATA}
    data = [c for c in rows.columns if c not in metadata and c != WATERMARK]
    return rows.select(
        F.lit(source).alias("source"),
        F.col("event_id"),
        F.col(time_column).cast("timestamp").alias("event_time"),
        F.col(WATERMARK).alias("watermark"),
        F.to_json(F.struct(*data)).alias("event"),
        *_metadata(),
    )


def to_quarantine(batch: DataFrame, topics: dict[str, str], pii_keys: list[str], directive_id: str, directive_version: int) -> DataFrame:
    """Rejected rows, and rows failing a quarantine rule, with source, reasons and masked payload;
    `batch` is the staged rows with the batch's constants."""
    failed = F.coalesce(F.col(QUARANTINE_RULES), F.array().cast("array<string>"))
    return batch.where(F.col("reason_code").isNotNull() | (F.size(failed) > 0)).select(
        _source_of(topics).alias("source"),
        F.coalesce(F.col("reason_code"), F.lit(EXPECTATION_FAILED)).alias("reason_code"),
        F.coalesce(F.col("reason_detail"), F.array_join(failed, ",")).alias("reason_detail"),
        F.when(F.size(failed) > 0, failed).alias("failed_rules"),
        F.get_json_object(F.col("value"), "$.event_id").alias("event_id"),
        mask_payload(F.col("value"), pii_keys).alias("payload"),
        F.col("payload_bytes"),
        F.lit(directive_id).alias("directive_id"),
        F.lit(directive_version).alias("directive_version"),
        *_metadata(),
    )
