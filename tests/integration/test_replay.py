"""Real public data through the real stack: `crm replay` of a slice of each data set -> Kafka ->
CROM -> Delta, with every replayed record accounted for in exactly one place."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from pipelines.config import sample_data
from pipelines.crom.ingest import run_ingest
from pipelines.crom.resolve import run_identities, run_web_sessions
from pipelines.replay import replay
from pipelines.tables import CromTables
from pipelines.topics import ensure_topics
from tests.helpers import with_topic_prefix

pytestmark = pytest.mark.integration

SLICE = 400  # records of each data set
SOURCE_OF = {"apache-access": "web", "airline-tweets": "social", "loghub": "log", "cdnow": "transaction"}


def test_a_slice_of_each_data_set_lands_in_exactly_one_place(spark, kafka, profile, directives):
    kprofile, _ = kafka
    profile = profile.model_copy(update={"kafka": kprofile.kafka})
    # Topics of this test only: the session broker is shared with other tests.
    operational = with_topic_prefix(directives, "replay").only("operational")
    sources = operational.directive.sources
    ensure_topics(profile.kafka, sources)
    topics = {name: src.topic for name, src in sources.items()}

    sent = {}
    for dataset in SOURCE_OF:  # cdnow-sample is replayed whole in test_cdnow
        counts = replay(profile.kafka, dataset, sample_data() / dataset, topics, limit=SLICE, progress=lambda _: None)
        assert counts[SOURCE_OF[dataset]] + counts["unreadable"] + counts["skipped"] == SLICE, dataset
        sent[SOURCE_OF[dataset]] = counts[SOURCE_OF[dataset]] + counts["unreadable"]
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)

    tables = CromTables.of(profile, list(sources))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    assert read(tables.bronze).count() == sum(sent.values())
    audit = {r["source"]: r for r in read(tables.batch_audit).groupBy("source").agg(*[F.sum(c).alias(c) for c in ("records", "silver_rows", "quarantined", "late", "duplicates", "untrusted")]).collect()}
    for source, n in sent.items():
        row = audit[source]
        assert row["records"] == n and row["silver_rows"] + row["quarantined"] + row["late"] + row["duplicates"] == n, source
        assert read(tables.silver[source]).count() == row["silver_rows"], source
        assert row["untrusted"] == 0, source  # replay producers are in the directive's trust lists

    # Each slice is short in time, so nothing is late, and real records are all well formed.
    web = read(tables.silver["web"])
    assert web.count() == SLICE and web.where(F.col("page_path").isNull() | F.col("device_type").isNull()).count() == 0
    assert 0 < web.where("is_bot").count() < SLICE
    social = read(tables.silver["social"])
    assert social.count() == SLICE and social.where(F.col("sentiment_label").isNull()).count() == 0
    assert social.where(F.col("language") == "en").count() > SLICE * 0.9
    logs = read(tables.silver["log"])
    assert logs.count() == SLICE and logs.where(F.col("template_id").isNull()).count() == 0
    orders = read(tables.silver["transaction"])
    assert orders.count() == SLICE and orders.where(F.col("customer_email_hmac").isNotNull()).count() == 0
    first = orders.where(F.col("event_time") < "1998-01-01").select("amount", "amount_base").collect()  # 1997: 1.1340 USD per EUR
    assert first and all(r["amount_base"] == round(r["amount"] / 1.1340, 2) for r in first)

    # The cross-batch step runs on real data: no customer ids on web or social, so their keys are
    # anonymous; CDNOW's orders carry an id and nothing else, so only the ids' own keys resolve.
    identities = run_identities(spark, profile, operational, directives.schemas)
    buyers = orders.select("customer_id").distinct().count()
    assert identities.resolved == buyers and identities.anonymous == identities.keys - buyers > 0 and not identities.conflicts
    by_type = {r["key_type"]: (r["n"], r["resolved"]) for r in read(tables.identity_map).groupBy("key_type").agg(
        F.count("*").alias("n"), F.count("resolved_customer_id").alias("resolved")).collect()}  # fmt: skip
    assert by_type["customer"] == (buyers, buyers) and all(resolved == 0 for kind, (_, resolved) in by_type.items() if kind != "customer")
    [sessions] = run_web_sessions(spark, profile, operational, directives.schemas)
    visitors = web.select("cookie_id_hmac").distinct().count()
    assert sessions.visitors == visitors and visitors <= sessions.sessions < SLICE
