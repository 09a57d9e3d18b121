"""Small builders the tests share."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta


def transaction_param(name: str, measure: str, **more) -> dict:
    """A functional parameter over the transaction source, as a directive's YAML gives it."""
    return {"name": name, "class": "transactional", "source": "transaction", "measure": measure, **more}


def crm_env(profile, **extra: str) -> dict[str, str]:
    """The environment that points a `crm` or spark-submit process at the profile's lakehouse,
    checkpoints and broker, with this virtualenv's Python for Spark's workers."""
    return {
        **os.environ,
        "CRM_LAKEHOUSE": str(profile.lakehouse),
        "CRM_CHECKPOINTS": str(profile.checkpoints),
        "CRM_KAFKA_BOOTSTRAP": profile.kafka.bootstrap_servers,
        "PYSPARK_PYTHON": sys.executable,
        **extra,
    }


def with_topic_prefix(directives, prefix: str):
    """The directives with every operational source's topic renamed `<prefix>.<topic>`, so a
    test can share the session broker without reading another test's records."""
    from pipelines.directives import DirectiveSet

    base = directives.only("operational")
    sources = {name: src.model_copy(update={"topic": f"{prefix}.{src.topic}"}) for name, src in base.directive.sources.items()}
    operational = replace(base, directive=base.directive.model_copy(update={"sources": sources}))
    return DirectiveSet(directives.strategic, directives.functional, {operational.directive.id: operational}, directives.schemas)


def read_topic(bootstrap: str, topic: str, expected: int, deadline_s: float = 60.0) -> list:
    """The records of a topic (kafka-python ConsumerRecords), read until `expected` arrived or the deadline passed."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    records: list = []
    deadline = time.monotonic() + deadline_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                records += batch
    finally:
        consumer.close()
    return records


def late_by_stream_time(records, valid: set[bytes], delay: timedelta, time_field: str = "event_time") -> set[bytes]:
    """The oracle for CROM's late table: the values of the Kafka `records` (ConsumerRecords) that
    are late under the stream-time rule. In each partition, in offset order, a valid record is
    late when its event time is more than `delay` behind the newest valid record before it;
    `valid` holds the values CROM accepts (parsed and passing every quarantine rule)."""
    newest: dict[tuple[str, int], datetime] = {}
    late = set()
    for r in sorted(records, key=lambda r: (r.topic, r.partition, r.offset)):
        if r.value not in valid:
            continue
        at, where = datetime.fromisoformat(json.loads(r.value)[time_field]), (r.topic, r.partition)
        if where in newest and at < newest[where] - delay:
            late.add(r.value)
        newest[where] = max(at, newest.get(where, at))
    return late


def spark_jobs_started(spark) -> int:
    """How many Spark jobs the application has started, from any thread or job group."""
    context = spark.sparkContext._jsc.sc()
    context.listenerBus().waitUntilEmpty()  # the status store is fed by the listener bus
    jobs = context.statusStore().jobsList(None)
    return 1 + max([jobs.apply(i).jobId() for i in range(jobs.size())], default=-1)
