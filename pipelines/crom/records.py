"""Shapes of CROM's tables, and the pure transforms that produce them from Kafka records."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.privacy import hmac_sha256, mask_payload, normalise_identifier
from pipelines.schemas import EventSchema

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
        T.StructField("event_id", T.StringType(), True),
        T.StructField("payload", T.StringType(), True),
        T.StructField("payload_bytes", T.IntegerType(), True),
        T.StructField("directive_id", T.StringType(), True),
        T.StructField("directive_version", T.IntegerType(), True),
        *KAFKA_METADATA,
    ]
)

BATCH_AUDIT_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("records", T.LongType(), False),
        T.StructField("silver_rows", T.LongType(), False),
        T.StructField("duplicates", T.LongType(), False),
        T.StructField("quarantined", T.LongType(), False),
        T.StructField("finished_at", T.TimestampType(), False),
    ]
)


def hashed_name(field: str) -> str:
    return f"{field}_hmac"


def silver_schema(schema: EventSchema) -> T.StructType:
    fields = [
        T.StructField(hashed_name(f.name) if f.pii else f.name, T.StringType() if f.pii else f.spark_type, True)
        for f in schema.fields
    ]
    return T.StructType(fields + KAFKA_METADATA)


def decode(kafka: DataFrame) -> DataFrame:
    """Kafka source rows -> string key/value plus Kafka metadata."""
    return kafka.select(
        F.col("key").cast("string").alias("key"),
        F.col("value").cast("string").alias("value"),
        F.length(F.col("value")).cast("int").alias("payload_bytes"),
        F.col("topic").alias("kafka_topic"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
        F.col("timestamp").alias("kafka_timestamp"),
    )


def _metadata(batch_id: int) -> list[Column]:
    return [
        F.col("kafka_topic"),
        F.col("kafka_partition"),
        F.col("kafka_offset"),
        F.col("kafka_timestamp"),
        F.lit(batch_id).cast("long").alias("batch_id"),
        F.current_timestamp().alias("ingested_at"),
    ]


def to_bronze(decoded: DataFrame, pii_keys: list[str], batch_id: int) -> DataFrame:
    """Every record as received, personal data masked in the payload."""
    return decoded.select(
        F.col("key"),
        mask_payload(F.col("value"), pii_keys).alias("payload"),
        F.col("payload_bytes"),
        *_metadata(batch_id),
    )


def to_silver(parsed: DataFrame, source: str, schema: EventSchema, key: bytes, batch_id: int) -> DataFrame:
    """Valid rows of one source -> silver columns; identifiers become keyed HMAC pseudonyms."""
    event = lambda name: F.col(f"{source}.{name}")  # noqa: E731
    columns = [
        hmac_sha256(normalise_identifier(event(f.name)), key).alias(hashed_name(f.name)) if f.pii else event(f.name).alias(f.name)
        for f in schema.fields
    ]
    return parsed.where(F.col(source).isNotNull()).select(*columns, *_metadata(batch_id))


def to_quarantine(
    parsed: DataFrame, topics: dict[str, str], pii_keys: list[str], directive_id: str, directive_version: int, batch_id: int
) -> DataFrame:
    """Rejected rows with their source, reason and masked payload."""
    source = F.lit(None).cast("string")
    for topic, name in topics.items():
        source = F.when(F.col("kafka_topic") == topic, F.lit(name)).otherwise(source)
    return parsed.where(F.col("reason_code").isNotNull()).select(
        source.alias("source"),
        F.col("reason_code"),
        F.col("reason_detail"),
        F.get_json_object(F.col("value"), "$.event_id").alias("event_id"),
        mask_payload(F.col("value"), pii_keys).alias("payload"),
        F.col("payload_bytes"),
        F.lit(directive_id).alias("directive_id"),
        F.lit(directive_version).alias("directive_version"),
        *_metadata(batch_id),
    )
