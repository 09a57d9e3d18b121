"""Which rows `crm forget` takes for a customer's, on real DataFrames (the Delta side is in
tests/integration/test_erasure.py)."""

from __future__ import annotations

import pytest
from pyspark.sql import types as T

from pipelines.erasure import forget, rows_of
from pipelines.errors import CrmError
from pipelines.tables import CromTables

SCHEMA = T.StructType([
    T.StructField("id", T.IntegerType()),
    T.StructField("customer_id", T.StringType()),
    T.StructField("payload", T.StringType()),
    T.StructField("customer_email_hmac", T.StringType()),
    T.StructField("amount", T.DoubleType()),
])  # fmt: skip


def test_a_row_is_the_customers_when_a_string_names_the_id_as_a_whole_word_or_holds_their_pseudonym(spark):
    rows = [
        (1, "C0001", None, None, 1.0),  # the id column
        (2, None, '{"customer_id": "C0001", "x": 1}', None, 2.0),  # a raw payload
        (3, None, "2026-06-01 login user=C0001 ok", None, 3.0),  # a log line
        (4, "C00012", "C00012 and XC0001 and C0001_old", None, 4.0),  # longer ids that start or end alike
        (5, None, None, "e3b0c442", 5.0),  # the customer's e-mail pseudonym, no id anywhere
        (6, None, None, "ffff0000", 6.0),  # someone else's pseudonym
        (7, None, None, None, None),  # nulls are nobody's
    ]
    frame = spark.createDataFrame(rows, SCHEMA)
    picked = frame.where(rows_of(SCHEMA, "C0001", ["e3b0c442"]))
    assert sorted(r["id"] for r in picked.collect()) == [1, 2, 3, 5]
    assert sorted(r["id"] for r in frame.where(rows_of(SCHEMA, "C0001", [])).collect()) == [1, 2, 3]


def test_a_table_without_string_columns_has_no_customer_rows():
    assert rows_of(T.StructType([T.StructField("n", T.LongType())]), "C0001", ["k"]) is None


@pytest.mark.parametrize("customer", ["", "  ", "C1' OR 1=1", r"C1\E.*"])
def test_forget_refuses_what_is_not_a_customer_id(spark, profile, customer):
    with pytest.raises(CrmError, match="is not a customer id"):
        forget(spark, profile.lakehouse, CromTables.of(profile, []), customer)
