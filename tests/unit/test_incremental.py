"""CRFM's incremental partials: folded from silver's new commits with a Delta stream and
MERGE, they must give the same parameters as a full recompute over all of silver."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.crfm.incremental import update_partials
from pipelines.crfm.parameters import as_of_time, by_source, customer_parameters, silver_partials
from pipelines.directives import FunctionalDirective
from tests.helpers import transaction_param

SCHEMA = "customer_id string, event_time timestamp, amount double, session_id string, trust_level string"
START = datetime(2026, 1, 1)


# One parameter of every measure, with windows, a holdout-free as_of from the data, and a filter.
DIRECTIVE = FunctionalDirective.model_validate(
    {
        "id": "functional.inc",
        "version": 1,
        "description": "every measure",
        "include_untrusted": False,
        "parameters": [
            transaction_param("n_30d", "count", window_days=30),
            transaction_param("big_30d", "count", window_days=30, filter="amount > 50"),
            transaction_param("sum_90d", "sum", column="amount", window_days=90),
            transaction_param("avg_90d", "avg", column="amount", window_days=90),
            transaction_param("sessions_30d", "count_distinct", column="session_id", window_days=30),
            transaction_param("last_amount", "last", column="amount"),
            transaction_param("recency", "recency_days"),
            transaction_param("x", "repeat_days"),
            transaction_param("t_x", "first_to_last_days"),
            transaction_param("age", "tenure_days"),
            transaction_param("m", "repeat_avg", column="amount"),
            transaction_param("days_7d", "active_days", window_days=7),
            transaction_param("big_share_30d", "ratio", window_days=30, filter="amount > 50", of="amount IS NOT NULL"),
        ],
    }
)


def _events(seed: int, n: int, days: int) -> list[tuple]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(n):
        at = START + timedelta(days=rnd.randrange(days), seconds=rnd.randrange(86400))
        rows.append(
            (
                f"C{rnd.randrange(40):02d}",
                at,
                round(rnd.uniform(1, 100), 2) if rnd.random() > 0.1 else None,
                f"S{rnd.randrange(60)}",
                "untrusted" if rnd.random() < 0.1 else "high",
            )
        )
    return rows


def _run(spark, silver: str, tmp_path, full: bool = False):
    params = by_source(DIRECTIVE)["transaction"]
    return update_partials(spark, silver, str(tmp_path / "partials"), tmp_path / "cp", params, DIRECTIVE.grain, full)


def _parameters(daily):
    return customer_parameters(daily, DIRECTIVE, as_of_time(DIRECTIVE, daily))


def test_incremental_partials_equal_a_full_recompute(spark, tmp_path):
    silver = str(tmp_path / "silver")
    spark.createDataFrame(_events(1, 600, 120), SCHEMA).write.format("delta").save(silver)
    first = _run(spark, silver, tmp_path)
    assert first.rebuilt and first.new_events == 600
    # Two more commits: new days, and late events for old days and customers already folded.
    spark.createDataFrame(_events(2, 150, 140), SCHEMA).write.format("delta").mode("append").save(silver)
    spark.createDataFrame(_events(3, 50, 150), SCHEMA).write.format("delta").mode("append").save(silver)
    second = _run(spark, silver, tmp_path)
    assert not second.rebuilt and second.new_events == 200  # only the new commits were read

    incremental = {"transaction": spark.read.format("delta").load(second.table)}
    full = silver_partials({"transaction": spark.read.format("delta").load(silver)}, DIRECTIVE)
    got, expected = _parameters(incremental), _parameters(full)
    assert got.count() == 40
    assertDataFrameEqual(got, expected, rtol=1e-9)

    nothing_new = _run(spark, silver, tmp_path)
    assert nothing_new.new_events == 0
    assertDataFrameEqual(_parameters({"transaction": spark.read.format("delta").load(second.table)}), expected, rtol=1e-9)


def test_partials_are_rebuilt_when_the_parameters_change_or_the_checkpoint_is_lost(spark, tmp_path):
    silver = str(tmp_path / "silver")
    spark.createDataFrame(_events(4, 100, 30), SCHEMA).write.format("delta").save(silver)
    _run(spark, silver, tmp_path)

    changed = DIRECTIVE.parameters[:1]
    again = update_partials(spark, silver, str(tmp_path / "partials"), tmp_path / "cp", changed, DIRECTIVE.grain)
    assert again.rebuilt and again.new_events == 100
    assert [c for c in spark.read.format("delta").load(again.table).columns if "__" in c] == ["n_30d__rows"]

    lost = update_partials(spark, silver, str(tmp_path / "partials"), tmp_path / "cp-moved", changed, DIRECTIVE.grain)
    assert lost.rebuilt and lost.new_events == 100  # a fresh checkpoint would otherwise add the events twice
    total = spark.read.format("delta").load(lost.table).agg(F.sum("n_30d__rows")).first()[0]
    assert total == 100
