"""Parsing: each kind of bad record gets its own reason; valid records come out typed."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from pyspark.sql import functions as F

from pipelines.crom import parse as P
from pipelines.generator import EventStream
from pipelines.schemas import load_schema

SOURCES = ["web", "social", "log", "transaction"]
GOOD = {
    "event_id": "7f1c2d3e-0000-4000-8000-000000000001",
    "source": "transaction",
    "schema_version": 1,
    "event_time": "2026-06-01T10:00:00.000+00:00",
    "producer": "shop",
    "order_id": "O1",
    "customer_id": "C000001",
    "customer_email": "ana.smith1@example.com",
    "customer_phone": None,
    "customer_country": "DE",
    "customer_age_band": "25-34",
    "channel": "web",
    "currency": "EUR",
    "amount": 12.5,
    "promotion_code": None,
    "payment_card": "4111 1111 1111 1111",
    "items": [{"sku": "S1", "product": "Cable", "quantity": 1, "unit_price": 12.5}],
}


def _with(**changes):
    return json.dumps({**GOOD, **changes})


def _without(key):
    return json.dumps({k: v for k, v in GOOD.items() if k != key})


CASES = [
    ("valid", json.dumps(GOOD), None, None),
    ("integer amount is a number", _with(amount=10), None, None),
    ("empty items", _with(items=[]), None, None),
    ("truncated json", json.dumps(GOOD)[:40], P.MALFORMED_JSON, None),
    ("empty value", "", P.EMPTY_VALUE, None),
    ("null value", None, P.EMPTY_VALUE, None),
    ("NUL byte", json.dumps(GOOD).replace('"O1"', '"O\x001"'), P.INVALID_ENCODING, "NUL byte"),
    ("nested 10,000 levels deep", "[" * 10_000 + "]" * 10_000, P.NESTING_TOO_DEEP, "more than 1000 levels"),
    ("object nested 10,000 levels deep", '{"a":' * 10_000 + "1" + "}" * 10_000, P.NESTING_TOO_DEEP, "more than 1000 levels"),
    ("over the size limit", _with(order_id="O" * 300_000), P.OVERSIZED, None),
    ("array, not object", "[1, 2]", P.NOT_AN_OBJECT, None),
    ("unknown source", _with(source="fax"), P.UNKNOWN_SOURCE, None),
    ("other source's record", _with(source="web"), P.SOURCE_TOPIC_MISMATCH, "source=web"),
    ("unknown schema version", _with(schema_version=2), P.UNKNOWN_SCHEMA_VERSION, "schema_version=2"),
    ("schema version as a string", _with(schema_version="1"), P.UNKNOWN_SCHEMA_VERSION, 'schema_version="1"'),
    ("string amount", _with(amount="12.50"), P.WRONG_TYPE, "amount"),
    ("number for a string", _with(customer_id=123), P.WRONG_TYPE, "customer_id"),
    ("null for a non-null field", _with(customer_id=None), P.WRONG_TYPE, "customer_id"),
    ("unparseable timestamp", _with(event_time="yesterday"), P.WRONG_TYPE, "event_time"),
    ("fractional quantity", _with(items=[{"sku": "S", "product": "P", "quantity": 1.5, "unit_price": 1}]), P.WRONG_TYPE, "items"),
    (
        "item missing a key",
        _with(items=[{"sku": "S", "product": "P", "quantity": 1, "unit_price": 1}, {"product": "P", "quantity": 1, "unit_price": 1}]),
        P.WRONG_TYPE,
        "items",
    ),
    ("missing field", _without("order_id"), P.MISSING_FIELD, "order_id"),
    ("extra field", _with(coupon="X"), P.EXTRA_FIELD, "coupon"),
]


@pytest.fixture(scope="module")
def parsed(spark, base_profile):
    schema = load_schema(base_profile.schemas, "transaction.v1")
    rows = [(name, value) for name, value, _, _ in CASES]
    df = spark.createDataFrame(rows, "case string, value string")
    return {r["case"]: r for r in P.parse_events(df, schema, SOURCES).collect()}


@pytest.mark.parametrize("case,value,code,detail", CASES, ids=[c[0] for c in CASES])
def test_reason_codes(parsed, case, value, code, detail):
    row = parsed[case]
    assert row["reason_code"] == code
    if code != P.OVERSIZED:
        assert row["reason_detail"] == detail
    else:
        assert row["reason_detail"].endswith(" bytes") and int(row["reason_detail"].split()[0]) > 262_144
    if code is None:
        assert row["event_id"] == GOOD["event_id"] and row["event_time"] == datetime(2026, 6, 1, 10, 0)
    else:
        assert row["event_id"] is None and row["amount"] is None


def test_valid_row_is_typed(parsed):
    row = parsed["valid"]
    assert row["amount"] == 12.5 and row["schema_version"] == 1
    assert row["items"][0]["quantity"] == 1 and row["items"][0]["unit_price"] == 12.5


def test_every_generated_record_has_exactly_one_outcome(spark, base_profile):
    """Across all sources, generated records land valid or rejected exactly as injected."""
    topics = {s: f"crm.{s}" for s in SOURCES}
    events = list(EventStream(11, topics, 0.3).events(0, 1200))
    df = spark.createDataFrame([(e.topic, e.value.decode("utf-8", "replace"), e.kind) for e in events], "kafka_topic string, value string, kind string")
    by_topic = {topics[s]: load_schema(base_profile.schemas, f"{s}.v1") for s in SOURCES}
    parsed = P.parse_all(df, by_topic)
    typed_count = sum(F.col(s).isNotNull().cast("int") for s in SOURCES)
    rows = parsed.select("kind", "reason_code", typed_count.alias("typed")).collect()
    expected = {"malformed_json": P.MALFORMED_JSON, "unknown_source": P.UNKNOWN_SOURCE}
    for r in rows:
        # Rule violations are well-typed: the directive's expectations catch them later.
        if r["kind"] in ("valid", "late", "duplicate", "untrusted_producer", "rule_violation"):
            assert r["reason_code"] is None and r["typed"] == 1, r
        else:
            assert r["reason_code"] is not None and r["typed"] == 0, r
            if r["kind"] in expected:
                assert r["reason_code"] == expected[r["kind"]]
            elif r["kind"] == "missing_field":
                assert r["reason_code"] == P.MISSING_FIELD
            else:
                assert r["reason_code"] == P.WRONG_TYPE


def test_invalid_utf8_and_missing_key_are_caught_before_parsing(spark, base_profile):
    """Casting bytes to string would replace bad UTF-8 silently; decode keeps the verdict."""
    from pipelines.crom.records import decode

    good = json.dumps(GOOD).encode()
    bad_utf8 = json.dumps(GOOD).replace("O1", "O1-\udcff").encode("utf-8", "surrogateescape")
    rows = [(b"C1", good), (b"C1", bad_utf8), (None, good), (b"", good)]
    kafka = spark.createDataFrame(
        [(k, v, "topic.transaction", 0, n, datetime(2026, 6, 1)) for n, (k, v) in enumerate(rows)],
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp",
    )
    schema = load_schema(base_profile.schemas, "transaction.v1")
    out = P.parse_all(decode(kafka), {"topic.transaction": schema}, SOURCES).orderBy("kafka_offset").collect()
    assert [r["reason_code"] for r in out] == [None, P.INVALID_ENCODING, P.MISSING_KEY, P.MISSING_KEY]
    assert out[1]["reason_detail"] == "invalid UTF-8"


@pytest.mark.parametrize(
    "policy,value,code,drift",
    [
        ({"extra_fields": "accept"}, _with(coupon="X", agent="bot"), None, "extra_fields=agent,coupon"),
        ({"extra_fields": "accept"}, _with(coupon="X", amount="12"), P.WRONG_TYPE, None),
        ({"newer_versions": "accept"}, _with(schema_version=3), None, "schema_version=3"),
        ({"newer_versions": "accept"}, _with(schema_version=3, coupon="X"), P.EXTRA_FIELD, None),
        ({"newer_versions": "accept"}, _with(schema_version=0), P.UNKNOWN_SCHEMA_VERSION, None),
        ({}, _with(coupon="X"), P.EXTRA_FIELD, None),
    ],
)
def test_evolution_policy_accepts_drift_with_a_flag_never_a_silent_null(spark, base_profile, policy, value, code, drift):
    from pipelines.directives import Evolution

    schema = load_schema(base_profile.schemas, "transaction.v1")
    df = spark.createDataFrame([(value,)], "value string")
    row = P.parse_events(df, schema, SOURCES, evolution=Evolution(**policy)).first()
    assert row["reason_code"] == code
    assert row["drift"] == drift
    if code is None:
        assert row["amount"] == 12.5 and row["event_id"] == GOOD["event_id"]


def test_the_parse_plan_is_optimised_in_a_few_passes(spark, base_profile):
    """Each check's reason is a branch of one CASE, not a CASE nested per check: Spark's
    optimizer pushes a test such as IS NULL (a lenient policy asks whether any check failed)
    into nested CASEs one level per pass, and ran 30-40 passes over the parse plan in every
    micro-batch."""
    from pipelines.directives import Evolution

    topics = {s: f"crm.{s}" for s in SOURCES}
    by_topic = {topics[s]: load_schema(base_profile.schemas, f"{s}.v1") for s in SOURCES}
    policy = {s: Evolution(extra_fields="accept", newer_versions="accept") for s in SOURCES}
    df = spark.createDataFrame([("crm.web", "{}")], "kafka_topic string, value string")
    execution = P.Parser(by_topic, evolution=policy)(df)._jdf.queryExecution()
    execution.optimizedPlan()
    passes = execution.tracker().rules().get("org.apache.spark.sql.catalyst.optimizer.ConstantFolding").get().numInvocations()
    assert passes <= 8


def test_an_event_time_too_far_ahead_of_its_kafka_timestamp_is_rejected(spark, base_profile):
    schema = load_schema(base_profile.schemas, "transaction.v1")
    parser = P.Parser({"crm.transaction": schema}, SOURCES, columns=("value", "kafka_topic", "kafka_timestamp"), future_skew_hours={"transaction": 24})
    sent = "2026-06-01 12:00:00"
    rows = [
        ("far future", _with(event_time="9999-12-31T23:59:59Z"), sent),
        ("a day and a minute ahead", _with(event_time="2026-06-02T12:01:00Z"), sent),
        ("within the skew", _with(event_time="2026-06-02T11:59:00Z"), sent),
        ("years in the past, as a replay", _with(event_time="1997-01-01T00:00:00Z"), sent),
        ("ahead and malformed", _with(event_time="9999-12-31T23:59:59Z")[:-5], sent),
    ]
    frame = spark.createDataFrame(rows, "case string, value string, kafka_timestamp string").select(
        "case", "value", F.lit("crm.transaction").alias("kafka_topic"), F.to_timestamp("kafka_timestamp").alias("kafka_timestamp")
    )
    got = {r["case"]: r for r in parser(frame).collect()}
    assert {case: r["reason_code"] for case, r in got.items()} == {
        "far future": P.EVENT_TIME_IN_FUTURE,
        "a day and a minute ahead": P.EVENT_TIME_IN_FUTURE,
        "within the skew": None,
        "years in the past, as a replay": None,
        "ahead and malformed": P.MALFORMED_JSON,  # the first reason wins
    }
    assert got["far future"]["reason_detail"] == "event_time more than 24 h after the Kafka timestamp"
    assert got["far future"]["transaction"] is None and got["within the skew"]["transaction"] is not None
