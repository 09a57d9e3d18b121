"""CROM's cross-batch derivations, rebuilt from silver after ingest: the identity map and web sessions.

Both need every batch at once (all the customers that claim a key, all of a visitor's pauses),
so they are not computed inside the streaming query. Each is a pure function of silver,
rebuilt only when the silver tables it reads have a new Delta version, and written whole, so
a rerun or a retry after a crash gives the same table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crom.identity import key_links, resolve_identities
from pipelines.crom.web import sessionise, sessions
from pipelines.directives import Loaded
from pipelines.errors import CrmError
from pipelines.lakehouse import overwrite_unless_current, table_version
from pipelines.privacy import hmac_key
from pipelines.schemas import EventSchema, hashed_name
from pipelines.tables import CromTables

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityRun:
    table: str
    keys: int
    resolved: int
    anonymous: int
    conflicts: dict[str, int]  # key type -> keys claimed by more than one customer
    skipped: bool


@dataclass(frozen=True)
class SessionsRun:
    table: str
    sessions: int
    visitors: int
    bot_sessions: int
    skipped: bool


def _customer_key_sources(operational: Loaded, schemas: dict[str, EventSchema]) -> list[str]:
    return [s for s in operational.directive.sources if any(f.identity is not None for f in schemas[s].fields)]


def run_identities(spark: SparkSession, profile: Profile, operational: Loaded, schemas: dict[str, EventSchema]) -> IdentityRun:
    """Rebuild crom/identity_map from every silver table with customer keys, if silver changed."""
    directive = operational.directive
    tables = CromTables.of(profile, list(directive.sources))
    sources = _customer_key_sources(operational, schemas)
    if not sources:
        raise CrmError(f"{operational.path}: no source's schema marks a customer key (x-crm-key), so there is nothing to resolve")
    source_version = sum(table_version(tables.silver[s]) for s in sources)  # versions only grow

    def identity_map() -> DataFrame:
        read = lambda s: spark.read.format("delta").load(tables.silver[s])  # noqa: E731
        key = hmac_key(profile.cache)
        links = [key_links(read(s), schemas[s], s, directive.watermark.column, key) for s in sources]
        return resolve_identities(reduce(DataFrame.unionByName, links))

    rebuilt = overwrite_unless_current(spark, tables.identity_map, source_version, identity_map)
    rows = (
        spark.read.format("delta").load(tables.identity_map)
        .groupBy("key_type")
        .agg(
            F.count(F.lit(1)).alias("keys"),
            F.count("resolved_customer_id").alias("resolved"),
            F.count(F.when(F.size("claimants") == 0, 1)).alias("anonymous"),
            F.count(F.when(F.col("conflict"), 1)).alias("conflicts"),
        )
        .collect()
    )  # one row per key type
    total = lambda name: sum(r[name] for r in rows)  # noqa: E731
    run = IdentityRun(
        tables.identity_map, total("keys"), total("resolved"), total("anonymous"),
        {r["key_type"]: r["conflicts"] for r in rows if r["conflicts"]}, skipped=not rebuilt,
    )  # fmt: skip
    if run.conflicts:
        log.warning("identity map: keys claimed by more than one customer, left unresolved: %s", run.conflicts)
    return run


def run_web_sessions(spark: SparkSession, profile: Profile, operational: Loaded, schemas: dict[str, EventSchema]) -> list[SessionsRun]:
    """Rebuild crom/web_sessions_<source> for each source whose datafy.web names a visitor, after the identity map."""
    directive = operational.directive
    tables = CromTables.of(profile, list(directive.sources))
    time_column = directive.watermark.column
    runs = []
    for source, src in directive.sources.items():
        web = src.datafy.web
        if web is None or web.visitor is None:
            continue
        visitor_field = schemas[source].field(web.visitor)
        visitor = hashed_name(web.visitor) if visitor_field.pii == "hmac" else web.visitor
        out = tables.web_sessions[source]
        identities = table_version(tables.identity_map) if visitor_field.identity else 0

        def build(source=source, visitor=visitor, gap=web.session_gap_minutes, kind=visitor_field.identity) -> DataFrame:
            events = spark.read.format("delta").load(tables.silver[source]).select(visitor, time_column, "event_id", "page_path", "is_bot")
            per_session = sessions(sessionise(events, visitor, time_column, "event_id", gap), visitor, time_column)
            if kind is None:
                return per_session.withColumn("resolved_customer_id", F.lit(None).cast("string"))
            customers = (
                spark.read.format("delta").load(tables.identity_map)
                .where(F.col("key_type") == kind)
                .select(F.col("key_hash").alias(visitor), "resolved_customer_id")
            )
            return per_session.join(customers, visitor, "left")

        rebuilt = overwrite_unless_current(spark, out, table_version(tables.silver[source]) + identities, build)
        totals = (
            spark.read.format("delta").load(out)
            .agg(F.count(F.lit(1)), F.count_distinct(visitor), F.count(F.when(F.col("is_bot"), 1)))
            .first()
        )
        runs.append(SessionsRun(out, totals[0], totals[1], totals[2], skipped=not rebuilt))
    return runs
