"""Great Expectations rules compiled from directives: refused early, judged by GE per batch."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.crom.validate import BatchValidator, check_expectations, compile_rules, failures_that_stop
from pipelines.directives import Source
from pipelines.errors import CrmError


def _source(*rules):
    rules = [{"action": "quarantine", "protects": ["p"], **r} for r in rules]
    return Source.model_validate({"topic": "t", "schema": "web.v1", "trust": {"producers": ["w"]}, "expectations": rules})


def test_unknown_expectation_type_is_refused():
    src = _source({"name": "r1", "type": "expect_column_values_to_be_pretty", "kwargs": {"column": "page"}})
    with pytest.raises(CrmError, match=r"ops.yaml: sources.web.expectations\[0\] \(r1\): type: 'expect_column_values_to_be_pretty'"):
        check_expectations({"web": src}, "ops.yaml")


def test_bad_kwargs_are_refused():
    src = _source({"name": "r2", "type": "expect_column_values_to_be_between", "kwargs": {"column": "page", "min_value": "low", "maxi": 3}})
    with pytest.raises(CrmError, match=r"ops.yaml: sources.web.expectations\[0\] \(r2\): kwargs"):
        check_expectations({"web": src}, "ops.yaml")


def test_batch_level_rule_cannot_quarantine_rows():
    src = _source({"name": "r3", "type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1}})
    with pytest.raises(CrmError, match=r"\(r3\): action: expect_table_row_count_to_be_between judges the whole batch"):
        check_expectations({"web": src}, "ops.yaml")


def test_rule_one_pass_cannot_evaluate_is_refused():
    src = _source({"name": "r4", "type": "expect_column_values_to_be_unique", "kwargs": {"column": "event_id"}, "action": "warn"})
    with pytest.raises(CrmError, match=r"\(r4\): type: expect_column_values_to_be_unique compares rows"):
        check_expectations({"web": src}, "ops.yaml")


@pytest.fixture
def judged(spark):
    src = _source(
        {"name": "session_present", "type": "expect_column_values_to_not_be_null", "kwargs": {"column": "session_id"}},
        {"name": "known_type", "type": "expect_column_values_to_be_in_set", "kwargs": {"column": "event_type", "value_set": ["page_view", "click"]}, "action": "warn"},
        {"name": "mostly_known", "type": "expect_column_values_to_be_in_set", "kwargs": {"column": "event_type", "value_set": ["page_view", "click"], "mostly": 0.7}, "action": "fail"},
        {"name": "rows", "type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 5}, "action": "warn"},
        {"name": "unique_ids", "type": "expect_column_proportion_of_unique_values_to_be_between", "kwargs": {"column": "event_id", "min_value": 1.0}, "action": "warn"},
    )
    rules = compile_rules({"web": src}, "ops.yaml")
    schema = T.StructType([T.StructField(f"web__{c}", T.StringType()) for c in ("session_id", "event_type", "event_id")])
    validator = BatchValidator(spark, rules, schema, "operational.t", 3)
    df = spark.createDataFrame(
        [("web", "s1", "click", "e1"), ("web", None, "click", "e2"), ("web", "s3", "scroll", "e3"), ("web", "s4", "page_view", "e3"), ("log", None, None, None)],
        "src string, web__session_id string, web__event_type string, web__event_id string",
    )
    in_source = lambda source: F.col("src") == source  # noqa: E731
    flagged = df.select(
        "web__event_id", validator.failed_rules("web", "quarantine").alias("q"), validator.failed_rules("web", "warn").alias("w")
    ).where(in_source("web") | F.lit(False))
    totals = df.agg(*validator.aggregates(in_source)).first()
    return {r["rule"]: r for r in validator.judge(totals, batch_id=7)}, flagged.collect(), validator, df


def test_rows_are_flagged_by_the_rules_ge_defines(judged):
    _, flagged, _, _ = judged
    by_id = {(r["web__event_id"], tuple(r["w"])): list(r["q"]) for r in flagged if r["web__event_id"]}
    assert by_id[("e2", ())] == ["session_present"]
    assert by_id[("e3", ("known_type",))] == []
    assert by_id[("e1", ())] == []


def test_batch_results_are_counts_judged_by_ge(judged):
    rows, _, _, _ = judged
    assert rows["session_present"]["unexpected_count"] == 1 and rows["session_present"]["success"] is False
    assert rows["known_type"]["unexpected_count"] == 1 and rows["known_type"]["evaluated_count"] == 4
    assert rows["mostly_known"]["success"] is True  # 3 of 4 known >= mostly 0.7: GE's own verdict
    assert rows["rows"]["success"] is False and rows["rows"]["evaluated_count"] == 4
    assert rows["unique_ids"]["observed_value"] == pytest.approx(0.75) and rows["unique_ids"]["success"] is False
    assert all(r["batch_id"] == 7 and r["directive_version"] == 3 and r["protects"] == ["p"] for r in rows.values())
    assert failures_that_stop(list(rows.values())) == []


def test_a_failing_fail_rule_stops_and_an_empty_source_is_not_judged(judged):
    _, _, validator, df = judged
    only_bad = df.where(F.col("web__event_type") == "scroll")
    totals = only_bad.agg(*validator.aggregates(lambda s: F.col("src") == s)).first()
    stops = failures_that_stop(validator.judge(totals, batch_id=8))
    assert [r["rule"] for r in stops] == ["mostly_known"]
    empty = df.where(F.lit(False)).agg(*validator.aggregates(lambda s: F.col("src") == s)).first()
    assert validator.judge(empty, batch_id=9) == []
