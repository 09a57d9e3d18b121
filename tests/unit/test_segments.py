"""CRFM segments: RFM scores and named segments, and k-means clusters, on hand-made parameters."""

from __future__ import annotations

from datetime import date

import pytest
from pyspark.testing import assertDataFrameEqual

from pipelines.crfm.segments import SavedFit, apply, check_scores, clusters, feature_stats, fit, refit_reason, rfm_scores, segments
from pipelines.directives import Clustering, Refit, RfmScores, Score, Segmentation
from pipelines.errors import CrmError

RFM = RfmScores(recency="recency_days", frequency="orders", monetary="spend", bins=5)


def test_rfm_scores_are_quantile_bins_and_name_the_segment(spark):
    # Recency 1..10 days and 10..1 orders: the recent customers are also the frequent ones.
    rows = [(f"C{i:02d}", i, 11 - i, float(i * 10)) for i in range(1, 11)] + [("NONE", None, None, None)]
    params = spark.createDataFrame(rows, "customer_id string, recency_days int, orders int, spend double")
    got = {r["customer_id"]: r for r in rfm_scores(params, RFM).collect()}
    # Edges at the 20/40/60/80% quantiles (2, 4, 6, 8): fewer days score higher, more orders score higher.
    assert [got[f"C{i:02d}"]["r_score"] for i in range(1, 11)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert [got[f"C{i:02d}"]["f_score"] for i in range(1, 11)] == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert [got[f"C{i:02d}"]["m_score"] for i in range(1, 11)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    segments_of = [got[f"C{i:02d}"]["rfm_segment"] for i in range(1, 11)]
    assert segments_of == ["champions"] * 4 + ["needs_attention"] * 2 + ["hibernating"] * 4
    assert got["NONE"]["rfm_segment"] == "no_purchase" and got["NONE"]["r_score"] is None


def test_kmeans_separates_two_groups_of_customers(spark):
    rows = [(f"A{i}", 1 + i % 3, 20 + i % 2) for i in range(20)] + [(f"B{i}", 60 + i % 3, 1 + i % 2) for i in range(20)]
    params = spark.createDataFrame(rows, "customer_id string, recency_days int, orders int")
    params = params.union(spark.createDataFrame([("NEVER", None, 0)], params.schema))
    out = {r["customer_id"]: r for r in clusters(params, Clustering(features=["recency_days", "orders"], k=2)).collect()}
    got = {c: r["cluster"] for c, r in out.items()}
    assert len({got[f"A{i}"] for i in range(20)}) == 1 and len({got[f"B{i}"] for i in range(20)}) == 1
    assert got["A0"] != got["B0"]
    assert out["NEVER"]["recency_days"] is None  # clustered as 0, kept as it was


def test_segments_keep_one_row_per_customer_with_the_named_columns(spark):
    params = spark.createDataFrame([(f"C{i}", i, i % 4, float(i)) for i in range(1, 30)], "customer_id string, recency_days int, orders int, spend double")
    seg = Segmentation(rfm=RFM, clustering=Clustering(features=["recency_days", "orders"], k=3))
    out = segments(params, seg, "customer_id")
    assert out.columns == ["customer_id", "recency_days", "orders", "spend", "r_score", "f_score", "m_score", "rfm_segment", "cluster"]
    assert out.count() == 29 and out.select("customer_id").distinct().count() == 29


def test_fewer_distinct_customers_than_clusters_still_get_a_cluster(spark):
    params = spark.createDataFrame([("A", 1, 1), ("B", 1, 1), ("C", 9, 5)], "customer_id string, recency_days int, orders int")
    got = {r["customer_id"]: r["cluster"] for r in clusters(params, Clustering(features=["recency_days", "orders"], k=4)).collect()}
    assert got["A"] == got["B"] != got["C"]
    one = spark.createDataFrame([("A", 1, 1)], "customer_id string, recency_days int, orders int")
    assert [r["cluster"] for r in clusters(one, Clustering(features=["recency_days", "orders"], k=4)).collect()] == [0]


def test_scores_are_the_directive_expressions_and_are_checked_before_running(spark):
    params = spark.createDataFrame(
        [("BUYER", 3, 5, 50.0, 2), ("LEAD", None, 0, 0.0, 4)],
        "customer_id string, recency_days int, orders int, spend double, visits int",
    )
    lead = Score(name="lead_score", expression="CASE WHEN recency_days IS NULL THEN 10 * visits END")
    value = Score(name="customer_score", expression="r_score + f_score + m_score")
    seg = Segmentation(rfm=RfmScores(recency="recency_days", frequency="orders", monetary="spend", bins=2), scores=[lead, value])
    got = {r["customer_id"]: r for r in segments(params, seg, "customer_id").collect()}
    assert (got["LEAD"]["lead_score"], got["BUYER"]["lead_score"]) == (40, None)
    assert got["BUYER"]["customer_score"] == got["BUYER"]["r_score"] + got["BUYER"]["f_score"] + got["BUYER"]["m_score"]
    assert got["LEAD"]["customer_score"] is None  # no recency: no r_score

    check_scores(params.limit(0), seg, "f.yaml")
    typo = seg.model_copy(update={"scores": [Score(name="lead_score", expression="10 * vists")]})
    with pytest.raises(CrmError, match=r"f.yaml: segmentation.scores \(lead_score\): .*vists"):
        check_scores(params.limit(0), typo, "f.yaml")


def test_a_saved_fit_scores_other_customers_as_when_it_was_fitted(spark, tmp_path):
    rows = [(f"C{i}", i % 40, i % 7, float(i)) for i in range(60)]
    params = spark.createDataFrame(rows, "customer_id string, recency_days int, orders int, spend double")
    seg = Segmentation(rfm=RFM, clustering=Clustering(features=["recency_days", "orders"], k=3))
    saved = SavedFit(tmp_path / "fit", "print")
    saved.save(fit(params, seg), date(2026, 3, 1), feature_stats(params, seg))
    fitted, as_of, stats = saved.load()
    assert as_of == date(2026, 3, 1) and stats["orders"][0] == pytest.approx(sum(i % 7 for i in range(60)) / 60)
    assertDataFrameEqual(apply(params, seg, fitted, "customer_id"), segments(params, seg, "customer_id"))
    # New customers are scored by the saved edges and centres, not by a fit of their own.
    later = spark.createDataFrame([("N1", 0, 6, 59.0), ("N2", 39, 0, 0.0)], params.schema)
    got = {r["customer_id"]: r for r in apply(later, seg, fitted, "customer_id").collect()}
    assert (got["N1"]["r_score"], got["N2"]["r_score"]) == (5, 1)
    assert SavedFit(tmp_path / "fit", "another directive").load() is None


def test_a_fit_is_due_after_its_days_or_when_a_mean_drifted():
    refit = Refit(every_days=7, drift=0.5)
    stats = {"orders": [4.0, 2.0], "spend": [None, None]}
    fitted = date(2026, 3, 1)
    assert refit_reason(refit, fitted, stats, date(2026, 3, 7), {"orders": 4.9, "spend": None}) is None
    assert "7 days" in refit_reason(refit, fitted, stats, date(2026, 3, 8), {"orders": 4.0, "spend": None})
    assert "orders" in refit_reason(refit, fitted, stats, date(2026, 3, 2), {"orders": 5.1, "spend": None})  # 0.55 deviations
    assert "spend" in refit_reason(refit, fitted, stats, date(2026, 3, 2), {"orders": 4.0, "spend": 3.0})
