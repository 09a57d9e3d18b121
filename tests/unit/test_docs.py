"""`crm docs`: GE Data Docs rendered from the validation results table, counts only."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from pipelines.crom.docs import build_data_docs
from pipelines.crom.validate import RESULTS_SCHEMA
from pipelines.errors import CrmError
from pipelines.tables import CromTables

WHEN = datetime(2024, 5, 1, 12, 0, 0)


def _row(batch_id, source, rule, type_, kwargs, action, evaluated, unexpected, observed, success):
    return (batch_id, source, rule, type_, json.dumps(kwargs, sort_keys=True), kwargs.get("column"), action, ["p"],
            evaluated, unexpected, observed, success, "operational.ingest_events", 2, WHEN)


ROWS = [
    # batch 3 is older than the one batch the docs are asked for
    _row(3, "web", "web_session_present", "expect_column_values_to_not_be_null", {"column": "session_id"}, "quarantine", 10, 0, None, True),
    _row(7, "web", "web_session_present", "expect_column_values_to_not_be_null", {"column": "session_id"}, "quarantine", 100, 0, None, True),
    _row(7, "web", "web_event_type_known", "expect_column_values_to_be_in_set",
         {"column": "event_type", "value_set": ["click", "page_view"]}, "quarantine", 100, 3, None, False),
    _row(7, "transaction", "transaction_mean_amount_plausible", "expect_column_mean_to_be_between",
         {"column": "amount", "min_value": 5, "max_value": 5000}, "warn", 50, None, 7200.5, False),
    _row(7, "transaction", "transaction_batch_not_empty", "expect_table_row_count_to_be_between",
         {"min_value": 1, "max_value": 1000000}, "warn", 50, None, None, True),
]


def _table_row(page: str, text: str) -> str:
    """The HTML table row that holds text."""
    i = page.index(text)
    return page[page.rindex("<tr", 0, i): page.index("</tr>", i)]


def test_docs_render_newest_batches_with_rule_status(spark, profile, directives):
    operational = directives.only("operational")
    path = CromTables.of(profile, list(operational.directive.sources)).validation_results
    spark.createDataFrame(ROWS, RESULTS_SCHEMA).write.format("delta").save(path)

    index = build_data_docs(spark, profile, operational, last_batches=1)

    assert index == profile.lakehouse / "_data_docs/gx/uncommitted/data_docs/local_site/index.html"
    assert index.is_file()
    site = index.parent
    pages = {p.stem: p.read_text() for p in (site / "validations").rglob("*.html")}
    assert sorted(pages) == ["transaction-7", "web-7"]  # batch 3 is outside the window
    assert "web-7.html" in index.read_text() and "transaction-7.html" in index.read_text()

    web = pages["web-7"]
    failed = _table_row(web, "web_event_type_known")
    assert "expect_column_values_to_be_in_set" in failed
    assert "fa-times text-danger" in failed and "3% unexpected" in failed
    assert "fa-check-circle text-success" in _table_row(web, "web_session_present")
    assert re.search(r"Status:.{0,300}Failed", web, re.DOTALL)

    transaction = pages["transaction-7"]
    mean = _table_row(transaction, "transaction_mean_amount_plausible")
    assert "expect_column_mean_to_be_between" in mean and "fa-times text-danger" in mean and "7200.5" in mean
    row_count = _table_row(transaction, "transaction_batch_not_empty")
    assert "fa-check-circle text-success" in row_count and ">50<" in re.sub(r"\s+", "", row_count)

    # The stored GE results hold counts, never value lists.
    stored = next((profile.lakehouse / "_data_docs/gx/uncommitted/validations").rglob("web-7.json"))
    results = {r["expectation_config"]["meta"]["rule"]: r["result"] for r in json.loads(stored.read_text())["results"]}
    assert results["web_event_type_known"] == {"element_count": 100, "unexpected_count": 3, "unexpected_percent": 3.0}


def test_docs_before_any_ingest_say_what_to_run(spark, profile, directives):
    with pytest.raises(CrmError, match=r"no validation results at .*validation_results yet; run `crm ingest --until-caught-up` first"):
        build_data_docs(spark, profile, directives.only("operational"))
