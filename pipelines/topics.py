"""Kafka topics, created from the operational directives with kafka-python's admin client."""

from __future__ import annotations

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from pipelines.directives import Recommendations, Source
from pipelines.errors import CrmError


def ensure_topics(bootstrap: str, sources: dict[str, Source | Recommendations]) -> list[str]:
    """Create missing topics with their partitions and retention; returns the names created."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    except (KafkaError, OSError) as exc:
        raise CrmError(f"cannot reach Kafka at {bootstrap}: {exc}; is the broker running (`crm broker start`)?") from exc
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


def end_offsets(bootstrap: str, topics: list[str]) -> dict[tuple[str, int], int]:
    """The end offset of every partition of the topics; missing topics have none."""
    from kafka import KafkaConsumer, TopicPartition

    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10_000)
    except (KafkaError, OSError) as exc:
        raise CrmError(f"cannot reach Kafka at {bootstrap}: {exc}; is the broker running (`crm broker start`)?") from exc
    try:
        partitions = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        return {(tp.topic, tp.partition): offset for tp, offset in consumer.end_offsets(partitions).items()} if partitions else {}
    finally:
        consumer.close()


def end_offsets_total(bootstrap: str, topics: list[str]) -> int:
    """How many records the topics hold in all (sum of end offsets), 0 for missing topics."""
    return sum(end_offsets(bootstrap, topics).values())
