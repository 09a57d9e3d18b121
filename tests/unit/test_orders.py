"""Transaction datafication (pipelines.crom.orders): the rate table and the derived columns."""

from __future__ import annotations

from datetime import date

import pytest
from pyspark.sql import functions as F

from pipelines.config import REPO_ROOT
from pipelines.crom.orders import datafy_orders
from pipelines.derived_fields import ORDER_FIELDS
from pipelines.rates import read_rates
from pipelines.errors import CrmError

HEADER = "currency,units_per_base,valid_from\n"
ITEMS = "array<struct<sku:string,product:string,quantity:int,unit_price:double>>"


def _table(tmp_path, body: str):
    path = tmp_path / "rates.csv"
    path.write_text(body)
    return read_rates(path)


def test_shipped_table_has_a_euro_base_and_dated_rates():
    table = read_rates(REPO_ROOT / "conf" / "currency_rates.csv")
    assert table.base == "EUR" and table.currencies == {"EUR", "USD", "GBP"}
    usd = [r for r in table.rates if r.currency == "USD"]
    assert usd == sorted(usd, key=lambda r: r.valid_from) and usd[0].valid_from == date(1997, 1, 1)


@pytest.mark.parametrize(
    "body, message",
    [
        ("currency,rate\nEUR,1\n", "header must be"),
        (HEADER + "EUR,1,2020-01-01\nusd,1.1,2020-01-01\n", "'usd' is not an ISO 4217 code"),
        (HEADER + "EUR,1,2020-01-01\nUSD,-1,2020-01-01\n", "positive number"),
        (HEADER + "EUR,1,2020-01-01\nUSD,nan,2020-01-01\n", "positive number"),
        (HEADER + "EUR,1,2020-01-01\nUSD,1.1,2020-13-01\n", "data row 2"),
        (HEADER + "EUR,1,2020-01-01\nUSD,1.1,2020-01-01\nUSD,1.2,2020-01-01\n", "two rates from 2020-01-01"),
        (HEADER + "USD,1.1,2020-01-01\n", "exactly one currency"),
    ],
)  # fmt: skip
def test_bad_rate_tables_are_refused_with_the_row(tmp_path, body, message):
    with pytest.raises(CrmError, match=message) as caught:
        _table(tmp_path, body)
    assert "rates.csv" in str(caught.value)


def test_missing_table_names_the_file(tmp_path):
    with pytest.raises(CrmError, match="cannot read the currency rate table"):
        read_rates(tmp_path / "nowhere.csv")


def test_orders_get_base_amounts_items_and_promotions(spark, tmp_path):
    table = _table(tmp_path, "# comment lines are skipped\n" + HEADER + "EUR,1,2020-01-01\nUSD,2,2020-01-01\nUSD,4,2021-06-01\nGBP,0.5,2020-01-01\n")
    rows = spark.createDataFrame(
        [
            ("a", "2020-03-01 10:00:00", "USD", 30.0, "SPRING", [("S1", "Lamp", 2, 10.0), ("S2", "Case", 1, 20.0)]),
            ("b", "2021-06-01 00:00:00", "USD", 8.0, None, [("S1", "Lamp", 1, 8.0)]),  # the new rate's first day
            ("c", "2021-05-31 23:59:59", "GBP", 5.0, None, [("S3", "Cable", 5, 1.0)]),
            ("d", "2019-12-31 12:00:00", "EUR", 5.0, None, [("S3", "Cable", 5, 1.0)]),  # before any rate
        ],
        f"event_id string, event_time string, currency string, amount double, promotion_code string, items {ITEMS}",
    ).withColumn("event_time", F.to_timestamp("event_time"))
    out = {r["event_id"]: r for r in datafy_orders(rows, table, "amount", "currency", "items", "promotion_code", "event_time").collect()}
    assert list(out["a"].asDict())[-len(ORDER_FIELDS):] == [f.name for f in ORDER_FIELDS]
    a, b, c, d = (out[k] for k in "abcd")
    assert (a["fx_rate"], a["amount_base"], b["fx_rate"], b["amount_base"], c["amount_base"]) == (2.0, 15.0, 4.0, 2.0, 10.0)
    assert (a["item_count"], a["units"], a["skus"], a["products"]) == (2, 3, ["S1", "S2"], ["Lamp", "Case"])
    assert (a["items_subtotal"], a["discount"], a["discount_base"], a["promoted"]) == (40.0, 10.0, 5.0, True)
    assert (b["promoted"], b["discount"]) == (False, 0.0)
    assert d["base_currency"] == "EUR" and d["fx_rate"] is None and d["amount_base"] is None
