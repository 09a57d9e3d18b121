"""The event generator: deterministic, schema-valid, and honest about what it injected."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from pipelines.generator import BAD_KINDS, SMALL_SHOP, EventStream, Traffic, population

REPO = Path(__file__).resolve().parents[2]
TOPICS = {s: f"crm.{s}" for s in ("web", "social", "log", "transaction")}
SCHEMAS = {s: json.loads((REPO / "schemas" / f"{s}.v1.json").read_text()) for s in TOPICS}


def test_same_seed_same_bytes_and_continuation():
    a = [e.value for e in EventStream(7, TOPICS, 0.1).events(0, 500)]
    b = [e.value for e in EventStream(7, TOPICS, 0.1).events(0, 500)]
    tail = [e.value for e in EventStream(7, TOPICS, 0.1).events(300, 200)]
    other = [e.value for e in EventStream(8, TOPICS, 0.1).events(0, 500)]
    assert a == b
    assert a[300:] == tail
    assert a != other


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_valid_events_match_their_json_schema(seed):
    checker = jsonschema.FormatChecker()
    validators = {source: jsonschema.Draft202012Validator(schema, format_checker=checker) for source, schema in SCHEMAS.items()}
    seen = Counter()
    for event in EventStream(seed, TOPICS, 0.0).events(0, 1500):
        record = json.loads(event.value)
        validators[event.source].validate(record)
        assert event.topic == TOPICS[event.source] and record["event_id"] == event.event_id
        seen[event.source] += 1
    assert set(seen) == set(TOPICS)


def test_bad_records_are_really_bad():
    stream = EventStream(5, TOPICS, 0.5)
    events = list(stream.events(0, 3000))
    kinds = Counter(e.kind for e in events)
    assert set(BAD_KINDS) <= set(kinds)
    validator = {s: jsonschema.Draft202012Validator(SCHEMAS[s]) for s in TOPICS}
    first_seen: dict[str, int] = {}
    for e in events:
        if e.kind == "malformed_json":
            with pytest.raises(json.JSONDecodeError):
                json.loads(e.value)
            continue
        record = json.loads(e.value)
        if e.kind == "rule_violation":  # well-typed; a directive rule, not the schema, rejects it
            assert record["currency"] == "XXX"
            continue
        ok = validator[e.source].is_valid(record)
        assert ok == (e.kind in ("valid", "late", "duplicate", "untrusted_producer")), (e.kind, record)
        if e.kind == "untrusted_producer":
            assert record["producer"].startswith("unregistered-")
        if e.kind == "duplicate":
            assert e.event_id in first_seen, "a duplicate repeats an earlier event"
        elif ok:
            first_seen.setdefault(e.event_id, e.index)


def test_population_has_identification_and_descriptive_attributes():
    people = population(3, size=50)
    assert len({p.customer_id for p in people}) == 50
    assert all("@" in p.email and p.phone.startswith("+") and p.age_band and p.education for p in people)


def test_customers_stop_ordering_when_they_leave_and_spend_around_their_own_mean():
    stream = EventStream(5, TOPICS)
    customer = {c.customer_id: c for c in stream.customers}
    orders = [json.loads(e.value) for e in stream.events(0, 40_000) if e.kind == "valid" and e.source == "transaction"]
    last = max(datetime.fromisoformat(o["event_time"]) for o in orders)
    left = {c.customer_id for c in stream.customers if c.leaves_at < last}
    assert len(left) > 50  # a year's mean lifetime: several percent leave within the 40 days
    after = [o for o in orders if datetime.fromisoformat(o["event_time"]) >= customer[o["customer_id"]].leaves_at]
    assert len(orders) > 5_000 and len(after) <= len(orders) // 1000
    # Every order has lines, and what customers spend follows their own mean order value.
    assert all(o["items"] and all(i["quantity"] >= 1 for i in o["items"]) for o in orders)
    subtotal = {o["order_id"]: sum(i["quantity"] * i["unit_price"] for i in o["items"]) for o in orders}
    by_mean = sorted(stream.customers, key=lambda c: c.mean_order)
    low, high = ({c.customer_id for c in part} for part in (by_mean[:500], by_mean[-500:]))
    mean = lambda ids: sum(subtotal[o["order_id"]] for o in orders if o["customer_id"] in ids) / sum(o["customer_id"] in ids for o in orders)  # noqa: E731
    assert mean(high) > 2 * mean(low)


def test_traffic_sets_the_customers_and_how_fast_event_time_advances():
    feed = Traffic(customers=500, events_per_day=10_000)
    stream = EventStream(5, TOPICS, traffic=feed)
    records = [json.loads(e.value) for e in stream.events(0, 20_000)]
    times = sorted(datetime.fromisoformat(r["event_time"]) for r in records)
    assert abs((times[-1] - times[0]).total_seconds() / 86_400 - 2.0) < 0.01  # 20,000 events at 10,000 a day
    ids = {r["customer_id"] for r in records if r.get("customer_id")}
    assert len(stream.customers) == 500 and 400 < len(ids) <= 500 and max(ids) == "C000499"
    # The default is the small shop: its 2,000 customers' 960 events a day.
    small = EventStream(5, TOPICS)
    times = [datetime.fromisoformat(json.loads(e.value)["event_time"]) for e in small.events(0, 9_600)]
    assert len(small.customers) == SMALL_SHOP.customers and abs((max(times) - min(times)).total_seconds() / 86_400 - 10.0) < 0.01


@pytest.mark.parametrize("customers, per_day", [(0, 100.0), (1_000_000, 100.0), (10, 0.0), (10, -5.0)])
def test_a_traffic_out_of_range_is_refused(customers, per_day):
    with pytest.raises(ValueError):
        Traffic(customers, per_day)
