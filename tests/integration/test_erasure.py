"""Retention and erasure on real tables: `crm forget` leaves nothing of a customer in any
Parquet file of any layer, and `crm purge` trims old rows, while the CRFM streams that read
silver keep running incrementally."""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.config import load_profile
from pipelines.crfm.job import run_functional
from pipelines.crom.ingest import run_ingest
from pipelines.crom.resolve import run_identities, run_web_sessions
from pipelines.erasure import forget, purge
from pipelines.generator import EventStream, produce
from pipelines.tables import CromTables, functional_table
from pipelines.topics import ensure_topics
from tests.helpers import with_topic_prefix

pytestmark = pytest.mark.integration


def _run_layers(spark, profile, directives) -> None:
    operational = directives.only("operational")
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)
    run_identities(spark, profile, operational, directives.schemas)
    run_web_sessions(spark, profile, operational, directives.schemas)


def _produce(profile, directives, first: int, n: int) -> None:
    sources = directives.only("operational").directive.sources
    produce(profile.kafka, EventStream(5, {s: src.topic for s, src in sources.items()}), first, n, progress=lambda _: None)


def _raw_mentions(lakehouse: Path, words: list[str]) -> dict[str, int]:
    """Data files (not the Delta log) whose string values name any of `words`: read as plain Parquet, as an attacker would."""
    pattern = re.compile("|".join(rf"(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])" for w in words))
    found: dict[str, int] = {}
    for file in lakehouse.rglob("*.parquet"):
        if "_delta_log" in file.parts:
            continue
        for column in pq.ParquetFile(file).read().columns:  # the file alone, no partition folders
            if pa.types.is_list(column.type):
                column = column.combine_chunks().flatten()
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            hits = sum(1 for value in column.to_pylist() if value and pattern.search(value))
            if hits:
                key = str(file.relative_to(lakehouse)).split("/")[1]
                found[key] = found.get(key, 0) + hits
    return found


BASE_EVENTS = 1200


@pytest.fixture(scope="module")
def layers_run(spark, kafka, directives, tmp_path_factory):
    """CROM and CRFM once over BASE_EVENTS events on topics of this module's own; each test
    works on a copy of the lakehouse and checkpoints (Delta tables and checkpoints are files)."""
    kprofile, _ = kafka
    root = tmp_path_factory.mktemp("erasure-base")
    profile = load_profile("local").model_copy(update={"lakehouse": root / "lakehouse", "checkpoints": root / "checkpoints", "kafka": kprofile.kafka})
    ours = with_topic_prefix(directives, "erasure")
    ensure_topics(profile.kafka, ours.only("operational").directive.sources)
    _produce(profile, ours, 0, BASE_EVENTS)
    _run_layers(spark, profile, ours)
    run_functional(spark, profile, ours, ours.only("functional"))
    return root, profile, ours


def _all_layers_run(layers_run, tmp_path: Path):
    """A copy of the module's run: its profile, CROM tables and functional directive."""
    root, base, directives = layers_run
    for folder in ("lakehouse", "checkpoints"):
        shutil.copytree(root / folder, tmp_path / folder)
    profile = base.model_copy(update={"lakehouse": tmp_path / "lakehouse", "checkpoints": tmp_path / "checkpoints"})
    return profile, directives, CromTables.of(profile, list(directives.schemas)), directives.only("functional")


def _comparable(spark, path: str):
    return spark.read.format("delta").load(path).drop("computed_at")


def test_forget_erases_a_customer_from_every_file_and_the_streams_go_on(spark, layers_run, tmp_path):
    profile, directives, crom, functional = _all_layers_run(layers_run, tmp_path)

    buyers = spark.read.format("delta").load(crom.silver["transaction"]).groupBy("customer_id").count()
    customer = buyers.orderBy(F.desc("count"), "customer_id").first()["customer_id"]
    keys = spark.read.format("delta").load(crom.silver["transaction"]).where(F.col("customer_id") == customer)
    email, rows = keys.select("customer_email_hmac").first()[0], keys.count()
    before = _raw_mentions(profile.lakehouse, [customer, email])
    assert {"silver_transaction", "bronze", "customer_metrics", "customer_metrics_partials_transaction"} <= set(before)

    erased = {e.table: e for e in forget(spark, profile.lakehouse, crom, customer)}

    assert _raw_mentions(profile.lakehouse, [customer, email]) == {}
    assert erased["crom/silver_transaction"].deleted == rows
    assert erased["crom/identity_map"].deleted > 0  # the e-mail and phone keys tied to the customer
    assert erased["crfm/customer_metrics_by_channel_partials_transaction"].updated > 0  # gone from the distinct buyers only
    for source in ("web", "social", "transaction"):  # the sources with a customer_id column
        assert spark.read.format("delta").load(crom.silver[source]).where(F.col("customer_id") == customer).count() == 0

    # New events arrive; the CRFM streams skip forget's DELETE commits and fold only them.
    silver_before = {s: spark.read.format("delta").load(p).count() for s, p in crom.silver.items()}
    _produce(profile, directives, BASE_EVENTS, 400)  # events of this test's own (the topics are the module's)
    _run_layers(spark, profile, directives)
    incremental = run_functional(spark, profile, directives, functional)
    measured = {p.source for p in functional.directive.parameters}
    added = sum(spark.read.format("delta").load(crom.silver[s]).count() - silver_before[s] for s in measured)
    assert not incremental.rebuilt_partials and incremental.new_events == added > 0
    table = functional_table(profile, functional.directive.id)
    kept = _comparable(spark, table).cache()
    kept.count()
    recomputed = run_functional(spark, profile, directives, functional, full=True)
    assert recomputed.rebuilt_partials
    assertDataFrameEqual(kept, _comparable(spark, table), rtol=1e-9)  # the forgotten partials were exactly right
    kept.unpersist()


def test_forget_while_crfm_is_behind_rebuilds_the_partials_it_can_no_longer_read(spark, layers_run, tmp_path):
    profile, directives, crom, functional = _all_layers_run(layers_run, tmp_path)
    _produce(profile, directives, BASE_EVENTS + 400, 800)
    _run_layers(spark, profile, directives)  # CRFM has not read these
    newest = spark.read.format("delta").load(crom.silver["transaction"]).orderBy(F.desc("batch_id"), "customer_id").first()["customer_id"]

    forget(spark, profile.lakehouse, crom, newest)
    run = run_functional(spark, profile, directives, functional)

    assert run.rebuilt_partials  # a file it had not read was rewritten and vacuumed
    metrics = spark.read.format("delta").load(functional_table(profile, functional.directive.id))
    assert metrics.where(F.col("customer_id") == newest).count() == 0
    silver_customers = spark.read.format("delta").load(crom.silver["transaction"]).select("customer_id").distinct()
    assert silver_customers.join(metrics, "customer_id", "left_anti").count() == 0  # nobody else's events were lost


def test_purge_deletes_rows_past_each_sources_retention_and_keeps_the_rest(spark, layers_run, tmp_path):
    profile, directives, crom, functional = _all_layers_run(layers_run, tmp_path)
    sources = directives.only("operational").directive.sources
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    # As of the day that puts half of the web events past the web source's retention.
    middle = read(crom.silver["web"]).select(F.percentile_approx("event_time", 0.5)).first()[0]
    as_of = middle + timedelta(days=sources["web"].delta_retention_days)
    cutoffs = {s: as_of - timedelta(days=src.delta_retention_days) for s, src in sources.items() if src.delta_retention_days}
    assert sources["transaction"].delta_retention_days is None  # purchases are kept
    expected = {s: read(p).where(F.col("event_time") >= cutoffs[s]).count() if s in cutoffs else read(p).count() for s, p in crom.silver.items()}
    assert 0 < expected["web"] < read(crom.silver["web"]).count()
    bronze_before = {"web": read(crom.bronze).where(F.col("kafka_topic") == sources["web"].topic).count()}

    purged = purge(spark, crom, sources, as_of)

    assert {s: read(p).count() for s, p in crom.silver.items()} == expected
    assert {e.table for e in purged} >= {"crom/silver_web (web)", "crom/silver_log (log)", "crom/bronze (log)"}
    # Bronze counts back from when records arrived (today), not from event time: the log
    # source's 90 days from `as_of` reach past today, the web source's two years do not.
    bronze = {s: read(crom.bronze).where(F.col("kafka_topic") == src.topic).count() for s, src in sources.items()}
    assert bronze["log"] == 0 and bronze["web"] == bronze_before["web"]
    run = run_functional(spark, profile, directives, functional)  # the streams skip the DELETE commits
    assert not run.rebuilt_partials and run.new_events == 0
