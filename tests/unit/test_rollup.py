"""CRFM's roll-up of changed keys: after new events, and after as_of moves with no new events
for most customers, every table it MERGEs equals a roll-up of all the partials."""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, write_deltalake
from pyspark.testing import assertDataFrameEqual

from pipelines.crfm.incremental import APP_ID, COMPACTION
from pipelines.crfm.job import measured_parts, partials_path, run_functional
from pipelines.crfm.parameters import as_of_time, customer_parameters, feeds, parameter_variants
from pipelines.crfm.rollup import PartialsState, appended_files, appends_since, moved_days
from pipelines.crfm.segments import SavedFit, apply, scores
from pipelines.directives import DirectiveSet, FunctionalDirective, Loaded, Parameter
from pipelines.tables import functional_table, silver_table
from tests.helpers import transaction_param

START = datetime(2026, 1, 1)
SILVER = "customer_id string, event_time timestamp, amount double, channel string, trust_level string"


def _directive(serves: str) -> FunctionalDirective:
    social = {"class": "conversed", "source": "social"}
    return FunctionalDirective.model_validate(
        {
            "id": "functional.rolled",
            "version": 1,
            "serves": serves,
            "description": "every measure kind, two sources, a breakdown",
            "include_untrusted": False,
            "parameters": [
                transaction_param("n_30d", "count", window_days=30),
                transaction_param("sum_90d", "sum", column="amount", window_days=90),
                transaction_param("avg_90d", "avg", column="amount", window_days=90),
                transaction_param("channels_30d", "count_distinct", column="channel", window_days=30),
                transaction_param("last_amount", "last", column="amount"),
                transaction_param("recency", "recency_days"),
                transaction_param("recency_30d", "recency_days", window_days=30),
                transaction_param("x", "repeat_days"),
                transaction_param("age", "tenure_days"),
                transaction_param("m", "repeat_avg", column="amount"),
                transaction_param("big_share_30d", "ratio", window_days=30, filter="amount > 50"),
                transaction_param("next_7d", "count", holdout_days=7),
                transaction_param("median_30d", "median", column="amount", window_days=30),
                transaction_param("big_now", "count", latest_per="channel", filter="amount > 50"),  # channels whose newest order is big
                {"name": "posts_30d", **social, "measure": "count", "window_days": 30},
                {"name": "last_post_channel", **social, "measure": "last", "column": "channel"},
            ],
            # Never due in this test: the saved fit scores every run after the first.
            "segmentation": {
                "rfm": {"recency": "recency", "frequency": "n_30d", "monetary": "sum_90d", "bins": 3},
                "clustering": {"features": ["recency", "n_30d", "posts_30d"], "k": 3},
                "scores": [{"name": "value", "expression": "r_score + m_score"}],
                "refit": {"every_days": 365, "drift": 100},
            },
            "breakdowns": [
                {
                    "name": "by_channel",
                    "description": "per order channel",
                    "grain": "channel",
                    "parameters": [
                        transaction_param("orders_30d", "count", window_days=30),
                        transaction_param("days_since_order", "recency_days"),
                    ],
                    "scores": [{"name": "stale", "description": "no order in a week", "expression": "days_since_order > 7"}],
                }
            ],
        }
    )


def _events(seed: int, customers: list[str], first_day: int, last_day: int, n: int) -> list[tuple]:
    rnd = random.Random(seed)
    return [
        (
            rnd.choice(customers),
            START + timedelta(days=rnd.randint(first_day, last_day), seconds=rnd.randrange(86400)),
            round(rnd.uniform(1, 100), 2) if rnd.random() > 0.1 else None,
            rnd.choice(["web", "app", "store"]),
            "untrusted" if rnd.random() < 0.1 else "high",
        )
        for _ in range(n)
    ]


def _append(spark, profile, rows_by_source: dict[str, list[tuple]]) -> None:
    for source, rows in rows_by_source.items():
        spark.createDataFrame(rows, SILVER).write.format("delta").mode("append").save(silver_table(profile, source))


def _assert_segments_apply_the_saved_fit(spark, profile, directive) -> date:
    """The segments table is the saved fit applied to every customer; returns the fit's as_of."""
    folder = profile.checkpoints / "crfm" / directive.id / "segments_fit"
    fitted, fitted_as_of, _ = SavedFit(folder, json.loads((folder / "fit.json").read_text())["fingerprint"]).load()
    customers = spark.read.format("delta").load(functional_table(profile, directive.id))
    expected = apply(customers, directive.segmentation, fitted, directive.grain)
    got = spark.read.format("delta").load(functional_table(profile, directive.id, "segments")).drop("source_version")
    assertDataFrameEqual(got, expected)
    return fitted_as_of


def _assert_equals_a_whole_roll_up(spark, profile, directive, windows) -> date:
    """Every table but the segments equals the roll-up of all the partials as they are now
    (whose own equality with silver test_incremental.py checks); returns the segments' fit as_of."""
    fitted_as_of = _assert_segments_apply_the_saved_fit(spark, profile, directive)
    measured = measured_parts(directive)
    daily = {
        part: {name: spark.read.format("delta").load(partials_path(profile, directive.id, part, name)) for name in feeds(each)}
        for part, each in measured.items()
    }  # fmt: skip
    as_of = as_of_time(directive, daily[""])
    by_channel = measured["by_channel"]
    whole = {
        "": customer_parameters(daily[""], directive, as_of),
        "variants": parameter_variants(daily[""], directive, as_of, windows),
        "by_channel": scores(customer_parameters(daily["by_channel"], by_channel, as_of), by_channel.segmentation),
    }
    for part, expected in whole.items():
        got = spark.read.format("delta").load(functional_table(profile, directive.id, part))
        assertDataFrameEqual(got.drop("directive_id", "directive_version", "computed_at", "source_version"), expected.withColumn("as_of", as_of))
    return fitted_as_of


def test_changed_keys_merged_equal_a_whole_roll_up(spark, profile, directives):
    strategic = directives.only("strategic")
    functional = Loaded(_directive(strategic.directive.id), profile.directives / "functional" / "rolled.yaml")
    ours = DirectiveSet({strategic.directive.id: strategic}, {functional.directive.id: functional}, {}, {})
    # A few events per customer: as_of moving a day or two then reaches some of them, not all.
    customers = [f"C{i:03d}" for i in range(200)]
    _append(spark, profile, {"transaction": _events(1, customers, 0, 150, 800), "social": _events(2, customers, 0, 150, 300)})
    first = run_functional(spark, profile, ours, functional)
    assert first.recomputed == {"": None, "by_channel": None}  # nothing to start from: computed whole

    # New events for five customers, some on days already rolled up, moving as_of a day.
    _append(spark, profile, {"transaction": _events(3, customers[:5], 140, 151, 60), "social": _events(4, customers[:3], 145, 150, 10)})
    run = run_functional(spark, profile, ours, functional)
    assert 5 <= run.recomputed[""] < len(customers) and run.recomputed["by_channel"] is not None
    assert run.new_events == 70 and not run.rebuilt_partials
    assert _assert_equals_a_whole_roll_up(spark, profile, functional.directive, strategic.directive.validity.windows) == (START + timedelta(days=150)).date()  # not refit

    # One customer's events move as_of two days: the others have no new event.
    _append(spark, profile, {"transaction": _events(5, customers[5:6], 153, 153, 2)})
    run = run_functional(spark, profile, ours, functional)
    assert 1 <= run.recomputed[""] < len(customers)
    _assert_equals_a_whole_roll_up(spark, profile, functional.directive, strategic.directive.validity.windows)


def _commit(path: str, rows: list[int], meta: str | None = None, mode: str = "append") -> None:
    properties = CommitProperties(custom_metadata={"userMetadata": meta}) if meta else None
    write_deltalake(path, pa.table({"customer_id": [f"C{r}" for r in rows]}), mode=mode, commit_properties=properties)


def test_only_appends_since_the_recorded_version_can_be_rolled_up_by_key(tmp_path):
    path = str(tmp_path / "partials")
    _commit(path, [0], mode="overwrite")
    then = PartialsState.of(path)
    _commit(path, [1], f"{APP_ID}:7")
    _commit(path, [1], COMPACTION)  # adds rows up: no key changes
    _commit(path, [2], f"{APP_ID}:8")
    _commit(path, [3], f"{APP_ID}:9")
    assert appends_since(path, then) == [(1, 1), (3, 4)]
    appended = appended_files(path, [(1, 1), (3, 4)])
    assert sorted(pq.read_table(appended)["customer_id"].to_pylist()) == ["C1", "C2", "C3"]  # not the compaction's file
    assert appends_since(path, PartialsState.of(path)) == []
    DeltaTable(path).delete("customer_id = 'C0'")  # crm purge or forget: rows gone
    assert appends_since(path, then) is None
    rebuilt = str(tmp_path / "rebuilt")
    _commit(rebuilt, [0], mode="overwrite")
    for batch in range(5):
        _commit(rebuilt, [batch], f"{APP_ID}:{batch}")
    assert appends_since(rebuilt, PartialsState(then.table_id, 0)) is None  # another table at that path


def test_moved_days_are_where_each_scope_gained_or_lost_a_day():
    window = Parameter.model_validate(transaction_param("n_30d", "count", window_days=30))
    holdout = Parameter.model_validate(transaction_param("next_7d", "count", holdout_days=7))
    ever = Parameter.model_validate(transaction_param("n", "count"))
    a0, a1 = date(2026, 3, 31), date(2026, 4, 5)
    assert moved_days([window], [0], a0, a1) == [(date(2026, 3, 1), date(2026, 3, 6)), (a0, a1)]
    assert moved_days([holdout], [0], a0, a1) == [(a0, a1), (date(2026, 4, 7), date(2026, 4, 12))]
    assert moved_days([ever], [0, 30], a0, a1) == [(date(2026, 3, 1), date(2026, 3, 6)), (a0, a1)]
    assert moved_days([window, ever], [0], a1, a0) == moved_days([window], [0], a0, a1)  # as_of moved back
    assert moved_days([window], [0], a0, a0) == []
