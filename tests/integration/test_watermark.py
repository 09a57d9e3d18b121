"""A record cannot poison a source's watermark: an event time further ahead of its Kafka
timestamp than the directive allows is quarantined, and the source's normal traffic goes on
to silver, in the same batch and in the next ones."""

from __future__ import annotations

import json

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
