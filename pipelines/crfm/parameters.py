"""Compile a functional directive's parameters into Spark aggregations, per customer.

The work is split in two so new events can be added without re-reading old ones:

- `daily_partials` folds silver events into one row per customer, day and trust: for each
  parameter, the partial sums its measure needs (rows, totals, distinct values, the latest
  value). Partials of the same key add up (`added_up`), so the rows of each micro-batch of
  new events can simply be appended, and added up when read.
- `customer_parameters` rolls those rows up into one row per customer, for a given as_of
  and trust choice: windows, holdouts and recency are decided here, on whole days.

A breakdown's parameter `attributed_by` another source takes its grain from there (e.g. an
order's campaign from its customer's newest campaign visit): its partials are kept per
customer, beside the customer's newest grain value per day (`<source>_touches`), and
`attribute` joins them in the roll-up.

Windows are whole days: `window_days: 90` counts the 90 days up to and including the as_of
day; a holdout counts the N days after it. as_of is the end of the directive's as_of day,
else the end of the newest event's day, so a rerun on the same data gives the same numbers.
Row measures aggregate events; day measures make each customer's events of one day one
purchase day, as BG/NBD and Gamma-Gamma count purchases. Expressions are checked against
the silver schemas by building a plan on an empty DataFrame, which runs no job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time
from functools import reduce

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.directives import CUSTOMER, DAY_MEASURES, UNTRUSTED, Attribution, FunctionalDirective, Parameter, Windows
from pipelines.errors import CrmError

EVENT_TIME = "event_time"
DAY = "day"
TRUSTED = "trusted"  # False for events of producers no source lists
VARIANT = "variant"

# The partial sums each measure needs, per customer, day and trust.
ROWS, TOTAL, VALUES, DISTINCT, LAST, BASE = "rows", "total", "values", "distinct", "last", "base"
LIST = "list"  # every value: a median needs them all
ITEMS = "items"  # each event's item, time and whether the filter keeps it: for `latest_per`
PARTS = {
    "count": (ROWS,),
    "sum": (TOTAL,),
    "avg": (TOTAL, VALUES),
    "median": (LIST,),
    "count_distinct": (DISTINCT,),
    "last": (LAST,),
    "recency_days": (ROWS,),
    "ratio": (ROWS, BASE),  # the events counted, and the events they are a share of
    **{measure: (ROWS, TOTAL) for measure in DAY_MEASURES},
}


def part_kinds(param: Parameter) -> tuple[str, ...]:
    """The partial sums a parameter's roll-up needs."""
    return (ITEMS,) if param.latest_per else PARTS[param.measure]


def part(param: Parameter, kind: str) -> str:
    return f"{param.name}__{kind}"


def keys(grain: str) -> list[str]:
    return [grain, DAY, TRUSTED]


def _kept(condition: str | None) -> Column:
    return F.coalesce(F.expr(condition), F.lit(False)) if condition else F.lit(True)


def _partial(param: Parameter, kind: str) -> Column:
    """One partial sum of a parameter over a group of events: only the rows its filter keeps
    (a ratio's denominator, BASE, only the rows its `of` keeps)."""
    kept = _kept(param.filter) & _kept(param.of)
    value = F.col(param.column) if param.column else F.lit(None).cast(T.DoubleType())
    if kind == ROWS:
        agg = F.count(F.when(kept, 1))
    elif kind == BASE:
        agg = F.count(F.when(_kept(param.of), 1))
    elif kind == TOTAL:
        agg = F.sum(F.when(kept, value).cast(T.DoubleType()))
    elif kind == VALUES:
        agg = F.count(F.when(kept, value))
    elif kind == DISTINCT:
        agg = F.collect_set(F.when(kept, value))
    elif kind == LIST:
        agg = F.collect_list(F.when(kept, value).cast(T.DoubleType()))
    elif kind == ITEMS:
        item = F.col(param.latest_per).cast(T.StringType())
        # `kept` made nullable: Delta refuses NOT NULL fields inside arrays.
        event = F.struct(item.alias("item"), F.col(EVENT_TIME).alias("at"), F.when(item.isNotNull(), kept).alias("kept"))
        agg = F.collect_list(F.when(item.isNotNull(), event))
    else:  # LAST: the newest event's value; on a tie in time, the larger value, as in any order
        agg = F.max(F.when(kept, F.struct(F.col(EVENT_TIME).alias("at"), value.alias("value"))))
    return agg.alias(part(param, kind))


def daily_partials(silver: DataFrame, params: list[Parameter], grain: str) -> DataFrame:
    """One row per customer, day and trust with each parameter's partial sums (pure)."""
    events = silver.where(F.col(grain).isNotNull() & F.col(EVENT_TIME).isNotNull())
    trusted = F.coalesce(F.col("trust_level") != F.lit(UNTRUSTED), F.lit(False))  # none given: untrusted
    by = [F.col(grain), F.to_date(EVENT_TIME).alias(DAY), trusted.alias(TRUSTED)]
    return events.groupBy(*by).agg(*[_partial(p, kind) for p in params for kind in part_kinds(p)])


def added_up(partials: DataFrame, params: list[Parameter], by: list[str]) -> DataFrame:
    """Partials with the same `by` values added up into one row: counts and totals summed,
    distinct values united, the newest value kept (pure)."""
    sums = []
    for param in params:
        for kind in part_kinds(param):
            c = F.col(part(param, kind))
            if kind == DISTINCT:
                agg = F.array_distinct(F.flatten(F.collect_list(c)))
            elif kind in (LIST, ITEMS):
                agg = F.flatten(F.collect_list(c))
            elif kind == LAST:
                agg = F.max(c)
            else:
                agg = F.sum(c)
            sums.append(agg.alias(part(param, kind)))
    return partials.groupBy(*by).agg(*sums)


def _per_day(daily: DataFrame, params: list[Parameter], grain: str) -> DataFrame:
    """All rows of one grain value and day added up: trusted and untrusted (the trust choice
    is made), and repeated keys (each run appends its own rows)."""
    return added_up(daily, params, [grain, DAY])


def _days_in_scope(param: Parameter, as_of_day: Column) -> Column:
    """The days a parameter counts: up to as_of (back window_days), or the holdout after it."""
    day = F.col(DAY)
    if param.holdout_days:
        return (day > as_of_day) & (day <= F.date_add(as_of_day, param.holdout_days))
    scope = day <= as_of_day
    if param.window_days:
        scope = scope & (day > F.date_sub(as_of_day, param.window_days))
    return scope


def _median(ordered: Column) -> Column:
    """The middle of sorted values, or the mean of the two middle ones; null for none."""
    n = F.size(ordered)
    middle = F.element_at(ordered, ((n + 1) / 2).cast("int"))
    return F.when(n % 2 == 1, middle).when(n > 0, (middle + F.element_at(ordered, (n / 2 + 1).cast("int"))) / 2)


def _newest_kept(events: Column) -> Column:
    """How many items' newest event is kept, over (item, at, kept) structs sorted by item and
    time: a fold that remembers the current item's newest state (on a tie in time, kept wins)."""
    start = F.struct(F.lit(None).cast(T.StringType()).alias("item"), F.lit(0).alias("done"), F.lit(0).alias("current"))

    def step(acc: Column, event: Column) -> Column:
        same = acc["item"].isNotNull() & (acc["item"] == event["item"])
        done = F.when(same, acc["done"]).otherwise(acc["done"] + acc["current"])
        return F.struct(event["item"].alias("item"), done.alias("done"), event["kept"].cast("int").alias("current"))

    return F.aggregate(events, start, step, lambda acc: acc["done"] + acc["current"]).cast(T.LongType())


def rollup(param: Parameter, as_of_day: Column) -> Column:
    """The aggregate Column of a parameter over one customer's per-day partials; counts and
    sums are 0, not null, when nothing is in scope."""
    scope = _days_in_scope(param, as_of_day)
    c = {kind: F.when(scope, F.col(part(param, kind))) for kind in part_kinds(param)}
    measure = param.measure
    if param.latest_per:  # a count of the items whose newest event in scope the filter keeps
        agg = _newest_kept(F.array_sort(F.flatten(F.collect_list(c[ITEMS]))))
    elif measure == "count":
        agg = F.coalesce(F.sum(c[ROWS]), F.lit(0).cast(T.LongType()))
    elif measure == "sum":
        agg = F.coalesce(F.sum(c[TOTAL]), F.lit(0.0))
    elif measure == "avg":
        values = F.sum(c[VALUES])
        agg = F.when(values > 0, F.sum(c[TOTAL]) / values)
    elif measure == "median":
        agg = _median(F.array_sort(F.flatten(F.collect_list(c[LIST]))))
    elif measure == "count_distinct":
        agg = F.size(F.array_distinct(F.flatten(F.collect_list(c[DISTINCT]))))
    elif measure == "last":
        agg = F.max(c[LAST])["value"]
    elif measure == "ratio":
        base = F.sum(c[BASE])
        agg = F.when(base > 0, F.sum(c[ROWS]) / base)
    elif measure == "recency_days":
        agg = F.datediff(as_of_day, F.max(F.when(c[ROWS] > 0, F.col(DAY))))
    else:  # a day measure: the days with an event its filter keeps are purchase days
        day = F.when(c[ROWS] > 0, F.col(DAY))
        days = F.count(day)
        if measure == "active_days":
            agg = days
        elif measure == "repeat_days":
            agg = F.when(days > 0, days - 1)
        elif measure == "first_to_last_days":
            agg = F.datediff(F.max(day), F.min(day))
        elif measure == "tenure_days":
            agg = F.datediff(as_of_day, F.min(day))
        elif measure == "repeat_avg":  # the first day's total left out: BG/NBD counts repeat purchases
            total = F.col(part(param, TOTAL))
            agg = F.when(days > 1, (F.sum(F.when(day.isNotNull(), total)) - F.min_by(total, day)) / (days - 1))
        else:  # the directive model admits no other measure
            raise ValueError(measure)
    return agg.alias(param.name)


def by_source(directive: FunctionalDirective) -> dict[str, list[Parameter]]:
    groups: dict[str, list[Parameter]] = {}
    for param in directive.parameters:
        groups.setdefault(param.source, []).append(param)
    return groups


@dataclass(frozen=True)
class Feed:
    """One partials table: a source's events folded at one grain."""

    source: str
    params: tuple[Parameter, ...]
    grain: str


def _touch(grain: str) -> Parameter:
    """The newest value of the grain a customer's events carried each day: what attribution reads."""
    return Parameter.model_validate({"name": "touch", "class": "probe", "source": "-", "measure": "last", "column": grain, "filter": f"{grain} IS NOT NULL"})


def _attribution(params: list[Parameter]) -> Attribution | None:
    return params[0].attributed_by  # the same for every parameter of a source (checked when the directives load)


def feeds(directive: FunctionalDirective) -> dict[str, Feed]:
    """The partials a directive folds, by name: each source's parameters at the directive's grain,
    or at the customer's when attributed, with `<source>_touches` holding the grain to attribute."""
    out = {}
    for source, params in by_source(directive).items():
        attribution = _attribution(params)
        out[source] = Feed(source, tuple(params), CUSTOMER if attribution else directive.grain)
        if attribution:
            out[f"{attribution.source}_touches"] = Feed(attribution.source, (_touch(directive.grain),), CUSTOMER)
    return out


def attribute(per_day: DataFrame, touches: DataFrame, grain: str, within_days: int) -> DataFrame:
    """Per-customer, per-day rows given the `grain` of the customer's newest touch on that day or
    the `within_days` before (last touch); days without one are left out (pure)."""
    newest = part(_touch(grain), LAST)
    touched = touches.where(F.col(newest).isNotNull()).select(F.col(CUSTOMER).alias("_by"), F.col(DAY).alias("_on"), F.col(newest).alias("_touch"))
    near = (F.col("_by") == F.col(CUSTOMER)) & F.col("_on").between(F.date_sub(F.col(DAY), within_days), F.col(DAY))
    # per_day has one row per customer and day: the rows of a group carry the same partials.
    kept = [F.first(c).alias(c) for c in per_day.columns if c not in (CUSTOMER, DAY)]
    return per_day.join(touched, near).groupBy(CUSTOMER, DAY).agg(F.max("_touch")["value"].alias(grain), *kept)


def _trust(daily: DataFrame, include_untrusted: bool) -> DataFrame:
    return daily if include_untrusted else daily.where(F.col(TRUSTED))


def _per_grain_day(daily: dict[str, DataFrame], source: str, params: list[Parameter], grain: str, include: bool) -> DataFrame:
    """A source's partials with the trust choice made, one row per grain value and day."""
    attribution = _attribution(params)
    if attribution is None:
        return _per_day(_trust(daily[source], include), params, grain)
    per_customer = _per_day(_trust(daily[source], include), params, CUSTOMER)
    touches = _per_day(_trust(daily[f"{attribution.source}_touches"], include), [_touch(grain)], CUSTOMER)
    return _per_day(attribute(per_customer, touches, grain, attribution.within_days), params, grain)


def source_parts(
    daily: dict[str, DataFrame],
    directive: FunctionalDirective,
    as_of: Column,
    include_untrusted: bool | None = None,
    earlier: dict[str, int] | None = None,
) -> dict[str, DataFrame]:
    """Per source, one row per customer with that source's parameters, rolled up from its daily
    partials. Trust follows the directive unless given. `earlier` (label -> days) adds each
    parameter as of that many days earlier, as `<name>@<label>`, in the same aggregation."""
    include = directive.include_untrusted if include_untrusted is None else include_untrusted
    as_of_day = F.to_date(as_of)
    days = {"": as_of_day} | {f"@{label}": F.date_sub(as_of_day, n) for label, n in (earlier or {}).items()}
    return {
        source: _per_grain_day(daily, source, params, directive.grain, include)
        .groupBy(directive.grain)
        .agg(*[rollup(p, day).alias(p.name + suffix) for suffix, day in days.items() for p in params])
        for source, params in by_source(directive).items()
    }


def earlier_labels(windows: Windows) -> dict[str, int]:
    """The earlier as_of of each window but the newest (V2), by variant name."""
    return {f"as_of_minus_{k * windows.step_days}d": k * windows.step_days for k in range(1, windows.count)}


def _present(source: str) -> str:
    return f"_in_{source}"


def wide(parts: dict[str, DataFrame], directive: FunctionalDirective) -> DataFrame:
    """One full join of the source parts, every column kept, with `_in_<source>` true for the
    keys that source has: the parameters and the variants but the trust flip project it."""
    flagged = [part.withColumn(_present(source), F.lit(True)) for source, part in parts.items()]
    return reduce(lambda left, right: left.join(right, directive.grain, "full_outer"), flagged)


def parameters_of(joined: DataFrame, directive: FunctionalDirective, label: str | None = None, without: str | None = None) -> DataFrame:
    """One row per customer with every parameter, out of `wide`'s join: as of an `earlier`
    label's day, or with the `without` source left out (its customers kept only where another
    source has them). Customers missing from a source get 0 counts."""
    suffix = f"@{label}" if label else ""
    rows = joined
    if without is not None:
        others = [F.col(_present(source)) for source in by_source(directive) if source != without]
        rows = joined.where(reduce(Column.__or__, others)) if others else joined.limit(0)

    def value(param: Parameter) -> Column:
        name = param.name + suffix
        return F.lit(None).cast(joined.schema[name].dataType) if param.source == without else F.col(name)

    zero_when_absent = {p.name: 0 for p in directive.parameters if p.measure in ("count", "count_distinct", "sum", "active_days")}
    return rows.select(directive.grain, *[value(p).alias(p.name) for p in directive.parameters]).fillna(zero_when_absent)


def customer_parameters(
    daily: dict[str, DataFrame], directive: FunctionalDirective, as_of: Column, include_untrusted: bool | None = None
) -> DataFrame:
    """One row per customer with every parameter, from each source's daily partials."""
    return parameters_of(wide(source_parts(daily, directive, as_of, include_untrusted), directive), directive)


def silver_partials(silver: dict[str, DataFrame], directive: FunctionalDirective) -> dict[str, DataFrame]:
    """Each feed's daily partials computed straight from silver: a full recompute."""
    return {name: daily_partials(silver[feed.source], list(feed.params), feed.grain) for name, feed in feeds(directive).items()}


def analysis_error(exc: AnalysisException | ParseException) -> str:
    return str(exc).strip().splitlines()[0]


def check_plan(spark: SparkSession, directive: FunctionalDirective, schemas: dict[str, T.StructType], where: str) -> DataFrame:
    """Analyse every parameter's partials and roll-up on an empty frame of each silver schema;
    no job runs. Returns the (empty) parameters frame, for checks of what is built on it."""
    as_of = F.lit("2000-01-01").cast("timestamp")
    empty = {feed.source: spark.createDataFrame([], schemas[feed.source]) for feed in feeds(directive).values()}
    try:
        planned = customer_parameters(silver_partials(empty, directive), directive, as_of)
        _ = planned.schema  # analysis only
        return planned
    except (AnalysisException, ParseException) as exc:
        error = exc
    # Analysing each parameter alone names the one at fault (all at once takes a tenth of the time).
    for params in by_source(directive).values():
        for param in params:
            single = directive.model_copy(update={"parameters": [param]})
            try:
                _ = customer_parameters(silver_partials(empty, single), single, as_of).schema
            except (AnalysisException, ParseException) as exc:
                raise CrmError(f"{where}: parameters ({param.name}): {analysis_error(exc)}") from exc
    raise CrmError(f"{where}: parameters: {analysis_error(error)}") from error


def as_of_day(directive: FunctionalDirective, daily: dict[str, DataFrame]) -> date | None:
    """The day windows count back from: the directive's as_of, else the newest day with an
    event the directive reads (in its trust choice); None without events."""
    if directive.as_of is not None:
        return directive.as_of
    days = [_trust(frame, directive.include_untrusted).select(DAY) for frame in daily.values()]
    return reduce(DataFrame.unionByName, days).agg(F.max(DAY)).first()[0]


def end_of(day: date | None) -> Column:
    """The instant windows count back from: the end of the as_of day."""
    if day is None:
        return F.lit(None).cast("timestamp")
    return F.lit(datetime.combine(day, time.max)).cast("timestamp")


def as_of_time(directive: FunctionalDirective, daily: dict[str, DataFrame]) -> Column:
    return end_of(as_of_day(directive, daily))


def parameter_variants(
    daily: dict[str, DataFrame], directive: FunctionalDirective, as_of: Column, windows: Windows, joined: DataFrame | None = None
) -> DataFrame:
    """The parameters re-measured for the strategic validity checks, one `variant` each:

    - `with_untrusted` / `without_untrusted`: the other choice of include_untrusted (V5);
    - `without_<source>`: one source left out (V3);
    - `as_of_minus_<n>d`: as of n days earlier, for each earlier window (V2).

    `daily` holds every partial, trusted or not; the trust choice is made in the roll-up.
    `joined` is the directive's own `wide` join of its source_parts with the `earlier` labels
    of these windows, when already computed (e.g. cached): all but the trust flip project it.
    """
    earlier = earlier_labels(windows)
    joined = joined if joined is not None else wide(source_parts(daily, directive, as_of, earlier=earlier), directive)
    flipped = not directive.include_untrusted
    variants = [("with_untrusted" if flipped else "without_untrusted", customer_parameters(daily, directive, as_of, flipped))]
    variants += [(f"without_{source}", parameters_of(joined, directive, without=source)) for source in sorted(by_source(directive))]
    variants += [(label, parameters_of(joined, directive, label=label)) for label in earlier]
    tagged = [frame.withColumn(VARIANT, F.lit(name)) for name, frame in variants]
    return reduce(DataFrame.unionByName, tagged)
