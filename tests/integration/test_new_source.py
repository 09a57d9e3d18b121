"""A fifth source added the way the README tells a user to: a JSON Schema and an operational
directive entry (docs/examples/survey), plus one functional parameter over it. No code
changes: the survey gets its own datafied silver table, its bad records reach quarantine with
their reasons, its personal data is scrubbed, and CRFM measures it."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from kafka import KafkaProducer
from pyspark.sql import functions as F

from pipelines.config import REPO_ROOT
from pipelines.crfm.job import run_functional
from pipelines.crom.ingest import run_ingest
from pipelines.directives import load_directives
from pipelines.generator import EventStream, produce
from pipelines.tables import CromTables, functional_table
from pipelines.topics import ensure_topics

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "docs" / "examples" / "survey"
CARD = "4929 1725 6480 7318"
PHONE = "+44 20 7946 0991"
RAW = [CARD, CARD.replace(" ", ""), PHONE, PHONE.replace(" ", "")]


def _with_survey(root: Path) -> tuple[Path, Path]:
    """The shipped directives and schemas, copied, with the survey example added as a user would."""
    directives, schemas = root / "directives", root / "schemas"
    shutil.copytree(REPO_ROOT / "directives", directives)
    shutil.copytree(REPO_ROOT / "schemas", schemas)
    shutil.copy(EXAMPLE / "survey.v1.json", schemas / "survey.v1.json")
    operational = directives / "operational" / "ingest_events.yaml"
    document = yaml.safe_load(operational.read_text())
    document["sources"].update(yaml.safe_load((EXAMPLE / "source.yaml").read_text()))
    for source in document["sources"].values():  # topics of this test's own
        source["topic"] = f"newsource.{source['topic']}"
    operational.write_text(yaml.safe_dump(document, sort_keys=False))
    functional = directives / "functional" / "customer_metrics.yaml"
    document = yaml.safe_load(functional.read_text())
    document["parameters"] += yaml.safe_load((EXAMPLE / "parameter.yaml").read_text())
    functional.write_text(yaml.safe_dump(document, sort_keys=False))
    return directives, schemas


def _answer(n: int, customer: str | None, when: datetime, **fields) -> dict:
    return {
        "event_id": f"survey-{n:06d}", "source": "survey", "schema_version": 1, "event_time": when.isoformat(),
        "producer": "survey-tool", "customer_id": customer, "channel": "email", "nps": 9, "comment": "Great service, thanks!",
        **fields,
    }  # fmt: skip


def test_a_survey_source_from_a_schema_and_a_directive_entry(spark, kafka, profile, tmp_path):
    kprofile, _ = kafka
    directives_dir, schemas_dir = _with_survey(tmp_path)
    profile = profile.model_copy(update={"kafka": kprofile.kafka, "directives": directives_dir, "schemas": schemas_dir})
    directives = load_directives(profile.directives, profile.schemas)
    sources = directives.only("operational").directive.sources
    assert "survey" in sources and "survey" in directives.schemas
    ensure_topics(profile.kafka, sources)

    # The other sources' events, for customers the survey answers then name.
    generated = EventStream(21, {name: src.topic for name, src in sources.items() if name != "survey"})
    produce(profile.kafka, generated, 0, 400, progress=lambda _: None)
    events = [json.loads(e.value) for e in generated.events(0, 400) if e.kind == "valid"]
    customers = sorted({e["customer_id"] for e in events if e.get("customer_id")})[:3]
    newest = max(datetime.fromisoformat(e["event_time"]) for e in events)
    first, second = newest - timedelta(days=3), newest - timedelta(days=1)
    valid = [
        _answer(1, customers[0], first, nps=3, comment=f"Charged twice on card {CARD}, call me on {PHONE}. Terrible."),
        _answer(2, customers[0], second, nps=8),  # the newer answer: nps_latest is 8
        _answer(3, customers[1], first, nps=10, channel="app"),
        _answer(4, customers[2], second, nps=0, comment=None),
        _answer(5, None, second, nps=6, channel="web"),  # anonymous
    ]
    missing = {k: v for k, v in _answer(6, customers[1], second).items() if k != "nps"}
    bad = [
        ("malformed_json", json.dumps(_answer(7, customers[1], second))[:-12]),
        ("missing_field", json.dumps(missing)),
        ("expectation_failed", json.dumps(_answer(8, customers[1], second, nps=11))),  # outside 0-10
        ("expectation_failed", json.dumps(_answer(9, customers[1], second, channel="fax"))),  # not in the set
    ]
    producer = KafkaProducer(bootstrap_servers=profile.kafka.bootstrap_servers, acks="all")
    in_time_order = sorted(valid, key=lambda a: a["event_time"])  # as a survey tool sends them
    for i, value in enumerate([json.dumps(a) for a in in_time_order] + [v for _, v in bad]):
        producer.send(sources["survey"].topic, key=f"survey-{i}".encode(), value=value.encode())
    producer.flush()
    producer.close()

    run_ingest(spark, profile, directives.only("operational"), directives.schemas, until_caught_up=True)

    tables = CromTables.of(profile, list(sources))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    # Its own silver table, typed and datafied like a social post.
    silver = {r["event_id"]: r for r in read(tables.silver["survey"]).collect()}
    assert set(silver) == {a["event_id"] for a in valid}
    assert silver["survey-000001"]["nps"] == 3 and silver["survey-000001"]["sentiment_label"] == "negative"
    assert silver["survey-000001"]["complaint"] is True
    assert silver["survey-000002"]["sentiment_label"] == "positive"
    assert all(-1 <= r["sentiment_score"] <= 1 and r["language"] for r in silver.values() if r["comment"])
    # Bad records reach quarantine, each with its reason and, for rule breaches, the rule.
    quarantined = read(tables.quarantine).where(F.col("kafka_topic") == sources["survey"].topic).collect()
    assert sorted(r["reason_code"] for r in quarantined) == sorted(reason for reason, _ in bad)
    assert sorted(r["failed_rules"][0] for r in quarantined if r["reason_code"] == "expectation_failed") == [
        "survey_channel_known", "survey_nps_in_range",
    ]  # fmt: skip
    # The card and phone number in the comment are masked in silver, bronze and quarantine alike.
    assert "<card>" in silver["survey-000001"]["comment"] and "<phone>" in silver["survey-000001"]["comment"]
    stored = [json.dumps(r.asDict(), default=str) for r in silver.values()]
    stored += [r["payload"] or "" for r in read(tables.bronze).where(F.col("kafka_topic") == sources["survey"].topic).collect()]
    stored += [r["payload"] or "" for r in quarantined]
    assert [raw for raw in RAW if any(raw in text for text in stored)] == []

    # A functional parameter over it: each customer's newest score.
    functional = directives.only("functional")
    run_functional(spark, profile, directives, functional)
    params = read(functional_table(profile, functional.directive.id))
    latest = {r["customer_id"]: r["nps_latest"] for r in params.where(F.col("nps_latest").isNotNull()).collect()}
    assert latest == {customers[0]: 8, customers[1]: 10, customers[2]: 0}
