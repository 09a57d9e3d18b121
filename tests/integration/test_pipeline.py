"""End to end on the real stack: Kafka broker -> Spark Structured Streaming -> Delta, then
CRFM and CRSM, with exact row counts checked against what the generator injected."""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from deltalake import DeltaTable
from pyspark.sql import functions as F

from pipelines.catalog import catalog
from pipelines.config import REPO_ROOT
from pipelines.crfm.job import run_functional
from pipelines.crom.ingest import run_ingest, start_ingest
from pipelines.crom.resolve import run_identities, run_web_sessions
from pipelines.crom.text import score_texts
from pipelines.crsm.job import run_strategic
from pipelines.crsm.report import build_report
from pipelines.directives import Loaded
from pipelines.errors import CrmError
from pipelines.generator import COMPLAINTS, LOG_LINES, PRODUCTS, REASON_OF_KIND, SILVER_KINDS, EventStream, produce
from pipelines.privacy import hmac_key, phone_key
from pipelines.rates import read_rates
from pipelines.status import committed_offsets, lag
from pipelines.tables import CromTables, functional_table, strategic_table
from pipelines.topics import end_offsets
from tests.helpers import late_by_stream_time, read_topic, spark_jobs_started

pytestmark = pytest.mark.integration

SEED = 1234
FIRST, SECOND = 3000, 800
RATES = read_rates(REPO_ROOT / "conf" / "currency_rates.csv")


def _day(record: dict) -> date:
    return datetime.fromisoformat(record["event_time"]).astimezone(timezone.utc).date()


def _in_eur(amount: float, currency: str, event_time: str) -> float:
    """The oracle for amount_base: the rate row in force on the order's date, read straight from conf/."""
    day = datetime.fromisoformat(event_time).date()
    in_force = [r for r in RATES.rates if r.currency == currency and r.valid_from <= day]
    return round(amount / max(in_force, key=lambda r: r.valid_from).units_per_base, 2)


def _hours_open(ticket: dict) -> float:
    """The oracle for hours_open: from the ticket's opening to this event."""
    return (datetime.fromisoformat(ticket["event_time"]) - datetime.fromisoformat(ticket["opened_at"])).total_seconds() / 3600


def _claims(events, key: bytes) -> dict[tuple[str, str], set[str]]:
    """The oracle for the identity map: key -> customers, from the events' own fields."""
    pseudonym = lambda value: hmac.new(key, value.encode(), hashlib.sha256).hexdigest()  # noqa: E731
    claims = defaultdict(set)
    for e in events:
        r = json.loads(e.value)
        if e.source == "transaction":
            keys = [("email", r["customer_email"].strip(" ").lower())]
            keys += [("phone", phone_key(r["customer_phone"], r["customer_country"]))] if r["customer_phone"] else []
        elif e.source == "web":
            keys = [("cookie", r["cookie_id"].strip(" ").lower())]
        elif e.source == "social":
            keys = [("handle", r["handle"].strip(" ").lower())]
        else:
            keys = []
        keys += [("customer", r["customer_id"])] if r.get("customer_id") else []  # the id's own pseudonym
        for kind, value in keys:
            claims[(kind, pseudonym(value))].update([r["customer_id"]] if r["customer_id"] else [])
    return claims


def _ingest(spark, profile, directives):
    run_ingest(spark, profile, directives.only("operational"), directives.schemas, until_caught_up=True)


def _expected(events, profile, directives):
    """What CROM must do with these events, from what the generator says it injected and the
    order the broker holds them in (which of them are late)."""
    operational = directives.only("operational").directive
    valid = {e.value for e in events if e.kind in (*SILVER_KINDS, "late", "duplicate")}
    on_topics = Counter(e.topic for e in events)
    records = [r for topic, n in on_topics.items() for r in read_topic(profile.kafka.bootstrap_servers, topic, n)]
    late_values = late_by_stream_time(records, valid, timedelta(hours=operational.watermark.delay_hours))
    silver = defaultdict(set)
    quarantine = defaultdict(int)
    late = defaultdict(set)
    duplicates = 0
    for e in events:
        if e.kind == "duplicate":
            duplicates += 1
        elif e.kind in (*SILVER_KINDS, "late"):
            (late if e.value in late_values else silver)[e.source].add(e.event_id)
        else:
            quarantine[REASON_OF_KIND[e.kind]] += 1
    return silver, quarantine, duplicates, late


def test_broker_to_delta_with_exact_counts(spark, own_topics):
    profile, directives = own_topics
    topics = {name: src.topic for name, src in directives.only("operational").directive.sources.items()}
    stream = EventStream(SEED, topics, bad_fraction=0.1)
    produce(profile.kafka, stream, 0, FIRST, progress=lambda _: None)
    _ingest(spark, profile, directives)

    events = list(stream.events(0, FIRST))
    silver, quarantine, duplicates, late = _expected(events, profile, directives)
    assert any(late.values())  # the generator's late records are behind their partitions
    tables = CromTables.of(profile, list(topics))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731

    assert read(tables.bronze).count() == FIRST
    for source, ids in silver.items():
        got = read(tables.silver[source])
        assert got.count() == len(ids), source
        assert {r.event_id for r in got.select("event_id").collect()} == ids
    by_reason = {r["reason_code"]: r["count"] for r in read(tables.quarantine).groupBy("reason_code").count().collect()}
    assert by_reason == dict(quarantine)
    audit = read(tables.batch_audit).agg(F.sum("records"), F.sum("duplicates"), F.sum("quarantined"), F.sum("late"), F.sum("untrusted")).first()
    untrusted = sum(1 for e in events if e.kind == "untrusted_producer")
    assert tuple(audit) == (FIRST, duplicates, sum(quarantine.values()), sum(map(len, late.values())), untrusted)
    late_rows = read(tables.late).collect()
    assert {(r["source"], r["event_id"]) for r in late_rows} == {(s, i) for s, ids in late.items() for i in ids}
    assert all(r["event_time"] < r["watermark"] for r in late_rows)
    by_trust = {r["trust_level"]: r["count"] for r in read(tables.silver["web"]).groupBy("trust_level").count().collect()}
    assert by_trust.get("untrusted", 0) == sum(1 for e in events if e.kind == "untrusted_producer" and e.source == "web")
    # Progress for operators: a JSON line per batch, and Prometheus metrics of the last one.
    progress = [json.loads(line) for line in (profile.checkpoints / "progress" / "crom_ingest.jsonl").read_text().splitlines()]
    batches = read(tables.batch_audit).select("batch_id").distinct().count()
    assert len(progress) == batches and sum(p["rows"] for p in progress) == FIRST
    assert sum(p["quarantine_rate"] * p["rows"] for p in progress) == pytest.approx(sum(quarantine.values()))
    assert progress[-1]["lag_records"] == 0 and set(progress[-1]["watermarks"]) <= set(topics)  # caught up
    metrics = (profile.checkpoints / "progress" / "crom_ingest.prom").read_text()
    assert 'crm_kafka_lag_records{query="crom_ingest"} 0.0' in metrics
    assert f'crm_batch_id{{query="crom_ingest"}} {float(progress[-1]["batch"])}' in metrics
    assert by_trust["high"] == len(silver["web"]) - by_trust.get("untrusted", 0)
    # Rule violations carry the rules they broke.
    failed = read(tables.quarantine).where(F.col("reason_code") == "expectation_failed").select("failed_rules").collect()
    assert failed and all(r["failed_rules"] == ["transaction_currency_known"] for r in failed)

    # Personal data: identifiers are pseudonymised, payloads masked.
    tx = read(tables.silver["transaction"])
    assert "customer_email" not in tx.columns and "customer_email_hmac" in tx.columns
    emails = {json.loads(e.value)["customer_email"] for e in events if e.source == "transaction" and e.kind == "valid"}
    for path in (tables.bronze, tables.quarantine):
        payloads = " ".join(r[0] or "" for r in read(path).select("payload").collect())
        assert not any(email in payloads for email in emails)

    # Great Expectations ran on every source of the batch and recorded counts, not values.
    results = read(tables.validation_results)
    sources = directives.only("operational").directive.sources
    rules = {(name, rule.name) for name, src in sources.items() for rule in src.expectations}
    assert {(r["source"], r["rule"]) for r in results.select("source", "rule").distinct().collect()} == rules
    assert "unexpected_list" not in results.columns
    currency = results.where(F.col("rule") == "transaction_currency_known").agg(F.sum("unexpected_count"), F.sum("evaluated_count")).first()
    transactions = sum(1 for e in events if e.source == "transaction" and e.kind in (*SILVER_KINDS, "rule_violation", "late", "duplicate"))
    assert tuple(currency) == (quarantine["expectation_failed"], transactions)

    # Log lines became templates: one per line pattern of the generator (each starts with its
    # own word), with the severity of the line's level and the IP masked by kind.
    logs = read(tables.silver["log"]).collect()
    patterns = defaultdict(set)
    for row in logs:
        level, first_word = row["line"].split()[2:4]
        patterns[row["template_id"]].add(first_word)
        assert row["severity"] == level.lower()
    assert len(patterns) == len(LOG_LINES) and all(len(words) == 1 for words in patterns.values())
    assert all(r["template"].endswith("logged in from <IP>") for r in logs if "logged in from" in r["line"])

    # Social texts became facts: each row gets its own text's sentiment (Arrow batches keep
    # rows in order), complaints are flagged, products and brands are named from the
    # directive's catalogue, and mentions are pseudonymised.
    social = read(tables.silver["social"]).collect()
    scored = dict(zip((r["text"] for r in social), score_texts([r["text"] for r in social])))
    assert social and all(r["language"] == "en" for r in social)
    for r in social:
        expected = scored[r["text"]]
        assert (r["sentiment_label"], r["sentiment_score"], r["complaint_reason"]) == (expected.label, expected.score, expected.reason)
    complaints = {t.format(p=p[1]) for t in COMPLAINTS for p in PRODUCTS}
    assert all(r["complaint"] == (r["text"] in complaints) for r in social)
    assert all(r["products"] == [name for _, name, _ in PRODUCTS if name in r["text"]] for r in social)
    mentioned = [r for r in social if "@brand" in r["text"]]
    assert mentioned and all(r["brands"] == ["Brand"] and r["mentions_hmac"][0] != "@brand" for r in mentioned)

    # Orders became columns: base-currency amounts from conf/'s rates, line items, promotions.
    orders = {json.loads(e.value)["event_id"]: json.loads(e.value) for e in events if e.source == "transaction" and e.kind in SILVER_KINDS}
    rows = read(tables.silver["transaction"]).collect()
    assert rows and {r["currency"] for r in rows} == {"EUR", "USD", "GBP"}
    for r in rows:
        o = orders[r["event_id"]]
        subtotal = sum(i["quantity"] * i["unit_price"] for i in o["items"])
        assert r["amount_base"] == pytest.approx(_in_eur(o["amount"], o["currency"], o["event_time"]), abs=0.006)
        assert (r["base_currency"], r["item_count"], r["units"]) == ("EUR", len(o["items"]), sum(i["quantity"] for i in o["items"]))
        assert (r["skus"], r["products"]) == ([i["sku"] for i in o["items"]], [i["product"] for i in o["items"]])
        assert r["promoted"] == (o["promotion_code"] is not None)
        assert r["discount"] == pytest.approx(subtotal - o["amount"], abs=0.006)
        assert r["payment_card_last4"] == o["payment_card"][-4:] and len(r["payment_card_token"]) == 64
    assert "payment_card" not in read(tables.silver["transaction"]).columns

    # Tickets became lifecycle facts: hours since the ticket was opened, past its SLA or not,
    # and the subject's complaint reason; a phone number or email in a subject is masked.
    raised = {json.loads(e.value)["event_id"]: json.loads(e.value) for e in events if e.source == "ticket" and e.kind in SILVER_KINDS}
    tickets = read(tables.silver["ticket"]).collect()
    reasons = {t["subject"]: s.reason for t, s in zip(raised.values(), score_texts([t["subject"] for t in raised.values()]))}
    assert tickets and {r["status"] for r in tickets} == {"open", "pending", "closed"}
    for r in tickets:
        t = raised[r["event_id"]]
        hours = _hours_open(t)
        assert r["hours_open"] == pytest.approx(hours) and r["overdue"] == (hours > t["sla_hours"])
        assert r["complaint"] and r["complaint_reason"] == reasons[t["subject"]]
    people = {c.customer_id: c for c in stream.customers}
    told = {secret for t in raised.values() for secret in (people[t["customer_id"]].phone, people[t["customer_id"]].email) if secret in t["subject"]}
    stored = " ".join(r["subject"] for r in tickets)
    assert told and "on <phone>." in stored and "is <email>." in stored
    for text in [stored] + [" ".join(r[0] or "" for r in read(path).select("payload").collect()) for path in (tables.bronze, tables.quarantine)]:
        assert not any(secret in text for secret in told)

    # Nothing new: a rerun adds nothing anywhere.
    _ingest(spark, profile, directives)
    assert read(tables.bronze).count() == FIRST

    # New events: only they are read, and only their rows are added.
    produce(profile.kafka, stream, FIRST, SECOND, progress=lambda _: None)
    checkpoint = Path(profile.checkpoint_path("crom_ingest"))
    behind = lambda: lag(end_offsets(profile.kafka, list(topics.values())), committed_offsets(checkpoint))  # noqa: E731
    assert sum(behind().values()) == SECOND  # what `crm status` reports before the next run
    _ingest(spark, profile, directives)
    assert behind() == {topic: 0 for topic in topics.values()}
    more = list(stream.events(FIRST, SECOND))
    silver2, quarantine2, _, _ = _expected(events + more, profile, directives)
    assert read(tables.bronze).count() == FIRST + SECOND
    for source, ids in silver2.items():
        assert read(tables.silver[source]).count() == len(ids), source
    assert read(tables.quarantine).count() == sum(quarantine2.values())

    # CRFM: per-customer parameters match a computation straight from the generated events.
    functional = directives.only("functional")
    before = spark_jobs_started(spark)
    run = run_functional(spark, profile, directives, functional)
    assert not run.skipped and spark_jobs_started(spark) > before
    before = spark_jobs_started(spark)
    unchanged = run_functional(spark, profile, directives, functional)  # no new silver data: no Spark job
    assert unchanged.skipped and spark_jobs_started(spark) == before
    assert (unchanged.customers, unchanged.source_version, unchanged.breakdowns) == (run.customers, run.source_version, run.breakdowns)
    # A new version of the directive that only rescores is recomputed on the same silver data.
    shipped = functional.directive.segmentation
    rescore = [s.model_copy(update={"expression": "r_score * 100"}) if s.name == "customer_score" else s for s in shipped.scores]
    rescored = functional.directive.model_copy(update={"version": functional.directive.version + 1, "segmentation": shipped.model_copy(update={"scores": rescore})})
    again = run_functional(spark, profile, directives, Loaded(rescored, functional.path))
    assert not again.skipped and not again.rebuilt_partials
    scored = read(functional_table(profile, functional.directive.id, "segments")).where(F.col("r_score").isNotNull()).collect()
    assert scored and all(r["customer_score"] == 100 * r["r_score"] for r in scored)
    assert not run_functional(spark, profile, directives, functional).skipped  # and back to the shipped version
    params = {r["customer_id"]: r for r in read(functional_table(profile, functional.directive.id)).collect()}
    segments = {r["customer_id"]: r for r in read(functional_table(profile, functional.directive.id, "segments")).collect()}
    assert set(segments) == set(params)
    assert all((r["rfm_segment"] == "no_purchase") == (params[c]["recency_days"] is None) for c, r in segments.items())
    found = {r["cluster"] for r in segments.values()}
    assert found <= set(range(4)) and len(found) >= 2
    # Untrusted producers and late events are kept in CROM but not counted by this directive.
    orders = [json.loads(e.value) for e in events + more if e.kind == "valid" and e.source == "transaction"]
    all_valid = [json.loads(e.value) for e in events + more if e.kind == "valid"]
    # Windows are whole (UTC) days up to the newest event's day.
    as_of = max(_day(r) for r in all_valid)
    in_window = [o for o in orders if _day(o) > as_of - timedelta(days=90)]
    freq = defaultdict(int)
    spend = defaultdict(float)
    for o in in_window:
        freq[o["customer_id"]] += 1
        spend[o["customer_id"]] += _in_eur(o["amount"], o["currency"], o["event_time"])
    for customer, n in freq.items():
        assert params[customer]["frequency_90d"] == n
        assert params[customer]["monetary_sum_90d"] == pytest.approx(spend[customer])
    # The 360-degree profile: descriptive fields of the newest order, campaign response, channels.
    newest = {o["customer_id"]: o for o in sorted(orders, key=lambda o: datetime.fromisoformat(o["event_time"]))}
    assert all((params[c]["country"], params[c]["age_band"]) == (o["customer_country"], o["customer_age_band"]) for c, o in newest.items())
    promoted = Counter(o["customer_id"] for o in in_window if o["promotion_code"] is not None)
    channels = defaultdict(set)
    for o in in_window:
        channels[o["customer_id"]].add(o["channel"])
    assert promoted and all(params[c]["promoted_orders_90d"] == promoted[c] for c in freq)
    assert all(params[c]["promoted_order_share_90d"] == pytest.approx(promoted[c] / n) for c, n in freq.items())
    assert all(r["promoted_order_share_90d"] is None for c, r in params.items() if c not in freq)
    assert all(params[c]["order_channels_90d"] == len(channels[c]) for c in freq)
    key = hmac_key(profile.cache)
    pseudonym = {c: hmac.new(key, o["customer_email"].strip(" ").lower().encode(), hashlib.sha256).hexdigest() for c, o in newest.items()}
    assert all(params[c]["email_key"] == p for c, p in pseudonym.items())  # the keyed pseudonym, never the address
    scored = [r for r in segments.values() if r["r_score"] is not None]
    assert scored and all(r["customer_score"] == r["r_score"] + r["f_score"] + r["m_score"] for r in scored)
    assert all((r["lead_score"] is None) == (params[c]["recency_days"] is not None) for c, r in segments.items())
    # Complaints are counted from CROM's datafied flag: the generator's complaint texts.
    posts = [json.loads(e.value) for e in events + more if e.kind == "valid" and e.source == "social"]
    recent = lambda p: _day(p) > as_of - timedelta(days=30)  # noqa: E731
    complained = Counter(p["customer_id"] for p in posts if p["customer_id"] and p["text"] in complaints and recent(p))
    assert complained and all(params[c]["complaints_30d"] == n for c, n in complained.items())
    assert sum(r["complaints_30d"] or 0 for r in params.values()) == sum(complained.values())
    # Inquiries: the customer's web events on the support pages.
    visits = [json.loads(e.value) for e in events + more if e.kind == "valid" and e.source == "web"]
    inquired = Counter(v["customer_id"] for v in visits if v["customer_id"] and v["page"].startswith("/support") and recent(v))
    assert inquired and all(params[c]["inquiries_30d"] == n for c, n in inquired.items())
    assert sum(r["inquiries_30d"] or 0 for r in params.values()) == sum(inquired.values())
    # Service tickets: open as of as_of when the ticket's newest event is not a closing; in 90
    # days, the tickets with an event after their SLA, and the median hours to close them.
    ticket_events = sorted((json.loads(e.value) for e in events + more if e.kind == "valid" and e.source == "ticket"), key=lambda t: t["event_time"])
    ticket_now = {t["ticket_id"]: t for t in ticket_events}
    last_90 = [t for t in ticket_events if _day(t) > as_of - timedelta(days=90)]
    still_open = Counter(t["customer_id"] for t in ticket_now.values() if t["status"] != "closed")
    breached = defaultdict(set)
    raised_90 = defaultdict(set)
    to_resolve = defaultdict(list)
    for t in last_90:
        raised_90[t["customer_id"]].add(t["ticket_id"])
        if _hours_open(t) > t["sla_hours"]:
            breached[t["customer_id"]].add(t["ticket_id"])
        if t["status"] == "closed":
            to_resolve[t["customer_id"]].append(_hours_open(t))
    assert still_open and breached and to_resolve and len(breached) < len(raised_90)
    assert {c: r["open_tickets"] for c, r in params.items() if r["open_tickets"]} == dict(still_open)
    assert {c: r["tickets_90d"] for c, r in params.items() if r["tickets_90d"]} == {c: len(ids) for c, ids in raised_90.items()}
    assert {c: r["sla_breaches_90d"] for c, r in params.items() if r["sla_breaches_90d"]} == {c: len(ids) for c, ids in breached.items()}
    medians = {c: r["median_hours_to_resolve_90d"] for c, r in params.items() if r["median_hours_to_resolve_90d"] is not None}
    assert medians == pytest.approx({c: statistics.median(hours) for c, hours in to_resolve.items()})
    # Breakdowns: per complaint reason (every complaint, identified or not) and per channel.
    by_reason = read(run.breakdowns["by_complaint_reason"]).collect()
    assert sum(r["complaints_30d"] for r in by_reason) == sum(1 for p in posts if p["text"] in complaints and recent(p))
    reason_of = {k: s.reason for k, s in zip(ticket_now, score_texts([t["subject"] for t in ticket_now.values()]))}
    open_by_reason = Counter(reason_of[k] for k, t in ticket_now.items() if t["status"] != "closed")
    assert {r["complaint_reason"]: r["open_tickets"] for r in by_reason if r["open_tickets"]} == dict(open_by_reason)
    month = [t for t in ticket_events if recent(t)]
    for column, kept in (("tickets_30d", lambda t: True), ("sla_breaches_30d", lambda t: _hours_open(t) > t["sla_hours"])):
        counted = Counter(reason for reason, _ in {(reason_of[t["ticket_id"]], t["ticket_id"]) for t in month if kept(t)})
        assert {r["complaint_reason"]: r[column] for r in by_reason if r[column]} == dict(counted), column
    assert all(r["sla_breach_rate_30d"] == pytest.approx(r["sla_breaches_30d"] / r["tickets_30d"]) for r in by_reason if r["tickets_30d"])
    resolved = defaultdict(list)
    for t in month:
        if t["status"] == "closed":
            resolved[reason_of[t["ticket_id"]]].append(_hours_open(t))
    got = {r["complaint_reason"]: r["median_hours_to_resolve_30d"] for r in by_reason if r["median_hours_to_resolve_30d"] is not None}
    assert resolved and got == pytest.approx({reason: statistics.median(hours) for reason, hours in resolved.items()})
    assert all(r["complaints_7d"] <= r["complaints_30d"] and r["complainants_30d"] <= r["complaints_30d"] for r in by_reason)
    by_channel = {r["channel"]: r for r in read(run.breakdowns["by_channel"]).collect()}
    assert {c: r["orders_90d"] for c, r in by_channel.items() if r["orders_90d"]} == Counter(o["channel"] for o in in_window)
    # Campaign response: the share of each campaign's web events in 30 days that are clicks.
    by_campaign = {r["campaign_name"]: r for r in read(run.breakdowns["by_campaign"]).collect()}
    reached = Counter(v["utm_campaign"] for v in visits if v["utm_campaign"] and recent(v))
    clicked = Counter(v["utm_campaign"] for v in visits if v["utm_campaign"] and recent(v) and v["event_type"] == "click")
    assert reached and {c: by_campaign[c]["click_rate_30d"] for c in reached} == pytest.approx({c: clicked[c] / n for c, n in reached.items()})
    # Conversions: an order in 30 days goes to the campaign its customer last arrived from, on the
    # order's day or the 7 days before (the directive's last touch, by day).
    touches = defaultdict(list)
    for v in visits:
        if v["utm_campaign"] and v["customer_id"]:
            touches[v["customer_id"]].append(v)

    def last_touch(order):
        near = [v for v in touches[order["customer_id"]] if 0 <= (_day(order) - _day(v)).days <= 7]
        return max(near, key=lambda v: (datetime.fromisoformat(v["event_time"]), v["utm_campaign"]))["utm_campaign"] if near else None

    converted, revenue = Counter(), defaultdict(float)
    for o in orders:
        if recent(o) and (campaign := last_touch(o)):
            converted[campaign] += 1
            revenue[campaign] += _in_eur(o["amount"], o["currency"], o["event_time"])
    assert converted and {c: r["conversions_30d"] for c, r in by_campaign.items() if r["conversions_30d"]} == converted
    assert {c: by_campaign[c]["conversion_revenue_30d"] for c in revenue} == pytest.approx(revenue)
    assert all(r["conversion_rate_30d"] == pytest.approx(r["conversions_30d"] / r["sessions_30d"]) for r in by_campaign.values() if r["sessions_30d"])
    # Leads: visitors (cookies) that no event in 30 days identified, scored on their engagement.
    cookie = lambda v: hmac.new(key, v["cookie_id"].strip(" ").lower().encode(), hashlib.sha256).hexdigest()  # noqa: E731
    engaged = defaultdict(list)
    for v in visits:
        if recent(v):
            engaged[cookie(v)].append(v)

    def lead_score(seen: list[dict]) -> int | None:
        if any(v["customer_id"] for v in seen) or 2 * sum("bot" in v["user_agent"].lower() for v in seen) >= len(seen):
            return None
        sessions = len({v["session_id"] for v in seen})
        products = sum(v["page"].startswith("/products") for v in seen)
        checkouts = sum(v["page"] in ("/cart", "/checkout") for v in seen)
        campaigns = len({v["session_id"] for v in seen if v["utm_campaign"]})
        return min(100, 10 * sessions + 5 * products + 15 * checkouts + 10 * campaigns)

    by_visitor = {r["cookie_id_hmac"]: r for r in read(run.breakdowns["by_visitor"]).collect()}
    leads = {c: lead_score(seen) for c, seen in engaged.items()}
    assert sum(score is not None for score in leads.values()) > 10
    assert {c: by_visitor[c]["lead_score"] for c in leads} == leads
    # Advocacy parameters: the sentiment CROM's text model gave each post, counted per customer.
    labels = {p["text"]: s.label for p, s in zip(posts, score_texts([p["text"] for p in posts]))}
    last_90 = [p for p in posts if p["customer_id"] and _day(p) > as_of - timedelta(days=90)]
    by_label = {label: Counter(p["customer_id"] for p in last_90 if labels[p["text"]] == label) for label in ("positive", "negative")}
    for label, counted in by_label.items():
        assert counted and all(params[c][f"{label}_posts_90d"] == n for c, n in counted.items()), label
        assert sum(r[f"{label}_posts_90d"] or 0 for r in params.values()) == sum(counted.values()), label

    # CROM identity map: each key resolves to the customers the generated events give it, and
    # a key claimed by several customers is a counted conflict, not a merge.
    identities = run_identities(spark, profile, directives.only("operational"), directives.schemas)
    claims = _claims([e for e in events + more if e.kind in SILVER_KINDS and e.event_id in silver2[e.source]], hmac_key(profile.cache))
    got = {(r["key_type"], r["key_hash"]): r for r in read(tables.identity_map).collect()}
    assert {k: r["claimants"] for k, r in got.items()} == {k: sorted(c) for k, c in claims.items()}
    assert all(r["resolved_customer_id"] == (r["claimants"][0] if len(r["claimants"]) == 1 else None) for r in got.values())
    conflicts = Counter(kind for (kind, _), c in claims.items() if len(c) > 1)
    assert identities.conflicts == dict(conflicts) and identities.keys == len(claims)
    assert run_identities(spark, profile, directives.only("operational"), directives.schemas).skipped
    [web_sessions] = run_web_sessions(spark, profile, directives.only("operational"), directives.schemas)
    assert web_sessions.visitors == sum(kind == "cookie" for kind, _ in claims) and web_sessions.sessions >= web_sessions.visitors

    # CRSM: every KPI of the strategic directive, with its target and verdict.
    strategic = directives.only("strategic")
    result = run_strategic(spark, profile, directives, strategic)
    kpis = {k["kpi"]: k for k in result.kpis}
    assert set(kpis) == {k.name for k in strategic.directive.kpis}
    for kpi in strategic.directive.kpis:
        row = kpis[kpi.name]
        assert row["target_value"] == kpi.target.value
        assert row["on_target"] == kpi.target.met_by(row["value"])
    buyers = sum(1 for c in freq if freq[c] >= 1)
    assert kpis["repeat_purchase_rate"]["value"] == pytest.approx(sum(1 for c in freq if freq[c] >= 2) / buyers)
    positive, negative = (sum(by_label[label].values()) for label in ("positive", "negative"))
    assert kpis["net_sentiment"]["value"] == pytest.approx((positive - negative) / (positive + negative))
    assert kpis["service_satisfaction"]["value"] == pytest.approx(sum(c not in breached for c in raised_90) / len(raised_90))
    # V1-V5: a verdict per KPI and V, and a report with a curve for each.
    assert {(c["kpi"], c["v"]) for c in result.validity} == {(k, v) for k in kpis for v in ("V1", "V2", "V3", "V4", "V5")}
    assert {c["verdict"] for c in result.validity} <= {"resolved", "sensitive", "unresolved"}
    page = build_report(spark, profile, directives, strategic).read_text()
    assert all(k in page for k in kpis) and page.count("<svg") == 5 * len(kpis)
    # The generator's rule violations (currency XXX) put the EUR monetary KPI at risk.
    assert quarantine["expectation_failed"] > 0
    assert "<td class=l>transaction_currency_known</td>" in page and "customer_lifetime_value</td></tr>" in page
    # The closed loop: every customer who complained in 30 days gets a follow-up.
    recs = read(strategic_table(profile, strategic.directive.id, "recommendations"))
    follow_ups = {r["customer_id"] for r in recs.where(F.col("recommendation") == "complaint_follow_up").collect()}
    assert follow_ups == set(complained)
    # ... and every valuable customer (expected CLV of 1000 EUR or more) with a ticket past its SLA gets a call.
    clv = {r["customer_id"]: r["clv"] for r in read(strategic_table(profile, strategic.directive.id, "customers")).collect()}
    valuable = {c for c in breached if (clv.get(c) or 0) >= 1000}
    calls = {r["customer_id"] for r in recs.where(F.col("recommendation") == "breached_ticket_follow_up").collect()}
    assert calls == valuable
    # On the topic, each is keyed by the customer's pseudonym and names no customer id; the
    # identity map (CROM, the operational side) maps the pseudonym back.
    ours = {r["recommendation_id"]: r["customer_id"] for r in recs.collect()}
    topic = strategic.directive.recommendations.topic
    on_topic = sum(end_offsets(profile.kafka, [topic]).values())  # other tests' runs publish there too
    published = [m for m in read_topic(profile.kafka.bootstrap_servers, topic, on_topic) if json.loads(m.value)["recommendation_id"] in ours]
    assert len(published) == len(ours) and not any(b"customer_id" in m.value or any(c.encode() in m.value for c in follow_ups) for m in published)
    back = {r["key_hash"]: r["resolved_customer_id"] for r in read(tables.identity_map).where(F.col("key_type") == "customer").collect()}
    assert {back[m.key.decode()] for m in published} == set(ours.values())
    # Same functional version again: no second snapshot.
    run_strategic(spark, profile, directives, strategic)
    assert read(result.table).count() == len(kpis)

    # Analysts: every table of every layer opens without Spark (delta-rs), with Spark's row count.
    on_disk = sorted(log.parent for log in profile.lakehouse.glob("*/*/_delta_log"))
    assert {t.parent.name for t in on_disk} == {"crom", "crfm", "crsm"}
    assert {t.name: DeltaTable(str(t)).to_pyarrow_dataset().count_rows() for t in on_disk} == {t.name: read(str(t)).count() for t in on_disk}
    # The catalogue (docs/tables.md) lists every table and column, with the personal-data treatment.
    text = catalog(profile.lakehouse, directives)
    for table in on_disk:
        section = text.split(f"### `{table.parent.name}/{table.name}`\n", 1)[1].split("###", 1)[0]
        assert [line.split("`")[1] for line in section.splitlines() if line.startswith("| `")] == read(str(table)).columns, table
    assert "| `customer_email_hmac` | string | identification | hmac |" in text and "`customer_email`" not in text
    assert "| `email_key` | string | identification | hmac |" in text


def test_wiped_checkpoint_is_refused(spark, own_topics, tmp_path):
    profile, directives = own_topics
    topics = {name: src.topic for name, src in directives.only("operational").directive.sources.items()}
    produce(profile.kafka, EventStream(99, topics), 0, 50, progress=lambda _: None)
    _ingest(spark, profile, directives)
    with pytest.raises(CrmError, match=r"checkpoint .* is empty but .*bronze already holds batches up to \d+"):
        start_ingest(
            spark, profile, directives.only("operational"), directives.schemas, until_caught_up=True,
            checkpoint=str(tmp_path / "fresh-checkpoint"),
        )
