"""The closed knowledge loop: the customers a strategic directive's rules single out, as
recommendations for the operational CRM, in a Delta table and on a Kafka topic.

The topic carries the customer's keyed pseudonym (`customer_key`), never the id: the
operational side maps it back through crom/identity_map (key type `customer`). Each
recommendation has an id derived from the directive, the functional version, the rule and
that pseudonym, so a consumer that sees one twice (a rerun after a crash between the
publish and the table append) can drop the copy.
"""

from __future__ import annotations

from functools import reduce

from pyspark.errors import AnalysisException, ParseException
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.config import KafkaSettings
from pipelines.directives import StrategicDirective
from pipelines.errors import CrmError
from pipelines.connection import connect
from pipelines.privacy import customer_pseudonym

GRAIN = "customer_id"
KEY = "customer_key"  # the grain's pseudonym, what the topic carries


def recommend(scored: DataFrame, directive: StrategicDirective, version: int, key: bytes, where: str = "") -> DataFrame:
    """One row per customer and rule that selects them, ranked by the rule's priority."""
    check_rules(scored, directive, where)
    parts = []
    for rule in directive.recommendations.rules:
        parts.append(
            scored.where(F.coalesce(F.expr(rule.when), F.lit(False))).select(
                F.col(GRAIN),
                F.lit(rule.name).alias("recommendation"),
                F.expr(rule.priority).cast("double").alias("priority"),
                F.lit(rule.description).alias("reason"),
            )
        )
    ranked = reduce(DataFrame.unionByName, parts).withColumn(
        "rank", F.row_number().over(Window.partitionBy("recommendation").orderBy(F.desc_nulls_last("priority"), GRAIN))
    )
    pseudonymised = ranked.withColumn(KEY, customer_pseudonym(F.col(GRAIN), key))
    identity = F.concat_ws("|", F.lit(directive.id), F.lit(str(version)), F.col("recommendation"), F.col(KEY))
    return pseudonymised.select(F.sha2(identity, 256).alias("recommendation_id"), "*")


def check_rules(scored: DataFrame, directive: StrategicDirective, where: str = "") -> None:
    """Analyse each rule's condition and priority over the grain and the columns it declares; no job runs."""
    for i, rule in enumerate(directive.recommendations.rules if directive.recommendations else []):
        try:
            _ = scored.select(GRAIN, *rule.uses).where(F.expr(rule.when)).select(F.expr(rule.priority)).schema  # analysis only
        except (AnalysisException, ParseException) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise CrmError(f"{where}: recommendations.rules[{i}] ({rule.name}): {reason}") from exc


def publish(recommendations: DataFrame, kafka: KafkaSettings, topic: str) -> int:
    """Send each recommendation as JSON, keyed by the customer's pseudonym and without the
    customer id, and wait for the broker's acks.

    The rows stream to the driver a partition at a time (toLocalIterator), and kafka-python's
    producer is closed when done, so nothing keeps retrying a broker that later stops.
    """
    from kafka import KafkaProducer

    producer = connect(KafkaProducer, kafka, acks="all", linger_ms=20)
    sent = 0
    try:
        shared = [c for c in recommendations.columns if c != GRAIN]
        for row in recommendations.select(F.col(KEY).alias("key"), F.to_json(F.struct(*shared)).alias("value")).toLocalIterator():
            producer.send(topic, key=(row["key"] or "").encode(), value=row["value"].encode())
            sent += 1
        producer.flush()
    finally:
        producer.close()
    return sent
