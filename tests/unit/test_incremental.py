"""CRFM's incremental partials: folded from silver's new commits with a Delta stream and
MERGE, they must give the same parameters as a full recompute over all of silver, for every
partials table the source's one stream feeds."""

from __future__ import annotations

import random
import shutil
from datetime import datetime, timedelta

from delta.tables import DeltaTable
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.crfm import incremental
from pipelines.crfm.incremental import Fold, update_partials
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


# A second grain fed by the same stream, as a breakdown's partials are.
BY_SESSION = DIRECTIVE.model_copy(update={"grain": "session_id", "parameters": DIRECTIVE.parameters[:4]})


def _folds(tmp_path, params=None) -> list[Fold]:
    return [
        Fold(str(tmp_path / "partials"), tuple(params or by_source(DIRECTIVE)["transaction"]), DIRECTIVE.grain),
        Fold(str(tmp_path / "by_session"), tuple(by_source(BY_SESSION)["transaction"]), BY_SESSION.grain),
    ]


def _run(spark, silver: str, tmp_path, full: bool = False, params=None, checkpoint: str = "cp"):
    return update_partials(spark, silver, _folds(tmp_path, params), tmp_path / checkpoint, full)


def _parameters(daily, directive=DIRECTIVE):
    return customer_parameters(daily, directive, as_of_time(directive, daily))


def test_incremental_partials_equal_a_full_recompute(spark, tmp_path):
    silver = str(tmp_path / "silver")
    spark.createDataFrame(_events(1, 600, 120), SCHEMA).write.format("delta").save(silver)
    first = _run(spark, silver, tmp_path)
    assert first.rebuilt and first.new_events == 600
    # Two more commits: new days, and late events for old days and customers already folded.
    spark.createDataFrame(_events(2, 150, 140), SCHEMA).write.format("delta").mode("append").save(silver)
    spark.createDataFrame(_events(3, 50, 150), SCHEMA).write.format("delta").mode("append").save(silver)
    second = _run(spark, silver, tmp_path)
    assert not second.rebuilt and second.new_events == 200  # only the new commits were read, once for both tables

    everything = {"transaction": spark.read.format("delta").load(silver)}
    for directive, table, rows in ((DIRECTIVE, "partials", 40), (BY_SESSION, "by_session", 60)):
        incremental = {"transaction": spark.read.format("delta").load(str(tmp_path / table))}
        got, expected = _parameters(incremental, directive), _parameters(silver_partials(everything, directive), directive)
        assert got.count() == rows
        assertDataFrameEqual(got, expected, rtol=1e-9)

    nothing_new = _run(spark, silver, tmp_path)
    assert nothing_new.new_events == 0
    incremental = {"transaction": spark.read.format("delta").load(str(tmp_path / "partials"))}
    assertDataFrameEqual(_parameters(incremental), _parameters(silver_partials(everything, DIRECTIVE)), rtol=1e-9)


def test_appends_are_compacted_into_one_row_per_key_with_the_same_parameters(spark, tmp_path, monkeypatch):
    monkeypatch.setattr(incremental, "COMPACT_EVERY", 3)
    silver = str(tmp_path / "silver")
    spark.createDataFrame(_events(5, 300, 90), SCHEMA).write.format("delta").save(silver)
    _run(spark, silver, tmp_path)  # the build: one row per key
    table = str(tmp_path / "partials")
    key = DIRECTIVE.grain, "day", "trusted"

    def repeated() -> int:
        rows = spark.read.format("delta").load(table)
        return rows.count() - rows.select(*key).distinct().count()

    again = _events(5, 300, 90)[:50]  # events of customers and days already folded
    spark.createDataFrame(again, SCHEMA).write.format("delta").mode("append").save(silver)
    _run(spark, silver, tmp_path)
    assert repeated() > 0  # two appends (the build's and this one): not compacted yet
    spark.createDataFrame(_events(6, 80, 95), SCHEMA).write.format("delta").mode("append").save(silver)
    _run(spark, silver, tmp_path)
    assert repeated() == 0  # the third append: the repeated keys are added up
    everything = {"transaction": spark.read.format("delta").load(silver)}
    compacted = {"transaction": spark.read.format("delta").load(table)}
    assertDataFrameEqual(_parameters(compacted), _parameters(silver_partials(everything, DIRECTIVE)), rtol=1e-9)
    metadata = [r[0] for r in DeltaTable.forPath(spark, table).history(1).select("userMetadata").collect()]
    assert metadata == [incremental.COMPACTION]


def test_partials_are_rebuilt_when_the_parameters_change_or_the_checkpoint_is_lost(spark, tmp_path):
    silver = str(tmp_path / "silver")
    spark.createDataFrame(_events(4, 100, 30), SCHEMA).write.format("delta").save(silver)
    _run(spark, silver, tmp_path)

    changed = DIRECTIVE.parameters[:1]
    again = _run(spark, silver, tmp_path, params=changed)
    assert again.rebuilt and again.new_events == 100
    assert [c for c in spark.read.format("delta").load(str(tmp_path / "partials")).columns if "__" in c] == ["n_30d__rows"]

    lost = _run(spark, silver, tmp_path, params=changed, checkpoint="cp-moved")
    assert lost.rebuilt and lost.new_events == 100  # a fresh checkpoint would otherwise add the events twice
    total = spark.read.format("delta").load(str(tmp_path / "partials")).agg(F.sum("n_30d__rows")).first()[0]
    assert total == 100

    shutil.rmtree(tmp_path / "by_session")  # one table of the stream lost: the stream cannot refill it alone
    refilled = _run(spark, silver, tmp_path, params=changed, checkpoint="cp-moved")
    assert refilled.rebuilt and refilled.new_events == 100
    assert spark.read.format("delta").load(str(tmp_path / "partials")).agg(F.sum("n_30d__rows")).first()[0] == 100
    assert spark.read.format("delta").load(str(tmp_path / "by_session")).agg(F.sum("n_30d__rows")).first()[0] == 100
