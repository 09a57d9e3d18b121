"""Kafka topics, created from the operational directives with kafka-python's admin client."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from pipelines.config import KafkaSettings
from pipelines.connection import connect
from pipelines.directives import Recommendations, Source


def ensure_topics(kafka: KafkaSettings, sources: dict[str, Source | Recommendations]) -> list[str]:
    """Create missing topics with their partitions and retention; returns the names created."""
    admin = connect(KafkaAdminClient, kafka)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                name=src.topic,
                num_partitions=src.partitions,
                replication_factor=1,
                topic_configs={"retention.ms": str(src.retention_hours * 3_600_000)},
            )
            for src in sources.values()
            if src.topic not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process
        return [t.name for t in wanted]
    finally:
        admin.close()


def end_offsets(kafka: KafkaSettings, topics: list[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of the topics; missing topics have none."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = connect(KafkaConsumer, kafka, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): offset for tp, offset in consumer.end_offsets(partitions).items()} if partitions else {}
    finally:
        consumer.close()


def end_offsets_total(kafka: KafkaSettings, topics: list[str]) -> int:
    """How many records the topics hold in all (sum of end offsets), 0 for missing topics."""
    return sum(end_offsets(kafka, topics).values())
