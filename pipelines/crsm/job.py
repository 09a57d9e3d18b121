"""The CRSM job: the functional table -> a strategic KPI table, one snapshot per input version.

Each run appends the KPIs computed from one version of the functional table; rerunning on
the same version is skipped (see BatchAppender), so nothing is counted twice. A directive
with a purchase model also gets `<table>_customers` (each customer's p_alive, expected
purchases and spend, and lifetime value) and `<table>_model` (the fitted parameters and the
holdout check, one row per version). A directive with `validity` gets `<table>_validity` (a
verdict per KPI and V, see pipelines.crsm.validity) and `<table>_validity_curves`; one with
`recommendations` publishes them to its Kafka topic and `<table>_recommendations`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crsm.kpis import kpi_rows
from pipelines.crsm.purchase_model import fit_frame, fit_purchase_model, score_customers, unscored
from pipelines.crsm.recommend import publish, recommend
from pipelines.crsm.validity import CHECK_SCHEMA, CURVE_SCHEMA, assess, kpi_values_by
from pipelines.directives import DirectiveSet, Loaded
from pipelines.errors import CrmError
from pipelines.lakehouse import BatchAppender, overwrite_unless_current
from pipelines.privacy import hmac_key
from pipelines.tables import functional_table, strategic_table
from pipelines.topics import ensure_topics

log = logging.getLogger(__name__)
APP_ID = "crsm-kpis"
MODEL_APP_ID = "crsm-purchase-model"
VALIDITY_APP_ID = "crsm-validity"
RECOMMENDATIONS_APP_ID = "crsm-recommendations"


@dataclass(frozen=True)
class StrategicRun:
    table: str
    functional_version: int
    kpis: list[Row]
    fit: Row | None  # the purchase model's parameters, if the directive has one and it was fitted
    unfitted: str | None  # why this run could not fit the purchase model (its outputs are null)
    validity: list[Row]  # V1-V5 verdicts per KPI, if the directive asks for them
    skipped: bool


def run_strategic(spark: SparkSession, profile: Profile, directives: DirectiveSet, strategic: Loaded) -> StrategicRun:
    directive = strategic.directive
    serving = [f for f in directives.functional.values() if f.directive.serves == directive.id]
    if len(serving) != 1:
        raise CrmError(f"{strategic.path}: expected one functional directive serving {directive.id}, found {len(serving)}")
    source = functional_table(profile, serving[0].directive.id)
    if not DeltaTable.isDeltaTable(spark, source):
        raise CrmError(f"functional table {source} does not exist yet; run `crm functional` first")
    version = DeltaTable.forPath(spark, source).history(1).select("version").first()[0]
    out, model_out = strategic_table(profile, directive.id), strategic_table(profile, directive.id, "model")
    appender = BatchAppender(spark, APP_ID)
    skipped = appender.last_batch(out) >= version
    validity_out = strategic_table(profile, directive.id, "validity")
    unfitted = None
    if not skipped:
        params = spark.read.format("delta").option("versionAsOf", version).load(source)
        fitted = None
        scored = params
        if directive.purchase_model is not None:
            scored, fitted, unfitted = _apply_purchase_model(spark, profile, directive, params, version)
        kpis = kpi_rows(scored, directive, str(strategic.path)).select("*", *_lineage(directive, version))
        if directive.validity is not None:
            variants = _variants_of(spark, profile, serving[0].directive.id, params)
            base = {r["kpi"]: r["value"] for r in kpis.select("kpi", "value").collect()}  # one row per KPI
            _check_validity(spark, profile, directive, serving[0].directive, params, variants, base, fitted, version)
        if directive.recommendations is not None:
            _recommend(spark, profile, directive, scored, version, str(strategic.path))
        appender.append(kpis, out, version)  # last: a run cut short before it is redone whole
    read = lambda path: spark.read.format("delta").load(path).where(F.col("functional_version") == version)  # noqa: E731
    latest = read(out).orderBy("kpi").collect()  # one row per KPI
    fitted_ever = directive.purchase_model is not None and DeltaTable.isDeltaTable(spark, model_out)
    fit = read(model_out).first() if fitted_ever else None
    checks = read(validity_out).orderBy("kpi", "v").collect() if directive.validity is not None else []  # 5 per KPI
    return StrategicRun(out, version, latest, fit, unfitted, checks, skipped)


def _variants_of(spark: SparkSession, profile: Profile, functional_id: str, params: DataFrame) -> DataFrame:
    """CRFM's parameter variants computed from the same silver versions as `params`."""
    path = functional_table(profile, functional_id, "variants")
    wanted = params.agg(F.max("source_version")).first()[0]
    have = spark.read.format("delta").load(path).agg(F.max("source_version")).first()[0] if DeltaTable.isDeltaTable(spark, path) else None
    if have != wanted:
        raise CrmError(f"{path} is not from the same silver versions as the functional table; run `crm functional` first")
    return spark.read.format("delta").load(path)


def _check_validity(spark, profile: Profile, directive, functional, params, variants, base, fitted, version: int) -> None:
    """V1-V5 for every KPI: verdicts to `<table>_validity`, curve points to `<table>_validity_curves`."""
    log.info("validity of %s: V1-V5 over %d KPIs", directive.id, len(directive.kpis))
    judged = assess(spark, directive, functional, params, variants, base, kpi_values_by(directive, fitted))
    lineage = _lineage(directive, version)
    BatchAppender(spark, VALIDITY_APP_ID).append(
        spark.createDataFrame(judged.curves, CURVE_SCHEMA).select("*", *lineage), strategic_table(profile, directive.id, "validity_curves"), version
    )
    BatchAppender(spark, VALIDITY_APP_ID).append(
        spark.createDataFrame(judged.checks, CHECK_SCHEMA).select("*", *lineage), strategic_table(profile, directive.id, "validity"), version
    )


def _recommend(spark: SparkSession, profile: Profile, directive, scored: DataFrame, version: int, where: str) -> None:
    """Recommendations to Kafka, then to `<table>_recommendations`: published at least once."""
    path = strategic_table(profile, directive.id, "recommendations")
    appender = BatchAppender(spark, RECOMMENDATIONS_APP_ID)
    if appender.last_batch(path) >= version:
        return
    rows = recommend(scored, directive, version, hmac_key(profile.cache), where).select("*", *_lineage(directive, version)).cache()
    try:
        ensure_topics(profile.kafka, {"recommendations": directive.recommendations})
        sent = publish(rows, profile.kafka, directive.recommendations.topic)
        appender.append(rows, path, version, add_columns=True)  # a table from before customer_key gains it
        log.info("recommendations of %s: %d published to %s", directive.id, sent, directive.recommendations.topic)
    finally:
        rows.unpersist()


def _lineage(directive, version: int) -> list:
    return [
        F.lit(version).cast("long").alias("functional_version"),
        F.lit(directive.id).alias("directive_id"),
        F.lit(directive.version).alias("directive_version"),
        F.current_timestamp().alias("computed_at"),
    ]


def _apply_purchase_model(spark: SparkSession, profile: Profile, directive, params, version: int):
    """Fit, record the fit, score every customer: the scored customers, as stored, the fit and,
    when the data cannot be fitted (e.g. too few repeat buyers yet), why; then the customers
    are stored with null model outputs and the KPIs over them have no value."""
    model = directive.purchase_model
    customers = strategic_table(profile, directive.id, "customers")
    try:
        fitted = fit_purchase_model(params, model)
    except CrmError as exc:
        log.warning("purchase model of %s not fitted on functional version %d: %s; KPIs on its outputs have no value", directive.id, version, exc)
        overwrite_unless_current(spark, customers, version, lambda: unscored(params))
        return spark.read.format("delta").load(customers), None, str(exc)
    b, g = fitted.bgnbd, fitted.spend
    log.info("purchase model on %d customers: BG/NBD r=%.3f alpha=%.3f a=%.3f b=%.3f; Gamma-Gamma on %d repeat buyers: p=%.3f q=%.3f gamma=%.3f",
             b.customers, b.r, b.alpha, b.a, b.b, g.customers, g.p, g.q, g.gamma)  # fmt: skip
    BatchAppender(spark, MODEL_APP_ID).append(
        fit_frame(spark, fitted).select("*", *_lineage(directive, version)), strategic_table(profile, directive.id, "model"), version
    )
    overwrite_unless_current(spark, customers, version, lambda: score_customers(params, model, fitted))
    return spark.read.format("delta").load(customers), fitted, None
