"""Transactions datafied: amounts in one base currency, line items and promotions as columns.

Rates come from a CSV table in conf/ (`currency,units_per_base,valid_from`): one unit of
the base currency buys `units_per_base` of `currency` from `valid_from` (a UTC date) until
the currency's next row. The lookup is compiled into one CASE expression, so each row is
converted without a join; an order dated before its currency's first rate gets no base
amount (null) rather than a guessed one.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.derived_fields import ORDER_FIELDS
from pipelines.rates import RateTable

def fx_rate(currency: Column, when: Column, table: RateTable) -> Column:
    """Units of `currency` per base unit on the date of `when`; null if the table has none."""
    day = F.to_date(when)
    rate = None
    for r in sorted(table.rates, key=lambda r: r.valid_from, reverse=True):  # newest first: first match wins
        matches = (currency == r.currency) & (day >= F.lit(r.valid_from))
        rate = F.when(matches, F.lit(r.units_per_base)) if rate is None else rate.when(matches, F.lit(r.units_per_base))
    return rate if rate is not None else F.lit(None).cast("double")


def datafy_orders(rows: DataFrame, table: RateTable, amount: str, currency: str, items: str, promotion: str, time_column: str) -> DataFrame:
    """Rows plus ORDER_FIELDS: base-currency amounts, and the line items and promotion as columns."""
    return rows.select("*", *order_columns(table, amount, currency, items, promotion, time_column))


def order_columns(table: RateTable, amount: str, currency: str, items: str, promotion: str, time_column: str) -> list[Column]:
    """ORDER_FIELDS as columns over an order's fields (see `datafy_orders`); build them once per
    job: the rate lookup alone is over a thousand calls into the JVM."""
    rate = fx_rate(F.col(currency), F.col(time_column), table)
    lines = F.col(items)
    subtotal = F.aggregate(lines, F.lit(0.0), lambda acc, i: acc + i["quantity"] * i["unit_price"])
    discount = F.round(subtotal - F.col(amount), 2)
    derived = {
        "base_currency": F.lit(table.base),
        "fx_rate": rate,
        "amount_base": F.round(F.col(amount) / rate, 2),
        "item_count": F.size(lines),
        "units": F.aggregate(lines, F.lit(0).cast("long"), lambda acc, i: acc + i["quantity"]),
        "skus": F.transform(lines, lambda i: i["sku"]),
        "products": F.transform(lines, lambda i: i["product"]),
        "items_subtotal": F.round(subtotal, 2),
        "promoted": F.col(promotion).isNotNull(),
        "discount": discount,
        "discount_base": F.round(discount / rate, 2),
    }
    return [derived[f.name].cast(f.dataType).alias(f.name) for f in ORDER_FIELDS]
