"""`crm demo` as a user runs it, with canary personal data among its events. One run, two checks:

- what the user sees: the project's own lines and progress, while Ivy's report, Spark's log4j
  lines and Python warnings go to the run's log file under <cache>/logs/;
- personal data never reaches storage: every Delta table, every other file the run wrote,
  its terminal output, its log file and the Data Docs are searched for the canaries.

The canaries are a known email, a phone number and a Luhn-valid card number, in the declared
personal fields (email, phone, card, handle), in free text (a post, a log line), and in records
CROM quarantines (a truncated one, one that breaks a rule).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from kafka import KafkaProducer
from pyspark.sql import functions as F

from pipelines.generator import EventStream
from pipelines.spark import resolved_jars, resolved_jars_file
from pipelines.tables import CromTables
from tests.conftest import broker_of_its_own, profile_in
from tests.helpers import crm_env

pytestmark = pytest.mark.integration

CRM = str(Path(sys.executable).parent / "crm")
EVENTS = 2000
NOISE = re.compile(r"^(:: |\s*found \S+#|Ivy Default Cache|.*\b(WARN|WARNING)\b|.*Warning:|Using Spark's default log4j|Setting default log level)")

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


@dataclass(frozen=True)
class DemoRun:
    profile: object
    demo: subprocess.CompletedProcess
    docs: subprocess.CompletedProcess
    log_files: list[Path]  # the demo's, then the docs command's
    bad_coordinates: set[tuple[str, int, int]]  # (topic, partition, offset) of the two bad canary records


@pytest.fixture(scope="module")
def demo_run(base_profile, directives, tmp_path_factory) -> DemoRun:
    """The canary records on the shipped topics of a broker of the module's own, then `crm demo`
    (which finds the broker answering and uses it) and `crm docs`, as subprocesses."""
    assert _luhn_valid(CARD)
    folder = tmp_path_factory.mktemp("demo")
    with broker_of_its_own(base_profile, profile_in(base_profile, folder), directives, folder / "broker") as (profile, _):
        producer = KafkaProducer(bootstrap_servers=profile.kafka.bootstrap_servers, acks="all")
        sources = directives.only("operational").directive.sources
        sent = [producer.send(topic, key=key, value=value) for topic, key, value in _canary_records({n: s.topic for n, s in sources.items()})]
        producer.flush()
        metadata = [future.get(timeout=30) for future in sent]
        producer.close()
        logs = profile.cache / "logs"
        before = set(logs.glob("crm-*.log"))
        env = crm_env(profile)
        # The demo resolves the packages through Ivy, as a first run does, and lists their jars again.
        listing = resolved_jars_file(profile)
        listing.unlink(missing_ok=True)
        demo = subprocess.run([CRM, "demo", "--events", str(EVENTS)], env=env, capture_output=True, text=True, timeout=1200)
        assert demo.returncode == 0, demo.stderr[-3000:]
        assert resolved_jars(profile), f"{listing} was not written"
        docs = subprocess.run([CRM, "docs", "--batches", "10"], env=env, capture_output=True, text=True, timeout=600)
        assert docs.returncode == 0, docs.stderr[-3000:]
        [demo_log] = [p for p in set(logs.glob("crm-demo-*.log")) - before]
        [docs_log] = [p for p in set(logs.glob("crm-docs-*.log")) - before]
    bad = {(m.topic, m.partition, m.offset) for m in metadata[-2:]}
    return DemoRun(profile, demo, docs, [demo_log, docs_log], bad)


def test_demo_prints_only_its_own_lines(demo_run):
    run = demo_run.demo
    noise = [line for line in (run.stdout + run.stderr).splitlines() if NOISE.match(line)]
    assert noise == []
    assert "Lakehouse totals" in run.stdout and f"CROM batch 0: {EVENTS + 5:,} records" in run.stderr
    assert re.search(r"^crm: CRFM functional\.customer_metrics: segments \(", run.stderr, re.M)
    assert re.search(r"^crm: CRSM strategic\.customer_value validity: V4 variability, \d+ re-measures", run.stderr, re.M)
    # What was kept off the terminal is in this run's log file.
    kept = demo_run.log_files[0].read_text(errors="replace")
    assert "resolution report" in kept or "found io.delta#delta-spark" in kept  # Ivy's report
    assert "without Ivy" in demo_run.log_files[1].read_text(errors="replace")  # the next command loaded the listed jars
    assert re.search(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d WARN ", kept, re.M)  # Spark's log4j lines
    assert f"CROM batch 0: {EVENTS + 5:,} records" in kept  # and the project's own lines, with timestamps


def test_canaries_reach_no_table_file_log_or_report(spark, demo_run, directives):
    profile = demo_run.profile
    # The canaries did go through: their records are in silver and quarantine, so the search means something.
    tables = CromTables.of(profile, list(directives.schemas))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    assert read(tables.silver["transaction"]).where(F.col("payment_card_last4") == CARD[-4:]).count() == 1
    assert read(tables.silver["social"]).where(F.col("text").contains("<email>") & F.col("text").contains("<card>")).count() == 1
    quarantined = {(r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in read(tables.quarantine).collect()}
    assert demo_run.bad_coordinates <= quarantined

    leaks = {}
    delta_tables = sorted({p.parent for p in Path(profile.lakehouse).rglob("_delta_log")})
    assert {Path(tables.bronze), Path(tables.quarantine), Path(tables.validation_results), Path(tables.identity_map)} <= set(delta_tables)
    for table in delta_tables:
        rows = read(str(table)).select(F.to_json(F.struct("*")).alias("row")).collect()  # a few thousand rows at most
        leaks[str(table)] = _found("\n".join(r["row"] for r in rows))
    written = [p for root in (Path(profile.lakehouse), Path(profile.checkpoints)) for p in root.rglob("*") if p.is_file()]
    for path in written:
        if not re.search(r"\.(parquet|crc)$", path.name):  # parquet is read through its table above
            leaks[str(path)] = _found(path.read_bytes().decode("utf-8", errors="replace"))
    for name, run in (("demo", demo_run.demo), ("docs", demo_run.docs)):
        leaks[f"{name} output"] = _found(run.stdout + run.stderr)
    for log_file in demo_run.log_files:
        leaks[str(log_file)] = _found(log_file.read_text(errors="replace"))
    assert {where: forms for where, forms in leaks.items() if forms} == {}
    assert any("_data_docs" in str(p) and p.suffix == ".html" for p in written)  # the search covered the Data Docs
    assert any(p.name.endswith(".html") and "_reports" in str(p) for p in written)  # and the CRSM report
