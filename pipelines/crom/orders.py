"""Transactions datafied: amounts in one base currency, line items and promotions as columns.

Rates come from a CSV table in conf/ (`currency,units_per_base,valid_from`): one unit of
the base currency buys `units_per_base` of `currency` from `valid_from` (a UTC date) until
the currency's next row. The lookup is compiled into one CASE expression, so each row is
converted without a join; an order dated before its currency's first rate gets no base
amount (null) rather than a guessed one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.errors import CrmError

ORDER_FIELDS = (
    T.StructField("base_currency", T.StringType(), True),
    T.StructField("fx_rate", T.DoubleType(), True),  # units of the order currency per base unit
    T.StructField("amount_base", T.DoubleType(), True),
    T.StructField("item_count", T.IntegerType(), True),
    T.StructField("units", T.LongType(), True),
    T.StructField("skus", T.ArrayType(T.StringType()), True),
    T.StructField("products", T.ArrayType(T.StringType()), True),
    T.StructField("items_subtotal", T.DoubleType(), True),
    T.StructField("promoted", T.BooleanType(), True),
    T.StructField("discount", T.DoubleType(), True),  # items' list total minus the amount paid
    T.StructField("discount_base", T.DoubleType(), True),
)


@dataclass(frozen=True)
class Rate:
    currency: str
    units_per_base: float
    valid_from: date


@dataclass(frozen=True)
class RateTable:
    base: str
    rates: tuple[Rate, ...]

    @property
    def currencies(self) -> set[str]:
        return {r.currency for r in self.rates}


def read_rates(path: Path) -> RateTable:
    """The rate table; CrmError naming the file and line for anything it cannot use."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CrmError(f"{path}: cannot read the currency rate table: {exc}") from exc
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    if reader.fieldnames != ["currency", "units_per_base", "valid_from"]:
        raise CrmError(f"{path}: the header must be currency,units_per_base,valid_from, found {reader.fieldnames}")
    rates, seen = [], set()
    for n, row in enumerate(reader, start=2):
        where = f"{path}: data row {n - 1}"
        currency = (row["currency"] or "").strip()
        if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
            raise CrmError(f"{where}: currency {currency!r} is not an ISO 4217 code")
        try:
            units = float(row["units_per_base"])
            valid_from = date.fromisoformat((row["valid_from"] or "").strip())
        except (TypeError, ValueError) as exc:
            raise CrmError(f"{where}: {exc}") from exc
        if not units > 0 or units == float("inf"):
            raise CrmError(f"{where}: units_per_base must be a positive number, found {row['units_per_base']!r}")
        if (currency, valid_from) in seen:
            raise CrmError(f"{where}: {currency} has two rates from {valid_from}")
        seen.add((currency, valid_from))
        rates.append(Rate(currency, units, valid_from))
    bases = {r.currency for r in rates if r.units_per_base == 1.0} - {r.currency for r in rates if r.units_per_base != 1.0}
    if len(bases) != 1:
        raise CrmError(f"{path}: exactly one currency must have units_per_base 1 on every row (the base), found {sorted(bases)}")
    return RateTable(base=bases.pop(), rates=tuple(sorted(rates, key=lambda r: (r.currency, r.valid_from))))


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
    return rows.select(*rows.columns, *[derived[f.name].cast(f.dataType).alias(f.name) for f in ORDER_FIELDS])
