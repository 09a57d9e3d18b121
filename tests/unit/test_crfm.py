"""CRFM: the functional directive's parameters, computed on small hand-made silver tables."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.crfm.parameters import as_of_time, check_plan, customer_parameters, silver_partials
from pipelines.directives import FunctionalDirective
from tests.helpers import transaction_param
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
    ).withColumn("trust_level", F.lit("high"))
    social = spark.createDataFrame(
        [
            ("C1", datetime(2026, 6, 25), "my parcel arrived broken"),
            ("C1", datetime(2026, 6, 26), "love it"),
            ("C3", datetime(2026, 6, 30, 12), "worst support ever"),
            ("C3", datetime(2026, 4, 1), "refund please"),  # outside 30 days
        ],
        "customer_id string, event_time timestamp, text string",
    ).withColumn("trust_level", F.lit("high"))
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
    got = customer_parameters(silver_partials(_silver(spark), DIRECTIVE), DIRECTIVE, F.lit(AS_OF))
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


def test_as_of_is_the_newest_events_day_unless_the_directive_names_one(spark):
    daily = silver_partials(_silver(spark), DIRECTIVE)
    newest = spark.range(1).select(as_of_time(DIRECTIVE, daily)).first()[0]
    assert newest == datetime(2026, 6, 30, 23, 59, 59, 999999)  # the newest event is at 12:00 that day
    fixed = DIRECTIVE.model_copy(update={"as_of": date(2026, 6, 1)})
    end_of_day = spark.range(1).select(as_of_time(fixed, daily)).first()[0]
    assert end_of_day == datetime(2026, 6, 1, 23, 59, 59, 999999)


PURCHASE_DAYS = FunctionalDirective.model_validate(
    {
        "id": "functional.days",
        "version": 1,
        "serves": "strategic.t",
        "description": "BG/NBD inputs with a calibration end on 2026-06-30 and a 10-day holdout",
        "as_of": "2026-06-30",
        "parameters": [
            transaction_param("x", "repeat_days"),
            transaction_param("t_x", "first_to_last_days"),
            transaction_param("age", "tenure_days"),
            transaction_param("m", "repeat_avg", column="amount"),
            transaction_param("days", "active_days"),
            transaction_param("holdout", "active_days", holdout_days=10),
        ],
    }
)


def test_day_measures_count_purchase_days_up_to_the_calibration_end(spark):
    tx = spark.createDataFrame(
        [
            ("C1", datetime(2026, 6, 1, 9), 10.0),  # first day: left out of the repeat average
            ("C1", datetime(2026, 6, 1, 18), 5.0),  # same day: the same purchase day
            ("C1", datetime(2026, 6, 11, 10), 20.0),
            ("C1", datetime(2026, 6, 21, 10), 30.0),
            ("C1", datetime(2026, 6, 30, 23, 59), 40.0),  # last minute of the calibration
            ("C1", datetime(2026, 7, 1, 0, 1), 7.0),  # holdout
            ("C1", datetime(2026, 7, 12), 7.0),  # after the holdout
            ("C2", datetime(2026, 6, 20), 99.0),  # one purchase day: no repeat
            ("C3", datetime(2026, 7, 5), 1.0),  # only in the holdout
        ],
        "customer_id string, event_time timestamp, amount double",
    ).withColumn("trust_level", F.lit("high"))
    daily = silver_partials({"transaction": tx}, PURCHASE_DAYS)
    got = customer_parameters(daily, PURCHASE_DAYS, as_of_time(PURCHASE_DAYS, daily))
    expected = spark.createDataFrame(
        [
            ("C1", 3, 29, 29, 30.0, 4, 1),  # repeats on 06-11, 06-21, 06-30: (20 + 30 + 40) / 3
            ("C2", 0, 0, 10, None, 1, 0),
            ("C3", None, None, None, None, 0, 1),
        ],
        "customer_id string, x long, t_x int, age int, m double, days long, holdout long",
    )
    assertDataFrameEqual(got, expected)


def test_bad_filter_is_refused_before_running(spark):
    broken = DIRECTIVE.model_copy(update={"parameters": [DIRECTIVE.parameters[5].model_copy(update={"filter": "lower(txt) = 'x'"})]})
    schemas = {s: df.schema for s, df in _silver(spark).items()}
    with pytest.raises(CrmError, match=r"f.yaml: parameters \(complaints_30d\): .*txt"):
        check_plan(spark, broken, schemas, "f.yaml")


def test_ratio_is_the_share_of_its_denominators_events_that_the_filter_keeps(spark):
    shares = FunctionalDirective.model_validate({**DIRECTIVE.model_dump(by_alias=True), "parameters": [
        transaction_param("big_order_share_90d", "ratio", filter="amount >= 50", window_days=90),
        {"name": "complaint_share_30d", "class": "probe", "source": "social", "measure": "ratio", "window_days": 30,
         "filter": "lower(text) RLIKE '(broken|worst|refund)'", "of": "text NOT LIKE 'love%'"},
    ]})  # fmt: skip
    got = customer_parameters(silver_partials(_silver(spark), shares), shares, F.lit(AS_OF))
    # C1: both orders in 90 days are big; its one post in 30 days that is not praise is a complaint.
    # C2 has one small order and no posts; C3 posted only a complaint and never ordered.
    expected = spark.createDataFrame(
        [("C1", 1.0, 1.0), ("C2", 0.0, None), ("C3", None, 1.0)],
        "customer_id string, big_order_share_90d double, complaint_share_30d double",
    )
    assertDataFrameEqual(got, expected)


@pytest.mark.parametrize(
    ("param", "message"),
    [
        (transaction_param("share", "ratio", window_days=90), "a ratio needs a filter"),
        (transaction_param("share", "ratio", filter="amount > 1", column="amount"), "a ratio needs a filter .* and no column"),
        (transaction_param("orders", "count", filter="amount > 1", of="amount > 0"), "only a ratio has `of`"),
    ],
)
def test_malformed_ratio_is_refused(param, message):
    with pytest.raises(ValueError, match=message):
        FunctionalDirective.model_validate({**DIRECTIVE.model_dump(by_alias=True), "parameters": [param]})


def test_ratio_denominator_is_checked_before_running(spark):
    shares = FunctionalDirective.model_validate(
        {**DIRECTIVE.model_dump(by_alias=True), "parameters": [transaction_param("share", "ratio", filter="amount > 1", of="amout > 0")]}
    )
    schemas = {s: df.schema for s, df in _silver(spark).items()}
    with pytest.raises(CrmError, match=r"f.yaml: parameters \(share\): .*amout"):
        check_plan(spark, shares, schemas, "f.yaml")


CAMPAIGNS = FunctionalDirective.model_validate(
    {
        "id": "functional.t",
        "version": 1,
        "description": "test",
        "parameters": [{"name": "orders", "class": "transactional", "source": "transaction", "measure": "count"}],
        "breakdowns": [
            {
                "name": "by_campaign",
                "description": "test",
                "grain": "campaign_name",
                "parameters": [
                    {"name": "visits_30d", "class": "probe", "source": "web", "measure": "count", "window_days": 30},
                    *[
                        {"name": name, "class": "transactional", "source": "transaction", "measure": measure, "column": column,
                         "window_days": 30, "attributed_by": {"source": "web", "within_days": 7}}
                        for name, measure, column in [
                            ("conversions_30d", "count", None),
                            ("revenue_30d", "sum", "amount"),
                            ("buyers_30d", "count_distinct", "customer_id"),
                        ]
                    ],
                ],
            }
        ],
    }
)


def test_orders_are_attributed_to_the_campaign_their_customer_last_arrived_from(spark):
    web = spark.createDataFrame(
        [
            ("C1", datetime(2026, 6, 20, 10), "spring", "high"),
            ("C1", datetime(2026, 6, 25, 9), "summer", "high"),
            ("C1", datetime(2026, 6, 26, 8), None, "high"),  # not from a campaign: the last touch stays summer
            ("C2", datetime(2026, 6, 1, 12), "spring", "high"),
            ("C3", datetime(2026, 6, 28, 18), "summer", "high"),  # later than the order, on its day: a day is the unit
            (None, datetime(2026, 6, 22), "spring", "high"),  # anonymous: a visit, never a conversion
            ("C4", datetime(2026, 6, 14), "spring", "untrusted"),  # not read: the directive leaves untrusted events out
            ("C5", datetime(2026, 6, 29), "autumn", "high"),
            ("C6", datetime(2026, 6, 12), None, "high"),  # visits, none from a campaign
            ("C1", datetime(2026, 5, 19), "spring", "high"),  # touches the order below, which is outside 30 days
        ],
        "customer_id string, event_time timestamp, campaign_name string, trust_level string",
    )
    tx = spark.createDataFrame(
        [
            ("C1", datetime(2026, 6, 26), 100.0),  # summer, the newer touch
            ("C1", datetime(2026, 6, 21), 50.0),  # spring
            ("C1", datetime(2026, 6, 10), 999.0),  # no touch in the 7 days before
            ("C2", datetime(2026, 6, 8), 20.0),  # spring, exactly 7 days after the touch
            ("C2", datetime(2026, 6, 9), 999.0),  # 8 days after: not attributed
            ("C3", datetime(2026, 6, 28, 9), 30.0),  # summer
            ("C4", datetime(2026, 6, 15), 999.0),  # its touch is untrusted
            ("C6", datetime(2026, 6, 12), 999.0),  # no campaign touch
            ("C1", datetime(2026, 5, 20), 999.0),  # outside 30 days, though touched the day before
        ],
        "customer_id string, event_time timestamp, amount double",
    ).withColumn("trust_level", F.lit("high"))
    measured = CAMPAIGNS.measuring(CAMPAIGNS.breakdowns[0])
    got = customer_parameters(silver_partials({"web": web, "transaction": tx}, measured), measured, F.lit(AS_OF))
    expected = spark.createDataFrame(
        [("spring", 3, 2, 70.0, 2), ("summer", 2, 2, 130.0, 2), ("autumn", 1, 0, 0.0, 0)],
        "campaign_name string, visits_30d long, conversions_30d long, revenue_30d double, buyers_30d int",
    )
    assertDataFrameEqual(got, expected)


def _tickets(spark):
    """Ticket events of two customers (one of them across two days, so partials of several days
    are added up), with hours_open and overdue as CROM's lifecycle datafication gives them."""
    rows = [
        # customer, ticket, event time, status, hours open, SLA hours
        ("C1", "T1", datetime(2026, 6, 1, 8), "open", 0.0, 24),
        ("C1", "T1", datetime(2026, 6, 1, 20), "pending", 12.0, 24),
        ("C1", "T1", datetime(2026, 6, 2, 14), "closed", 30.0, 24),  # closed after its SLA
        ("C1", "T2", datetime(2026, 6, 29, 9), "open", 0.0, 8),
        ("C1", "T2", datetime(2026, 6, 29, 11), "closed", 2.0, 8),
        ("C1", "T3", datetime(2026, 6, 30, 1), "open", 0.0, 8),  # still open
        ("C2", "T4", datetime(2026, 6, 10, 0), "open", 0.0, 48),
        ("C2", "T4", datetime(2026, 6, 13, 0), "pending", 72.0, 48),  # past its SLA, still not closed
        ("C2", "T5", datetime(2026, 6, 20, 0), "open", 0.0, 24),
        ("C2", "T5", datetime(2026, 6, 20, 6), "closed", 6.0, 24),
        ("C2", "T6", datetime(2026, 6, 21, 0), "open", 0.0, 24),
        ("C2", "T6", datetime(2026, 6, 21, 10), "closed", 10.0, 24),
        ("C2", "T6", datetime(2026, 7, 2, 0), "open", 0.0, 24),  # reopened after as_of: not seen yet
    ]
    frame = spark.createDataFrame(rows, "customer_id string, ticket_id string, event_time timestamp, status string, hours_open double, sla_hours long")
    return {"ticket": frame.withColumn("overdue", F.col("hours_open") > F.col("sla_hours")).withColumn("trust_level", F.lit("high"))}


TICKETS = FunctionalDirective.model_validate(
    {
        "id": "functional.tickets",
        "description": "service tickets",
        "version": 1,
        "serves": "strategic.t",
        "parameters": [
            {"name": "open_tickets", "class": "probe", "source": "ticket", "measure": "count", "latest_per": "ticket_id", "filter": "status <> 'closed'"},
            {"name": "sla_breaches_90d", "class": "probe", "source": "ticket", "measure": "count_distinct", "column": "ticket_id",
             "filter": "overdue", "window_days": 90},
            {"name": "median_hours_to_resolve_90d", "class": "probe", "source": "ticket", "measure": "median", "column": "hours_open",
             "filter": "status = 'closed'", "window_days": 90},
            {"name": "median_hours_to_resolve_7d", "class": "probe", "source": "ticket", "measure": "median", "column": "hours_open",
             "filter": "status = 'closed'", "window_days": 7},
        ],
    }
)


def test_ticket_measures_follow_each_tickets_newest_status(spark):
    daily = silver_partials(_tickets(spark), TICKETS)
    got = customer_parameters(daily, TICKETS, F.lit(AS_OF))
    expected = spark.createDataFrame(
        [("C1", 1, 1, 16.0, 2.0), ("C2", 1, 1, 8.0, None)],  # C1: 30 and 2 hours; C2: 6 and 10
        "customer_id string, open_tickets long, sla_breaches_90d int, median_hours_to_resolve_90d double, median_hours_to_resolve_7d double",
    )
    assertDataFrameEqual(got, expected)
    # Partials of repeated keys added up (a compaction) give the same numbers.
    doubled = {"ticket": daily["ticket"].unionByName(daily["ticket"].limit(0))}
    assertDataFrameEqual(customer_parameters(doubled, TICKETS, F.lit(AS_OF)), expected)
    # As of June 1 only T1 was seen, and it was pending: open.
    early = customer_parameters(daily, TICKETS, F.lit(datetime(2026, 6, 1, 23))).collect()
    assert sorted((r["customer_id"], r["open_tickets"], r["median_hours_to_resolve_90d"]) for r in early) == [("C1", 1, None), ("C2", 0, None)]
    # After as_of, T6 reopens: two open tickets for C2.
    later = {r["customer_id"]: r["open_tickets"] for r in customer_parameters(daily, TICKETS, F.lit(datetime(2026, 7, 3))).collect()}
    assert later == {"C1": 1, "C2": 2}


def test_median_of_an_odd_and_an_even_number_of_values(spark):
    from pipelines.crfm.parameters import _median

    rows = spark.createDataFrame([([1.0, 2.0, 9.0],), ([1.0, 3.0, 4.0, 10.0],), ([],)], "v array<double>")
    assert [r[0] for r in rows.select(_median(F.array_sort("v"))).collect()] == [2.0, 3.5, None]


@pytest.mark.parametrize(
    "param, message",
    [
        ({"measure": "sum", "column": "hours_open", "latest_per": "ticket_id"}, "latest_per counts items"),
        ({"measure": "count", "column": "hours_open", "latest_per": "ticket_id"}, "latest_per counts items"),
    ],
)
def test_latest_per_is_a_count_of_items(param, message):
    with pytest.raises(ValueError, match=message):
        FunctionalDirective.model_validate({**TICKETS.model_dump(by_alias=True), "parameters": [{"name": "x", "class": "probe", "source": "ticket", **param}]})
