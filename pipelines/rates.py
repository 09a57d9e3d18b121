"""Currency rate tables (conf/currency_rates.csv): read and checked when the directives load.

One unit of the base currency buys `units_per_base` of `currency` from `valid_from` (a UTC
date) until the currency's next row.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from pipelines.errors import CrmError


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
