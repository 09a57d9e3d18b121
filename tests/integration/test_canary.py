"""Personal data never reaches storage: canary values go through the whole pipeline, then every
Delta table, every other file the run wrote, every log line and the Data Docs are searched.

The canaries are a known email, a phone number and a Luhn-valid card number, in the
declared personal fields (email, phone, card, handle), in free text (a post, a log line), and
in records CROM quarantines (a truncated one, one that breaks a rule).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from kafka import KafkaProducer
from pyspark.sql import functions as F

from pipelines.crfm.job import run_functional
from pipelines.crom.docs import build_data_docs
from pipelines.crom.ingest import run_ingest
from pipelines.crom.resolve import run_identities, run_web_sessions
from pipelines.crsm.job import run_strategic
from pipelines.generator import EventStream
from pipelines.tables import CromTables
from pipelines.topics import ensure_topics
from tests.helpers import with_topic_prefix

pytestmark = pytest.mark.integration

EMAIL = "Canary.Person@Example.ORG"
PHONE = "+44 20 7946 0991"
NATIONAL_PHONE = "020 7946 0991"
CARD = "4929 1725 6480 7318"
# Every way the canaries could be written down somewhere.
FORMS = [EMAIL.lower(), PHONE, "+442079460991", NATIONAL_PHONE, "2079460991", CARD, CARD.replace(" ", ""), CARD.replace(" ", "-")]
TEXT = f"Mail me at {EMAIL}, call {NATIONAL_PHONE} or {PHONE}; my card {CARD} was charged twice!"


def _luhn_valid(number: str) -> bool:
    digits = [int(d) for d in number if d.isdigit()][::-1]
    return sum(d if i % 2 == 0 else sum(divmod(2 * d, 10)) for i, d in enumerate(digits)) % 10 == 0


def _canary_records(topics: dict[str, str]) -> list[tuple[str, bytes, bytes]]:
    """Generated events of each source with the canaries written into them, plus two bad ones."""
    stream = EventStream(99, topics)
    first = {}
    for e in stream.events(0, 400):
        if e.kind == "valid":
            first.setdefault(e.source, json.loads(e.value))
    tx, social, log = first["transaction"], first["social"], first["log"]
    tx.update(customer_email=EMAIL, customer_phone=PHONE, payment_card=CARD)
    social.update(handle=EMAIL, text=TEXT)
    log.update(line=f"2026-06-01 10:00:00 ERROR {TEXT}")
    broken = dict(tx, event_id=tx["event_id"] + "-rule", currency="XXX")  # breaks a quarantine rule
    truncated = json.dumps(dict(tx, event_id=tx["event_id"] + "-cut"))[:-40]  # malformed JSON, canaries inside
    records = [(topics[r["source"]], r["event_id"], json.dumps(r)) for r in (tx, social, log, broken)]
    records.append((topics["transaction"], tx["event_id"] + "-cut", truncated))
    return [(topic, key.encode(), value.encode()) for topic, key, value in records]


def _found(text: str) -> list[str]:
    lowered = text.lower()
    return [form for form in FORMS if form.lower() in lowered]


def test_canaries_reach_no_table_file_log_or_report(spark, kafka, profile, directives, tmp_path, caplog, capfd):
    assert _luhn_valid(CARD)
    caplog.set_level(logging.INFO)
    kprofile, _ = kafka
    profile = profile.model_copy(update={"kafka": kprofile.kafka})
    operational = with_topic_prefix(directives, "canary").only("operational")
    sources = operational.directive.sources
    ensure_topics(profile.kafka, sources)
    producer = KafkaProducer(bootstrap_servers=profile.kafka.bootstrap_servers, acks="all")
    for topic, key, value in _canary_records({n: s.topic for n, s in sources.items()}):
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)
    run_identities(spark, profile, operational, directives.schemas)
    run_web_sessions(spark, profile, operational, directives.schemas)
    run_functional(spark, profile, directives, directives.only("functional"))
    run_strategic(spark, profile, directives, directives.only("strategic"))
    build_data_docs(spark, profile, operational, out_dir=tmp_path / "docs", last_batches=10)

    # The canaries did go through: their records are in silver and quarantine, so the search means something.
    tables = CromTables.of(profile, list(sources))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    assert read(tables.silver["transaction"]).where(F.col("payment_card_last4") == CARD[-4:]).count() == 1
    assert read(tables.silver["social"]).where(F.col("text").contains("<email>") & F.col("text").contains("<card>")).count() == 1
    assert read(tables.quarantine).count() == 2

    leaks = {}
    delta_tables = sorted({p.parent for p in Path(profile.lakehouse).rglob("_delta_log")})
    assert {Path(tables.bronze), Path(tables.quarantine), Path(tables.validation_results), Path(tables.identity_map)} <= set(delta_tables)
    for table in delta_tables:
        rows = read(str(table)).select(F.to_json(F.struct("*")).alias("row")).collect()  # a few rows per table
        leaks[str(table)] = _found("\n".join(r["row"] for r in rows))
    written = [p for root in (Path(profile.lakehouse), Path(profile.checkpoints), tmp_path / "docs") for p in root.rglob("*") if p.is_file()]
    for path in written:
        if not re.search(r"\.(parquet|crc)$", path.name):  # parquet is read through its table above
            leaks[str(path)] = _found(path.read_bytes().decode("utf-8", errors="replace"))
    captured = capfd.readouterr()
    leaks["logs"] = _found(caplog.text + captured.out + captured.err)
    assert {where: forms for where, forms in leaks.items() if forms} == {}
    assert len(written) > 10 and caplog.text  # the search covered the run's files and log lines
