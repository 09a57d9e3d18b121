"""V1-V5 validity: verdicts from deviations, and the checks on small hand-made tables."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.config import sample_data
from pipelines.crfm.parameters import customer_parameters, parameter_variants, silver_partials
from pipelines.crsm.kpis import kpi_rows
from pipelines.crsm.purchase_model import fit_purchase_model, score_customers
from pipelines.crsm.validity import Point, assess, judge, kpi_values_by, volume_points
from pipelines.directives import FunctionalDirective, StrategicDirective, load_directives

REPO = Path(__file__).resolve().parents[2]

AS_OF = datetime(2026, 6, 30, 12, 0)

STRATEGIC = StrategicDirective.model_validate(
    {
        "id": "strategic.t",
        "version": 1,
        "description": "t",
        "validity": {"bootstrap_samples": 10, "windows": {"count": 2, "step_days": 10}},
        "kpis": [
            {"name": "complaining_share", "strategic_variable": "satisfaction", "description": "d",
             "expression": "avg(CASE WHEN complaints_30d > 0 THEN 1.0D ELSE 0.0D END)", "uses": ["complaints_30d"],
             "target": {"op": "<=", "value": 0.2}},
        ],
    }
)  # fmt: skip
FUNCTIONAL = FunctionalDirective.model_validate(
    {
        "id": "functional.t",
        "version": 1,
        "serves": "strategic.t",
        "description": "t",
        "parameters": [
            {"name": "complaints_30d", "class": "probe", "source": "social", "measure": "count", "window_days": 30, "filter": "complaint"},
            {"name": "orders_30d", "class": "transactional", "source": "transaction", "measure": "count", "window_days": 30},
        ],
    }
)


def _points(values: list[float | None], label: str = "p") -> list[Point]:
    return [Point(f"{label}{i}", float(i), {"k": v}) for i, v in enumerate(values)]


def _kpi_k(**validity) -> StrategicDirective:
    raw = STRATEGIC.model_dump(by_alias=True)
    raw["kpis"][0]["name"] = "k"
    raw["validity"].update(validity)
    return StrategicDirective.model_validate(raw)


def test_verdicts_follow_the_directive_thresholds():
    directive = _kpi_k(resolved_below=0.05, unresolved_above=0.20, volume_fractions=[0.5, 1.0])
    judged = judge(
        directive,
        {"k": 1.0},
        v1=[Point("50%", 0.5, {"k": 1.01}), Point("100%", 1.0, {"k": 1.0})],  # moves 1%: resolved
        v2=_points([1.0, 0.9]),  # moves 10%: sensitive
        v3=[Point("without_web", 0, {"k": 1.0}), Point("without_social", 1, {"k": None})],  # no value without social
        v4=_points([0.5, 1.5] * 10),  # a wide interval: unresolved
        v5=[Point("with_untrusted", 1, {"k": 1.5})],  # moves 50%: unresolved
    )
    verdicts = {row[1]: row for row in judged.checks}
    assert {v: row[3] for v, row in verdicts.items()} == {
        "V1": "resolved", "V2": "sensitive", "V3": "sensitive", "V4": "unresolved", "V5": "unresolved"
    }  # fmt: skip
    assert verdicts["V1"][4] == pytest.approx(0.01) and verdicts["V2"][4] == pytest.approx(0.1)
    assert "no value without social" in verdicts["V3"][8]
    assert verdicts["V4"][6:8] == (pytest.approx(0.5), pytest.approx(1.5))
    assert len(judged.curves) == 2 + 2 + 2 + 20 + 1


def test_a_kpi_without_a_value_is_unresolved_everywhere():
    directive = _kpi_k(volume_fractions=[0.5, 1.0])
    judged = judge(directive, {"k": None}, _points([None, None]), _points([None]), _points([None]), _points([None] * 5), _points([None]))
    assert {row[3] for row in judged.checks} == {"unresolved"}


def test_a_kpi_that_converges_is_resolved_on_volume(spark):
    # 20,000 customers, 30% of them complaining: any large share of them shows about 30%.
    params = spark.range(20_000).select(
        F.format_string("C%05d", "id").alias("customer_id"), F.when(F.col("id") % 10 < 3, 1).otherwise(0).alias("complaints_30d")
    )
    points = volume_points(spark, params, "customer_id", [0.1, 0.25, 0.5, 0.75, 1.0], kpi_values_by(STRATEGIC))
    assert [p.x for p in points] == [0.1, 0.25, 0.5, 0.75, 1.0]
    assert points[-1].values["complaining_share"] == pytest.approx(0.3)
    judged = judge(STRATEGIC, points[-1].values, points, [], [], [Point("b", 0, points[-1].values)] * 5, [])
    v1 = next(row for row in judged.checks if row[1] == "V1")
    assert v1[3] == "resolved" and v1[4] < 0.05


def _silver(spark, untrusted_complaints: int):
    """Social posts of 50 trusted customers (5 complaining) plus complaints of untrusted producers."""
    rows = [(f"C{i:03d}", AS_OF, i < 5, "high") for i in range(50)]
    rows += [(f"U{i:03d}", AS_OF, True, "untrusted") for i in range(untrusted_complaints)]
    social = spark.createDataFrame(rows, "customer_id string, event_time timestamp, complaint boolean, trust_level string")
    orders = spark.createDataFrame([(f"C{i:03d}", AS_OF, "high") for i in range(50)], "customer_id string, event_time timestamp, trust_level string")
    return {"social": social, "transaction": orders}


# One untrusted complainer moves the share from 5/50 to 6/51 (18%): between the directive's
# "resolved" (5%) and "unresolved" (20%) thresholds, so sensitive; twenty move it 257%.
@pytest.mark.parametrize("untrusted, verdict", [(0, "resolved"), (1, "sensitive"), (20, "unresolved")])
def test_untrusted_events_that_shift_a_kpi_make_veracity_not_resolved(spark, untrusted, verdict):
    silver = _silver(spark, untrusted)
    as_of = F.lit(AS_OF)
    daily = silver_partials(silver, FUNCTIONAL)
    params = customer_parameters(daily, FUNCTIONAL, as_of)
    variants = parameter_variants(daily, FUNCTIONAL, as_of, STRATEGIC.validity.windows)
    assert {r["variant"] for r in variants.select("variant").distinct().collect()} == {
        "with_untrusted", "without_social", "without_transaction", "as_of_minus_10d"
    }  # fmt: skip
    base = {r["kpi"]: r["value"] for r in kpi_rows(params, STRATEGIC).collect()}
    assert base["complaining_share"] == pytest.approx(0.1)
    judged = assess(spark, STRATEGIC, FUNCTIONAL, params, variants, base, kpi_values_by(STRATEGIC))
    checks = {row[1]: row for row in judged.checks}
    assert checks["V5"][3] == verdict
    assert checks["V5"][4] == pytest.approx(((5 + untrusted) / (50 + untrusted) - 0.1) / 0.1)
    # Without social posts nobody complains (a share of 0): the KPI rests on that one source.
    assert checks["V3"][3] == "unresolved" and checks["V3"][4] == pytest.approx(1.0)


def test_each_variant_is_the_parameters_of_its_perturbed_input(spark):
    """A variant equals the parameters computed the plain way on what it perturbs: the source
    left out of the partials, as_of moved a window earlier, the other trust choice."""
    rows = [(f"C{i:02d}", AS_OF - timedelta(days=3 * i), i % 3 == 0, "untrusted" if i % 7 == 0 else "high") for i in range(20)]
    social = spark.createDataFrame(rows[:14], "customer_id string, event_time timestamp, complaint boolean, trust_level string")
    orders = spark.createDataFrame([(c, t, level) for c, t, _, level in rows[6:]], "customer_id string, event_time timestamp, trust_level string")
    daily = silver_partials({"social": social, "transaction": orders}, FUNCTIONAL)
    as_of = F.lit(AS_OF)
    variants = parameter_variants(daily, FUNCTIONAL, as_of, STRATEGIC.validity.windows)

    def variant(name):
        return variants.where(F.col("variant") == name).drop("variant")

    for source in ("social", "transaction"):
        assertDataFrameEqual(variant(f"without_{source}"), customer_parameters({**daily, source: daily[source].limit(0)}, FUNCTIONAL, as_of))
    assertDataFrameEqual(variant("as_of_minus_10d"), customer_parameters(daily, FUNCTIONAL, F.lit(AS_OF - timedelta(days=10))))
    assertDataFrameEqual(variant("with_untrusted"), customer_parameters(daily, FUNCTIONAL, as_of, include_untrusted=True))
    # Not vacuous: 14 customers order, 2 of them only as untrusted producers; the earlier window
    # counts other orders.
    assert variant("without_social").count() == 12 and variant("with_untrusted").count() == 20
    assert variant("as_of_minus_10d").exceptAll(customer_parameters(daily, FUNCTIONAL, as_of)).count() > 0


def _purchase_histories(spark):
    """CDNOW's published customer histories (in days) in two groups, by id parity, with spend
    drawn as Gamma-Gamma assumes; a third group of one-time buyers cannot be fitted."""
    summary = pd.read_csv(sample_data() / "cdnow" / "cdnow_customers_summary.csv")
    rng = np.random.default_rng(5)
    rows = []
    for c in summary.itertuples():
        x = int(c.frequency)
        spend = float(rng.gamma(6.0, 1.0 / rng.gamma(4.0, 1.0 / 15.0), size=x).mean()) if x else None
        rows.append((int(c.ID) % 2, f"C{c.ID}", x, round(c.recency * 7), round(c.T * 7), spend, int(rng.poisson(1))))
    rows += [(2, f"O{i}", 0, 0, 100 + i, None, 0) for i in range(50)]
    schema = ("_group int, customer_id string, repeat_purchase_days long, purchase_span_days int, customer_age_days int, "
              "repeat_spend_avg double, holdout_purchase_days long")  # fmt: skip
    return spark.createDataFrame(rows, schema)


def test_refits_of_all_groups_at_once_equal_one_fit_per_group(spark):
    """V1-V5 refit the purchase model per group in one pass; each group's KPIs are those of
    fitting and scoring that group alone, and a group that cannot be fitted has no model KPI."""
    directive = load_directives(REPO / "directives" / "cdnow", REPO / "schemas").only("strategic").directive
    frame = _purchase_histories(spark)
    start = fit_purchase_model(frame.drop("_group"), directive.purchase_model)
    together = kpi_values_by(directive, start)(frame, "_group")
    assert set(together) == {0, 1, 2}
    for group in (0, 1):
        part = frame.where(F.col("_group") == group).drop("_group")
        alone = score_customers(part, directive.purchase_model, fit_purchase_model(part, directive.purchase_model, start))
        expected = {r["kpi"]: r["value"] for r in kpi_rows(alone, directive).collect()}
        assert together[group] == pytest.approx(expected, rel=1e-6), group
    assert together[0]["customer_lifetime_value"] != pytest.approx(together[1]["customer_lifetime_value"], rel=1e-3)
    assert together[2]["customer_lifetime_value"] is None and together[2]["expected_active_share"] is None
    assert together[2]["repeat_buyer_share"] == 0.0  # KPIs on parameters keep their value
