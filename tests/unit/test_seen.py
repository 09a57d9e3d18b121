"""The ids the duplicate check compares against: silver's at the run's first batch, then each batch's own."""

from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import types as T

from pipelines.crom import seen
from pipelines.crom.records import batch_constants
from pipelines.crom.seen import SeenEvents, new_events
from pipelines.lakehouse import ensure_table, has_data_files

SILVER = T.StructType(
    [
        T.StructField("event_id", T.StringType()),
        T.StructField("event_time", T.TimestampType()),
        T.StructField("batch_id", T.LongType()),
    ]
)
DAY = lambda d: datetime(2026, 1, d)  # noqa: E731


def _silver(spark, tmp_path, rows):
    path = str(tmp_path / "silver")
    spark.createDataFrame(rows, SILVER).write.format("delta").save(path)
    return path


MICROS = int(DAY(5).replace(tzinfo=timezone.utc).timestamp() * 1_000_000)


def _written(spark, ids):
    return spark.createDataFrame([("web", i, MICROS) for i in ids], "source string, event_id string, event_micros long")


def _before(spark, events, batch_id, marks):
    return events.before(batch_id, batch_constants(spark, batch_id, marks, {}))


def _ids(frame) -> set[str]:
    return {r["event_id"] for r in frame.where("source = 'web'").collect()}


def test_a_batch_sees_silver_and_the_batches_before_it_but_not_itself(spark, tmp_path):
    # Batch 2 crashed after writing "c" to silver: its replay must not count "c" as a duplicate.
    path = _silver(spark, tmp_path, [("a", DAY(1), 0), ("b", DAY(2), 1), ("c", DAY(3), 2)])
    events = SeenEvents(spark, {"web": path}, "event_time")
    assert _ids(_before(spark, events, 2, {"web": None})) == {"a", "b"}
    events.add(2, _written(spark, ["c", "d"]))
    assert _ids(_before(spark, events, 3, {"web": None})) == {"a", "b", "c", "d"}
    events.add(3, _written(spark, ["e"]))
    assert _ids(_before(spark, events, 3, {"web": None})) == {"a", "b", "c", "d"}  # batch 3 replayed
    assert _ids(_before(spark, events, 3, {"web": DAY(2)})) == {"b", "c", "d"}  # "a" is older than the watermark
    events.release()


def test_merging_the_pieces_keeps_every_id(spark, tmp_path):
    path = _silver(spark, tmp_path, [("a", DAY(1), 0)])
    events = SeenEvents(spark, {"web": path}, "event_time")
    expected = {"a"}
    for batch_id in range(1, seen.MAX_PIECES + 4):
        assert _ids(_before(spark, events, batch_id, {"web": None})) == expected
        events.add(batch_id, _written(spark, [f"id{batch_id}"]))
        expected.add(f"id{batch_id}")
    assert len(events._pieces) <= seen.MAX_PIECES + 1
    assert _ids(_before(spark, events, batch_id + 1, {"web": None})) == expected
    events.release()


def test_a_batch_before_the_cached_ones_reads_silver_again(spark, tmp_path):
    path = _silver(spark, tmp_path, [("a", DAY(1), 0), ("b", DAY(2), 4)])
    events = SeenEvents(spark, {"web": path}, "event_time")
    assert _ids(_before(spark, events, 5, {"web": None})) == {"a", "b"}
    # A query restarted on an older checkpoint with the same writer: silver decides again.
    assert _ids(_before(spark, events, 4, {"web": None})) == {"a"}
    events.release()


def test_a_new_table_is_read_without_a_scan_and_later_batches_see_their_ids(spark, tmp_path):
    path = str(tmp_path / "silver")
    ensure_table(spark, path, SILVER)
    assert not has_data_files(path)
    events = SeenEvents(spark, {"web": path}, "event_time")
    assert _ids(_before(spark, events, 0, {"web": None})) == set()
    events.add(0, _written(spark, ["a", "b"]))
    assert _ids(_before(spark, events, 1, {"web": None})) == {"a", "b"}
    events.release()


CANDIDATES = "source string, event_id string, kafka_partition int, kafka_offset long, event_micros long"


def test_new_events_keep_the_first_copy_of_each_id_not_seen_in_its_source(spark):
    candidates = spark.createDataFrame(
        [
            ("web", "a", 0, 7, 1),  # seen in web: a duplicate
            ("log", "a", 0, 3, 1),  # the same id in another source is new there
            ("web", "b", 1, 2, 2),  # sent twice: partition 0 comes first, then the lower offset
            ("web", "b", 0, 9, 2),
            ("web", "b", 0, 5, 2),
            ("web", "c", 1, 1, 3),
        ],
        CANDIDATES,
    )
    seen_ids = spark.createDataFrame([("web", "a"), ("web", "z")], "source string, event_id string")
    kept = sorted(tuple(r) for r in new_events(candidates, seen_ids).collect())
    assert kept == [("log", "a", 0, 3, 1), ("web", "b", 0, 5, 2), ("web", "c", 1, 1, 3)]
