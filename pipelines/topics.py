"""Kafka topics, created from the operational directives with kafka-python's admin client, and
the connection every client of the project makes (plaintext, or SASL_SSL with SCRAM)."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, SaslAuthenticationFailedError, TopicAlreadyExistsError

from pipelines.config import KafkaSettings
from pipelines.directives import Recommendations, Source
from pipelines.errors import CrmError


@contextmanager
def kafka_failures() -> Iterator[list[BaseException]]:
    """Collect the exceptions kafka-python logs while it retries, instead of printing them:
    its bootstrap retries until a deadline and only then says it could not bootstrap."""
    failures: list[BaseException] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            failures.extend(arg for arg in (record.args or ()) if isinstance(arg, BaseException))

    kafka_log = logging.getLogger("kafka")
    handler, propagate = Collect(logging.WARNING), kafka_log.propagate
    kafka_log.addHandler(handler)
    kafka_log.propagate = False
    try:
        yield failures
    finally:
        kafka_log.removeHandler(handler)
        kafka_log.propagate = propagate


def check_connection(kafka: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Fail fast, in one line, when the broker cannot be used: nothing listens, its certificate
    is not signed by the configured CA, or it refuses the SCRAM username or password."""
    host, _, port = kafka.bootstrap_servers.split(",")[0].strip().rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except (OSError, ValueError) as exc:
        raise CrmError(f"cannot reach Kafka at {host}:{port}: {getattr(exc, 'strerror', None) or exc}; is the broker running (`crm broker start`)?") from None
    with sock:
        if not kafka.secure:
            return
        try:
            context = ssl.create_default_context(cafile=str(kafka.ssl_cafile))
        except (OSError, ssl.SSLError) as exc:
            raise CrmError(f"cannot read the CA certificate {kafka.ssl_cafile} (kafka.ssl_cafile, CRM_KAFKA_CAFILE): {exc}") from None
        try:
            context.wrap_socket(sock, server_hostname=host).close()
        except ssl.SSLCertVerificationError as exc:
            raise CrmError(
                f"the broker at {host}:{port} presented a certificate the CA in {kafka.ssl_cafile} does not vouch for "
                f"({exc.verify_message}); point kafka.ssl_cafile (CRM_KAFKA_CAFILE) at the broker's CA"
            ) from None
        except (OSError, ssl.SSLError) as exc:
            raise CrmError(f"TLS with the broker at {host}:{port} failed: {exc}; is its listener SASL_SSL?") from None
    with kafka_failures() as failures:
        try:
            # TCP and TLS already work, so a refused login shows on the first attempt.
            KafkaAdminClient(**kafka.client_options(), bootstrap_timeout_ms=int(timeout_s * 500)).close()
            return
        except KafkaError:
            pass
    if any(isinstance(failure, SaslAuthenticationFailedError) for failure in failures):
        raise CrmError(
            f"Kafka at {kafka.bootstrap_servers} refused user {kafka.username!r} ({kafka.sasl_mechanism}): wrong username or password; "
            "check CRM_KAFKA_USERNAME and CRM_KAFKA_PASSWORD"
        )
    reason = failures[-1] if failures else "no answer"
    raise CrmError(f"cannot log in to Kafka at {kafka.bootstrap_servers}: {reason}")


_checked: set[KafkaSettings] = set()


def connect(client_class, kafka: KafkaSettings, **options):
    """A kafka-python client for the profile's broker, or a one-line reason it cannot be had."""
    if kafka not in _checked:  # once per process: clients are made per call, the check is not free
        check_connection(kafka)
        _checked.add(kafka)
    try:
        return client_class(**kafka.client_options(), request_timeout_ms=10_000, **options)
    except (KafkaError, OSError) as exc:
        raise CrmError(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc}; is the broker running (`crm broker start`)?") from exc


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
