"""Which rows `crm forget` takes for a customer's, on real DataFrames (the Delta side is in
tests/integration/test_erasure.py)."""

from __future__ import annotations

import pytest
from pyspark.sql import types as T

from pipelines.erasure import _request, customer_ids, forget, read_requests, rows_of
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
        (8, None, "login of C.0001, done", None, 8.0),  # an id with a dot: matched by the regex, not by words
    ]
    frame = spark.createDataFrame(rows, SCHEMA).alias("t")

    def picked(ids, pseudonyms):
        return sorted(r["id"] for r in frame.crossJoin(_request(spark, ids, pseudonyms).alias("s")).where(rows_of(SCHEMA)).collect())

    assert picked(["C0001"], ["e3b0c442"]) == [1, 2, 3, 5]
    assert picked(["C0001"], []) == [1, 2, 3]
    assert picked(["C0001", "C00012"], []) == [1, 2, 3, 4]  # several customers in one request
    assert picked(["C.0001"], []) == [8] and picked(["C.0001", "C0001"], []) == [1, 2, 3, 8]


def test_a_table_without_string_columns_has_no_customer_rows():
    assert rows_of(T.StructType([T.StructField("n", T.LongType())])) is None


@pytest.mark.parametrize("customers", [[""], ["  "], ["C1' OR 1=1"], [r"C1\E.*"], ["C1", "two words"]])
def test_forget_refuses_what_is_not_a_customer_id(spark, profile, customers):
    with pytest.raises(CrmError, match="no customer id given|is not a customer id"):
        forget(spark, profile.lakehouse, CromTables.of(profile, []), customers)


def test_a_request_file_holds_one_id_a_line_with_comments(tmp_path):
    requests = tmp_path / "requests.txt"
    requests.write_text("# erasure requests of the week\nC0001\n\n  C0002  # by e-mail\nC0001\n")
    assert customer_ids(read_requests(requests)) == ["C0001", "C0002"]
