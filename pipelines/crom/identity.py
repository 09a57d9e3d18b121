"""Identity resolution: every customer key seen in silver -> one resolved customer id.

Keys are the fields a schema marks with `x-crm-key` (email, phone, cookie, device, handle),
already normalised and pseudonymised in silver (phones in E.164, emails case-folded, then a
keyed HMAC), and the customer id's own pseudonym (key type `customer`): what the upper
layers publish on Kafka instead of the id, and what the operational CRM maps back here. A key is resolved when every event that carries it next to a customer id names
the same customer. A key claimed by two or more customers is a conflict: it keeps its
claimants, resolves to no one and is counted; customers are never merged silently. A key
never seen with a customer id (an anonymous cookie) is kept, unresolved.

The map is a pure function of the silver tables (sets, sorted), so it is the same on every
run and in every partitioning; pipelines.crom.resolve rebuilds it when silver changes.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.privacy import customer_pseudonym
from pipelines.schemas import EventSchema, hashed_name


def key_links(silver: DataFrame, schema: EventSchema, source: str, time_column: str, key: bytes) -> DataFrame | None:
    """One row per (event, key it carries): key_type, key_hash, customer_id (or null), event time, source."""
    customer = next((f.name for f in schema.fields if f.identity == "customer"), None)
    keys = [(f.identity, F.col(hashed_name(f.name) if f.pii == "hmac" else f.name)) for f in schema.fields if f.identity not in (None, "customer")]
    if customer:
        keys.append(("customer", customer_pseudonym(F.col(customer), key)))
    if not keys:
        return None
    carried = F.explode(F.array(*[F.struct(F.lit(kind).alias("key_type"), value.alias("key_hash")) for kind, value in keys]))
    return (
        silver.select(
            carried.alias("key"),
            (F.col(customer) if customer else F.lit(None).cast("string")).alias("customer_id"),
            F.col(time_column).alias("event_time"),
            F.lit(source).alias("source"),
        )
        .select("key.*", "customer_id", "event_time", "source")
        .where(F.col("key_hash").isNotNull())
    )


def resolve_identities(links: DataFrame) -> DataFrame:
    """Key links -> the identity map: one row per key with its resolved customer, claimants and conflict flag."""
    grouped = links.groupBy("key_type", "key_hash").agg(
        F.sort_array(F.collect_set("customer_id")).alias("claimants"),
        F.count(F.lit(1)).alias("events"),
        F.min("event_time").alias("first_seen"),
        F.max("event_time").alias("last_seen"),
        F.sort_array(F.collect_set("source")).alias("sources"),
    )
    return grouped.select(
        "key_type",
        "key_hash",
        F.when(F.size("claimants") == 1, F.col("claimants")[0]).alias("resolved_customer_id"),
        "claimants",
        (F.size("claimants") > 1).alias("conflict"),
        "events",
        "first_seen",
        "last_seen",
        "sources",
    )
