"""Retention and erasure on real tables: `crm forget` leaves nothing of a customer in any
Parquet file of any layer, and `crm purge` trims old rows, while the CRFM streams that read
silver keep running incrementally."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import shutil
import subprocess
import sys
import time
import zlib
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from kafka import KafkaProducer
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.config import load_profile
from pipelines.crfm.job import run_functional
from pipelines.crfm.retention import purge_partials
from pipelines.crom.ingest import run_ingest, start_ingest
from pipelines.crom.resolve import run_identities, run_web_sessions
from pipelines.crsm.job import run_strategic
from pipelines.crsm.report import build_report
from pipelines.erasure import forget, purge
from pipelines.generator import EventStream, produce
from pipelines.privacy import hmac_key, phone_key
from pipelines.tables import CromTables, functional_table
from pipelines.topics import ensure_topics
from tests.helpers import crm_env, with_topic_prefix

CRM = str(Path(sys.executable).parent / "crm")

pytestmark = pytest.mark.integration


def _run_layers(spark, profile, directives) -> None:
    operational = directives.only("operational")
    run_ingest(spark, profile, operational, directives.schemas, until_caught_up=True)
    run_identities(spark, profile, operational, directives.schemas)
    run_web_sessions(spark, profile, operational, directives.schemas)


def _produce(profile, directives, first: int, n: int) -> None:
    sources = directives.only("operational").directive.sources
    produce(profile.kafka, EventStream(5, {s: src.topic for s, src in sources.items()}), first, n, progress=lambda _: None)


BASE_EVENTS = 1200


@pytest.fixture(scope="module")
def layers_run(spark, kafka, directives, tmp_path_factory):
    """CROM and CRFM once over BASE_EVENTS events on topics of this module's own; each test
    works on a copy of the lakehouse and checkpoints (Delta tables and checkpoints are files)."""
    kprofile, _ = kafka
    root = tmp_path_factory.mktemp("erasure-base")
    profile = load_profile("local").model_copy(update={"lakehouse": root / "lakehouse", "checkpoints": root / "checkpoints", "kafka": kprofile.kafka})
    ours = with_topic_prefix(directives, "erasure")
    ensure_topics(profile.kafka, ours.only("operational").directive.sources)
    _produce(profile, ours, 0, BASE_EVENTS)
    _run_layers(spark, profile, ours)
    run_functional(spark, profile, ours, ours.only("functional"))
    return root, profile, ours


def _all_layers_run(layers_run, tmp_path: Path):
    """A copy of the module's run: its profile, CROM tables and functional directive."""
    root, base, directives = layers_run
    for folder in ("lakehouse", "checkpoints"):
        shutil.copytree(root / folder, tmp_path / folder)
    profile = base.model_copy(update={"lakehouse": tmp_path / "lakehouse", "checkpoints": tmp_path / "checkpoints"})
    return profile, directives, CromTables.of(profile, list(directives.schemas)), directives.only("functional")


def _comparable(spark, path: str):
    return spark.read.format("delta").load(path).drop("computed_at")


def _identifiers(events, customers: set[str], key: bytes) -> dict[str, set[str]]:
    """Every way each customer can be written down: id, e-mail, phone (as sent and in E.164),
    card number, and the keyed pseudonyms of the id, e-mail, phone, cookies and handles."""
    pseudonym = lambda value: hmac.new(key, value.encode(), hashlib.sha256).hexdigest()  # noqa: E731
    found = {c: {c, pseudonym(c)} for c in customers}
    for e in events:
        r = json.loads(e.value)
        c = r.get("customer_id")
        if c not in customers:
            continue
        if e.source == "transaction":
            email, phone, card = r["customer_email"], r["customer_phone"], r["payment_card"]
            found[c] |= {email, email.strip(" ").lower(), pseudonym(email.strip(" ").lower()), card, card.replace(" ", "")}
            if phone:
                e164 = phone_key(phone, r["customer_country"])
                found[c] |= {phone, e164, pseudonym(e164)}
        elif e.source == "web":
            found[c].add(pseudonym(r["cookie_id"].strip(" ").lower()))
        elif e.source == "social":
            found[c].add(pseudonym(r["handle"].strip(" ").lower()))
    return found


def _texts(file: Path) -> list[str]:
    """What a file says, as an attacker would read it: its bytes, the values of a Parquet file
    (data or Delta checkpoint), and the inflated form of a compressed state file."""
    raw = file.read_bytes()
    texts = [raw.decode("utf-8", errors="replace")]
    if file.suffix == ".parquet":
        texts.append(json.dumps(pq.ParquetFile(file).read().to_pylist(), default=str))  # the file alone, no partition folders
    try:
        texts.append(zlib.decompress(base64.b64decode(raw, validate=True)).decode("utf-8", errors="replace"))
    except (ValueError, zlib.error):
        pass
    return texts


def _leaks(roots: list[Path], identifiers: dict[str, set[str]]) -> dict[str, list[str]]:
    """File -> the customers some identifier of whom it holds."""
    found = {}
    for root in roots:
        for file in (p for p in root.rglob("*") if p.is_file()):
            text = "\n".join(_texts(file))
            named = sorted(c for c, forms in identifiers.items() if any(form in text for form in forms))
            if named:
                found[str(file)] = named
    return found


def test_forget_leaves_nothing_of_three_customers_and_the_streams_go_on(spark, layers_run, tmp_path):
    profile, directives, crom, functional = _all_layers_run(layers_run, tmp_path)
    operational = directives.only("operational")
    strategic = directives.only("strategic")
    run_strategic(spark, profile, directives, strategic)
    build_report(spark, profile, directives, strategic)
    sources = operational.directive.sources
    events = list(EventStream(5, {s: src.topic for s, src in sources.items()}).events(0, BASE_EVENTS))
    seen_in = {}
    for e in events:
        text = e.value.decode()
        for c in {json.loads(text).get("customer_id")} | set(re.findall(r"C\d{6}", text)) - {None}:
            seen_in.setdefault(c, set()).add(e.source)
    # Together in every source: two customers in each source but tickets, which are a twentieth
    # of the events, and the ticket raiser seen in the most sources.
    customers = sorted(c for c, where in seen_in.items() if where >= set(sources) - {"ticket"})[:2]
    customers.append(min((c for c, where in seen_in.items() if "ticket" in where), key=lambda c: (-len(seen_in[c]), c)))
    assert len(set(customers)) == 3 and set().union(*(seen_in[c] for c in customers)) == set(sources)
    identifiers = _identifiers(events, set(customers), hmac_key(profile.cache))
    roots = [profile.lakehouse, profile.checkpoints]
    assert len(_leaks(roots, identifiers)) > 20  # the scan finds them before: it can

    # A running CROM stream beside the erasure, which runs as users run it.
    query = start_ingest(spark, profile, operational, directives.schemas, until_caught_up=False)
    try:
        logs = set((profile.cache / "logs").glob("crm-forget-*.log"))
        requests = tmp_path / "requests.txt"
        requests.write_text(f"# this week's requests\n{customers[0]}\n")
        run = subprocess.run([CRM, "forget", customers[1], customers[2], "--requests", str(requests)], env=crm_env(profile),
                             capture_output=True, text=True, timeout=900)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        assert "forgot 3 customers" in run.stdout and "Kafka keeps their raw events until each topic's retention" in run.stdout
        new_logs = set((profile.cache / "logs").glob("crm-forget-*.log")) - logs
        assert new_logs and _leaks(list(new_logs), identifiers) == {}
        assert not any(form in run.stdout + run.stderr for forms in identifiers.values() for form in forms)

        # The stream goes on: new events of other customers land.
        audit = lambda: spark.read.format("delta").load(crom.batch_audit).agg(F.sum("records")).first()[0]  # noqa: E731
        before = audit()
        others = [e for e in EventStream(6, {s: src.topic for s, src in sources.items()}).events(10_000, 300)
                  if not any(c.encode() in e.value for c in customers)]  # fmt: skip
        producer = KafkaProducer(bootstrap_servers=profile.kafka.bootstrap_servers, acks="all")
        for e in others:
            producer.send(e.topic, key=e.key, value=e.value)
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 300
        while audit() < before + len(others) and time.monotonic() < deadline and query.exception() is None:
            query.awaitTermination(2)
        assert query.exception() is None and audit() == before + len(others)
    finally:
        query.stop()
    run_identities(spark, profile, operational, directives.schemas)
    after = run_functional(spark, profile, directives, functional)  # the next CRFM run goes on
    assert after.new_events > 0
    assert _leaks(roots, identifiers) == {}
    assert spark.read.format("delta").load(functional_table(profile, functional.directive.id)).where(F.col("customer_id").isin(customers)).count() == 0


def test_forget_while_crfm_is_behind_rebuilds_the_partials_it_can_no_longer_read(spark, layers_run, tmp_path):
    profile, directives, crom, functional = _all_layers_run(layers_run, tmp_path)
    _produce(profile, directives, BASE_EVENTS + 400, 800)
    _run_layers(spark, profile, directives)  # CRFM has not read these
    newest = spark.read.format("delta").load(crom.silver["transaction"]).orderBy(F.desc("batch_id"), "customer_id").first()["customer_id"]

    forget(spark, profile.lakehouse, crom, [newest])
    run = run_functional(spark, profile, directives, functional)

    assert run.rebuilt_partials  # a file it had not read was rewritten and vacuumed
    metrics = spark.read.format("delta").load(functional_table(profile, functional.directive.id))
    assert metrics.where(F.col("customer_id") == newest).count() == 0
    silver_customers = spark.read.format("delta").load(crom.silver["transaction"]).select("customer_id").distinct()
    assert silver_customers.join(metrics, "customer_id", "left_anti").count() == 0  # nobody else's events were lost


def test_purge_deletes_rows_past_each_sources_retention_and_keeps_the_rest(spark, layers_run, tmp_path):
    profile, directives, crom, functional = _all_layers_run(layers_run, tmp_path)
    sources = directives.only("operational").directive.sources
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    # As of the day that puts the first day of web events past the web source's retention.
    first = read(crom.silver["web"]).agg(F.min("event_time")).first()[0]
    second_day = first.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    as_of = second_day + timedelta(days=sources["web"].delta_retention_days)
    cutoffs = {s: as_of - timedelta(days=src.delta_retention_days) for s, src in sources.items() if src.delta_retention_days}
    assert sources["transaction"].delta_retention_days is None  # purchases are kept
    expected = {s: read(p).where(F.col("event_time") >= cutoffs[s]).count() if s in cutoffs else read(p).count() for s, p in crom.silver.items()}
    assert 0 < expected["web"] < read(crom.silver["web"]).count()
    bronze_before = {"web": read(crom.bronze).where(F.col("kafka_topic") == sources["web"].topic).count()}
    partials = {p.name: str(p) for p in (profile.lakehouse / "crfm").glob("*_partials_*")}
    source_of = {name: next(s for s in sources if name.endswith(f"_partials_{s}") or name.endswith(f"_partials_{s}_touches")) for name in partials}
    old_days = lambda name: read(partials[name]).where(F.col("day") < cutoffs[source_of[name]].date()).count()  # noqa: E731
    assert old_days("customer_metrics_partials_web") > 0 and old_days("customer_metrics_partials_social") > 0
    kept_orders = {name: read(path).count() for name, path in partials.items() if source_of[name] == "transaction"}

    purged = purge(spark, crom, sources, as_of)
    purged_partials = purge_partials(spark, profile, directives, sources, as_of)

    assert {s: read(p).count() for s, p in crom.silver.items()} == expected
    assert {e.table for e in purged} >= {"crom/silver_web (web)", "crom/silver_log (log)", "crom/bronze (log)"}
    # Bronze counts back from when records arrived (today), not from event time: the log
    # source's 90 days from `as_of` reach past today, the web source's two years do not.
    bronze = {s: read(crom.bronze).where(F.col("kafka_topic") == src.topic).count() for s, src in sources.items()}
    assert bronze["log"] == 0 and bronze["web"] == bronze_before["web"]
    # CRFM's daily partials follow their source's retention too; purchases' are kept.
    assert {name: old_days(name) for name in partials if source_of[name] in cutoffs} == {name: 0 for name in partials if source_of[name] in cutoffs}
    assert {name: read(partials[name]).count() for name in kept_orders} == kept_orders
    assert "crfm/customer_metrics_partials_web (web)" in {e.table for e in purged_partials}
    run = run_functional(spark, profile, directives, functional)  # the streams skip the DELETE commits
    assert not run.rebuilt_partials and run.new_events == 0
