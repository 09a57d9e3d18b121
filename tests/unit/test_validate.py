"""Great Expectations suites compiled from directives: refused early, counted per batch."""

from __future__ import annotations

import pytest

from pipelines.crom.validate import BatchValidator, check_expectations
from pipelines.directives import Source
from pipelines.errors import CrmError


def _source(*rules):
    return Source.model_validate({"topic": "t", "schema": "web.v1", "expectations": list(rules)})


def test_unknown_expectation_type_is_refused():
    src = _source({"name": "r1", "type": "expect_column_values_to_be_pretty", "kwargs": {"column": "page"}})
    with pytest.raises(CrmError, match=r"ops.yaml: sources.web.expectations\[0\] \(r1\): type: 'expect_column_values_to_be_pretty'"):
        check_expectations({"web": src}, "ops.yaml")


def test_bad_kwargs_are_refused():
    src = _source({"name": "r2", "type": "expect_column_values_to_be_between", "kwargs": {"column": "page", "min_value": "low", "maxi": 3}})
    with pytest.raises(CrmError, match=r"ops.yaml: sources.web.expectations\[0\] \(r2\): kwargs"):
        check_expectations({"web": src}, "ops.yaml")


def test_batch_results_count_unexpected_rows(spark):
    src = _source(
        {"name": "session_present", "type": "expect_column_values_to_not_be_null", "kwargs": {"column": "session_id"}},
        {"name": "known_type", "type": "expect_column_values_to_be_in_set", "kwargs": {"column": "event_type", "value_set": ["page_view", "click"]}},
    )
    validator = BatchValidator({"web": src}, "operational.t", 3, "ops.yaml")
    df = spark.createDataFrame(
        [("e1", "s1", "click"), ("e2", None, "click"), ("e3", "s3", "scroll"), ("e4", "s4", "page_view")],
        "event_id string, session_id string, event_type string",
    )
    rows = {r["rule"]: r for r in validator.validate("web", df, batch_id=7)}
    assert rows["session_present"]["unexpected_count"] == 1 and rows["session_present"]["success"] is False
    assert rows["known_type"]["unexpected_count"] == 1 and rows["known_type"]["evaluated_count"] == 4
    assert all(r["batch_id"] == 7 and r["directive_version"] == 3 for r in rows.values())
    assert validator.validate("web", df.limit(0), batch_id=8) == []
