"""CRFM: the functional directive's parameters, computed on small hand-made silver tables."""

from __future__ import annotations

from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.crfm.parameters import check_plan, customer_parameters, newest_event
from pipelines.directives import FunctionalDirective
from pipelines.errors import CrmError

AS_OF = datetime(2026, 6, 30, 12, 0)


def _silver(spark):
    tx = spark.createDataFrame(
        [
            ("C1", datetime(2026, 6, 29), 100.0),
            ("C1", datetime(2026, 6, 1), 50.0),
            ("C1", datetime(2026, 1, 1), 999.0),  # outside 90 days
            ("C2", datetime(2026, 6, 20), 10.0),
            (None, datetime(2026, 6, 20), 5.0),  # no customer: not a parameter of anyone
        ],
        "customer_id string, event_time timestamp, amount double",
    )
    social = spark.createDataFrame(
        [
            ("C1", datetime(2026, 6, 25), "my parcel arrived broken"),
            ("C1", datetime(2026, 6, 26), "love it"),
            ("C3", datetime(2026, 6, 30, 12), "worst support ever"),
            ("C3", datetime(2026, 4, 1), "refund please"),  # outside 30 days
        ],
        "customer_id string, event_time timestamp, text string",
    )
    return {"transaction": tx, "social": social}


DIRECTIVE = FunctionalDirective.model_validate(
    {
        "id": "functional.t",
        "version": 1,
        "serves": "strategic.t",
        "description": "test",
        "parameters": [
            {"name": "frequency_90d", "class": "transactional", "source": "transaction", "measure": "count", "window_days": 90},
            {"name": "monetary_sum_90d", "class": "transactional", "source": "transaction", "measure": "sum", "column": "amount", "window_days": 90},
            {"name": "monetary_avg_90d", "class": "transactional", "source": "transaction", "measure": "avg", "column": "amount", "window_days": 90},
            {"name": "recency_days", "class": "transactional", "source": "transaction", "measure": "recency_days"},
            {"name": "last_amount", "class": "transactional", "source": "transaction", "measure": "last", "column": "amount"},
            {"name": "complaints_30d", "class": "probe", "source": "social", "measure": "count", "window_days": 30,
             "filter": "lower(text) RLIKE '(broken|worst|refund)'"},
        ],
    }
)


def test_parameters_per_customer(spark):
    got = customer_parameters(_silver(spark), DIRECTIVE, F.lit(AS_OF))
    expected = spark.createDataFrame(
        [
            ("C1", 2, 150.0, 75.0, 1, 100.0, 1),
            ("C2", 1, 10.0, 10.0, 10, 10.0, 0),
            ("C3", 0, 0.0, None, None, None, 1),
        ],
        "customer_id string, frequency_90d long, monetary_sum_90d double, monetary_avg_90d double, "
        "recency_days int, last_amount double, complaints_30d long",
    )
    assertDataFrameEqual(got, expected)


def test_as_of_is_the_newest_event(spark):
    silver = _silver(spark)
    as_of = spark.range(1).select(newest_event(silver, ["transaction", "social"])).first()[0]
    assert as_of == datetime(2026, 6, 30, 12, 0)


def test_bad_filter_is_refused_before_running(spark):
    broken = DIRECTIVE.model_copy(update={"parameters": [DIRECTIVE.parameters[5].model_copy(update={"filter": "lower(txt) = 'x'"})]})
    schemas = {s: df.schema for s, df in _silver(spark).items()}
    with pytest.raises(CrmError, match=r"f.yaml: parameters \(complaints_30d\): .*txt"):
        check_plan(spark, broken, schemas, "f.yaml")
