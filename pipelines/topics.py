"""Kafka topics, kept as the operational directives say with kafka-python's admin client."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
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


def sync_topics(kafka: KafkaSettings, sources: dict[str, Source | Recommendations]) -> list[str]:
    """Bring every topic to what its directive entry says: missing topics are created, and
    existing ones get the directive's retention and, when it grew, its partition count.
    Returns one line per change; a topic cannot lose partitions, so a smaller count is
    reported and left alone."""
    created = ensure_topics(kafka, sources)
    changes = [f"{topic}: created" for topic in created]
    # a topic just created has the directive's settings; its metadata may not list its partitions yet
    wanted = {src.topic: src for src in sources.values() if src.topic not in created}
    if not wanted:
        return changes
    admin = connect(KafkaAdminClient, kafka)
    try:
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(wanted))}
        resources = [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None}) for topic in wanted]
        retention = {topic: int(c["retention.ms"]["value"]) for topic, c in admin.describe_configs(resources, config_filter="all")["topic"].items()}
        for topic, src in sorted(wanted.items()):
            target_ms = src.retention_hours * 3_600_000
            if retention[topic] != target_ms:
                admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": str(target_ms)})])
                changes.append(f"{topic}: retention {retention[topic] / 3_600_000:g} h -> {src.retention_hours} h")
            if partitions[topic] < src.partitions:
                admin.create_partitions({topic: NewPartitions(total_count=src.partitions)})
                changes.append(f"{topic}: partitions {partitions[topic]} -> {src.partitions}")
            elif partitions[topic] > src.partitions:
                changes.append(f"{topic}: keeps {partitions[topic]} partitions (the directive says {src.partitions}; a topic cannot lose partitions)")
    finally:
        admin.close()
    return changes


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
