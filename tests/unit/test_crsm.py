"""CRSM: KPI expressions over functional parameters, judged against their targets."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from pipelines.crsm.job import run_strategic
from pipelines.crsm.kpis import kpi_rows
from pipelines.crsm.recommend import recommend
from pipelines.directives import Loaded, StrategicDirective, load_directives
from pipelines.errors import CrmError
from pipelines.tables import functional_table, strategic_table

REPO = Path(__file__).resolve().parents[2]
KEY = b"k" * 32


def _directive(**kpi_changes):
    kpis = [
        {"name": "repeat_rate", "strategic_variable": "loyalty", "description": "d",
         "expression": "avg(CASE WHEN frequency_90d >= 2 THEN 1.0D ELSE 0.0D END)", "uses": ["frequency_90d"],
         "target": {"op": ">=", "value": 0.5}},
        {"name": "complaining", "strategic_variable": "satisfaction", "description": "d",
         "expression": "avg(CASE WHEN complaints_30d > 0 THEN 1.0D ELSE 0.0D END)", "uses": ["complaints_30d"],
         "target": {"op": "<=", "value": 0.2}},
    ]
    kpis[0].update(kpi_changes)
    return StrategicDirective.model_validate({"id": "strategic.t", "version": 1, "description": "t", "kpis": kpis})


@pytest.fixture
def params(spark):
    return spark.createDataFrame(
        [("C1", 3, 0), ("C2", 1, 1), ("C3", 2, 0), ("C4", 0, 0)], "customer_id string, frequency_90d long, complaints_30d long"
    )


def test_kpis_against_targets(params):
    rows = {r["kpi"]: r for r in kpi_rows(params, _directive()).collect()}
    assert rows["repeat_rate"]["value"] == pytest.approx(0.5) and rows["repeat_rate"]["on_target"] is True
    assert rows["complaining"]["value"] == pytest.approx(0.25) and rows["complaining"]["on_target"] is False
    assert rows["complaining"]["customers"] == 4


def test_expression_may_only_use_declared_parameters(params):
    sneaky = _directive(expression="avg(frequency_90d + complaints_30d)")
    with pytest.raises(CrmError, match=r"s.yaml: kpis \(repeat_rate\): expression: .*complaints_30d"):
        kpi_rows(params, sneaky, "s.yaml")


def _with_recommendations(when: str):
    raw = _directive().model_dump(by_alias=True)
    raw["recommendations"] = {
        "topic": "t.recs",
        "rules": [{"name": "follow_up", "description": "d", "when": when, "priority": "complaints_30d * 10 + frequency_90d",
                   "uses": ["complaints_30d", "frequency_90d"]}],
    }  # fmt: skip
    return StrategicDirective.model_validate(raw)


def test_recommendations_select_rank_and_name_each_customer(params):
    directive = _with_recommendations("complaints_30d > 0 OR frequency_90d >= 2")
    rows = recommend(params, directive, version=7, key=KEY).orderBy("rank").collect()
    assert [(r["customer_id"], r["rank"], r["priority"]) for r in rows] == [("C2", 1, 11.0), ("C1", 2, 3.0), ("C3", 3, 2.0)]
    # The key the topic carries: the customer id's keyed pseudonym, as crom/identity_map has it.
    assert all(r["customer_key"] == hmac.new(KEY, r["customer_id"].encode(), hashlib.sha256).hexdigest() for r in rows)
    again = {r["customer_id"]: r["recommendation_id"] for r in recommend(params, directive, version=7, key=KEY).collect()}
    assert again == {r["customer_id"]: r["recommendation_id"] for r in rows}  # the same ids on a rerun
    later = {r["customer_id"]: r["recommendation_id"] for r in recommend(params, directive, version=8, key=KEY).collect()}
    assert set(later.values()).isdisjoint(again.values())
    other_key = {r["customer_id"]: r["recommendation_id"] for r in recommend(params, directive, version=7, key=b"x" * 32).collect()}
    assert set(other_key.values()).isdisjoint(again.values())  # ids come from the pseudonym, not the bare id


def test_recommendation_on_an_unknown_column_is_refused(params):
    with pytest.raises(CrmError, match=r"s.yaml: recommendations.rules\[0\] \(follow_up\): .*complaints_7d"):
        recommend(params, _with_recommendations("complaints_7d > 0 AND complaints_30d > 0 AND frequency_90d > 0"), 1, KEY, "s.yaml")


def test_a_purchase_model_that_cannot_be_fitted_leaves_only_its_kpis_without_value(spark, profile):
    directives = load_directives(REPO / "directives" / "cdnow", REPO / "schemas")
    loaded = directives.only("strategic")
    lean = loaded.directive.model_copy(update={"validity": None, "recommendations": None})
    # One repeat buyer among three customers: BG/NBD cannot be fitted yet.
    spark.createDataFrame(
        [("C1", 2, 30, 60, 12.0, 0), ("C2", 0, 0, 40, None, 1), ("C3", 0, 0, 10, None, 0)],
        "customer_id string, repeat_purchase_days long, purchase_span_days int, customer_age_days int, "
        "repeat_spend_avg double, holdout_purchase_days long",
    ).write.format("delta").save(functional_table(profile, directives.only("functional").directive.id))

    run = run_strategic(spark, profile, directives, Loaded(lean, loaded.path))
    assert run.fit is None and "BG/NBD needs repeat buyers" in run.unfitted
    kpis = {k["kpi"]: k for k in run.kpis}
    assert kpis["customer_lifetime_value"]["value"] is None and not kpis["customer_lifetime_value"]["on_target"]
    assert kpis["expected_active_share"]["value"] is None
    assert kpis["repeat_buyer_share"]["value"] == pytest.approx(1 / 3)  # KPIs on parameters keep their value
    customers = spark.read.format("delta").load(strategic_table(profile, lean.id, "customers"))
    assert customers.count() == 3 and customers.where(F.col("clv").isNotNull() | F.col("p_alive").isNotNull()).count() == 0
    again = run_strategic(spark, profile, directives, Loaded(lean, loaded.path))
    assert again.skipped and again.fit is None and again.unfitted is None
