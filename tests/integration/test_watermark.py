"""CROM's watermark: lateness follows each Kafka partition's own order, and a record cannot
poison it (an event time further ahead of its Kafka timestamp than the directive allows is
quarantined, and the source's normal traffic goes on to silver, in the same batch and in the
next ones)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest
from kafka import KafkaProducer
from pyspark.sql import functions as F

from pipelines.crom.ingest import run_ingest
from pipelines.generator import EventStream
from pipelines.tables import CromTables

pytestmark = pytest.mark.integration


def _web_events(directives, first: int, n: int) -> list[dict]:
    topics = {name: src.topic for name, src in directives.only("operational").directive.sources.items()}
    events = EventStream(77, topics).events(first, n * 6)
    return [json.loads(e.value) for e in events if e.source == "web" and e.kind == "valid"][:n]


def _send(profile, topic: str, records: list[dict]) -> None:
    producer = KafkaProducer(bootstrap_servers=profile.kafka.bootstrap_servers, acks="all")
    for r in records:
        producer.send(topic, key=r["event_id"].encode(), value=json.dumps(r).encode())
    producer.flush()
    producer.close()


def test_a_far_future_event_is_quarantined_and_moves_no_watermark(spark, own_topics):
    profile, directives = own_topics
    operational = directives.only("operational")
    topic = operational.directive.sources["web"].topic
    first, second = _web_events(directives, 0, 4), _web_events(directives, 1000, 3)
    future = dict(first[0], event_id="web-from-the-future", event_time="9999-12-31T23:59:59Z")
    _send(profile, topic, [future, *first[1:]])  # the bad clock first, normal traffic behind it
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)
    _send(profile, topic, second)
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)

    tables = CromTables.of(profile, list(operational.directive.sources))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    silver = {r["event_id"] for r in read(tables.silver["web"]).collect()}
    assert silver == {e["event_id"] for e in first[1:] + second}  # the same batch's and the next batch's
    [quarantined] = read(tables.quarantine).collect()
    assert (quarantined["event_id"], quarantined["reason_code"]) == ("web-from-the-future", "event_time_in_future")
    assert "after the Kafka timestamp" in quarantined["reason_detail"]
    assert read(tables.late).count() == 0
    marks = read(tables.batch_audit).where(F.col("source") == "web").agg(F.max("watermark"), F.max("max_event_time")).first()
    assert marks[1].year < 9999 and marks[0] < marks[1]


def _send_to_partitions(profile, topic: str, base: dict, records: dict[int, list[tuple[str, datetime]]]) -> None:
    """`base` as (event id, event time) per Kafka partition, in order."""
    producer = KafkaProducer(bootstrap_servers=profile.kafka.bootstrap_servers, acks="all")
    for partition, events in records.items():
        for event_id, when in events:
            value = json.dumps(dict(base, event_id=event_id, event_time=when.isoformat())).encode()
            producer.send(topic, key=event_id.encode(), value=value, partition=partition)
    producer.flush()
    producer.close()


def test_lateness_follows_each_partitions_own_order(spark, own_topics):
    """A record more than the delay behind the newest event before it in its own partition is
    late, in the same batch or after a restart; neither another partition's newer events nor
    the event time a batch spans make it late."""
    profile, directives = own_topics
    operational = directives.only("operational")
    topic = operational.directive.sources["web"].topic
    delay, day, minute = timedelta(hours=operational.directive.watermark.delay_hours), timedelta(days=1), timedelta(minutes=1)
    base = _web_events(directives, 0, 1)[0]
    t0 = datetime.fromisoformat(base["event_time"])
    first = {
        0: [("p0-a", t0), ("p0-b", t0 + 2 * day), ("p0-late", t0 + 2 * day - delay - minute), ("p0-edge", t0 + 2 * day - delay)],
        1: [("p1-a", t0)],  # two days behind partition 0, first in its own
    }
    _send_to_partitions(profile, topic, base, first)
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)
    second = {0: [("p0-c", t0 + day)], 1: [("p1-late", t0 - delay - minute), ("p1-b", t0 + 3 * day)]}
    _send_to_partitions(profile, topic, base, second)
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)  # a new writer: stream times from batch_audit

    tables = CromTables.of(profile, list(operational.directive.sources))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    assert {r["event_id"] for r in read(tables.silver["web"]).collect()} == {"p0-a", "p0-b", "p0-edge", "p1-a", "p1-b"}
    late = {r["event_id"]: r for r in read(tables.late).collect()}
    assert set(late) == {"p0-late", "p1-late", "p0-c"}
    local = lambda t: t.astimezone().replace(tzinfo=None)  # noqa: E731 - as PySpark returns timestamps
    assert late["p0-late"]["watermark"] == late["p0-c"]["watermark"] == local(t0 + 2 * day - delay)
    assert late["p1-late"]["watermark"] == local(t0 - delay)
    audit = read(tables.batch_audit).where(F.col("source") == "web").orderBy(F.col("batch_id").desc()).first()
    assert audit["stream_times"] == {0: local(t0 + 2 * day), 1: local(t0 + 3 * day)}
    assert (audit["max_event_time"], audit["watermark"]) == (local(t0 + 3 * day), local(t0 + 2 * day - delay))
