"""The event generator: deterministic, schema-valid, and honest about what it injected."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from pipelines.generator import (
    BAD_KINDS, PRODUCTS, SLA_HOURS, SMALL_SHOP, SUBJECTS, TICKET_EVERY, EventStream, Traffic, population,
)

REPO = Path(__file__).resolve().parents[2]
TOPICS = {s: f"crm.{s}" for s in ("web", "social", "log", "transaction")}
TICKET_TOPICS = {**TOPICS, "ticket": "crm.ticket"}  # tickets are on when a stream has their topic
SCHEMAS = {s: json.loads((REPO / "schemas" / f"{s}.v1.json").read_text()) for s in TICKET_TOPICS}
BOTH = pytest.mark.parametrize("topics", [TOPICS, TICKET_TOPICS], ids=["four", "tickets"])


@BOTH
def test_same_seed_same_bytes_and_continuation(topics):
    a = [e.value for e in EventStream(7, topics, 0.1).events(0, 500)]
    b = [e.value for e in EventStream(7, topics, 0.1).events(0, 500)]
    tail = [e.value for e in EventStream(7, topics, 0.1).events(300, 200)]
    other = [e.value for e in EventStream(8, topics, 0.1).events(0, 500)]
    assert a == b
    assert a[300:] == tail
    assert a != other


@BOTH
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_valid_events_match_their_json_schema(seed, topics):
    checker = jsonschema.FormatChecker()
    validators = {source: jsonschema.Draft202012Validator(schema, format_checker=checker) for source, schema in SCHEMAS.items()}
    seen = Counter()
    statuses = set()
    for event in EventStream(seed, topics, 0.0).events(0, 1500):
        record = json.loads(event.value)
        validators[event.source].validate(record)
        assert event.topic == topics[event.source] and record["event_id"] == event.event_id
        seen[event.source] += 1
        statuses.add(record.get("status"))
    assert set(seen) == set(topics)
    if "ticket" in topics:  # 1,500 events reach the first closings
        assert {"open", "pending", "closed"} <= statuses


@BOTH
def test_bad_records_are_really_bad(topics):
    stream = EventStream(5, topics, 0.5)
    events = list(stream.events(0, 3000))
    kinds = Counter(e.kind for e in events)
    assert set(BAD_KINDS) <= set(kinds)
    assert {e.source for e in events} == set(topics)
    validator = {s: jsonschema.Draft202012Validator(SCHEMAS[s]) for s in topics}
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


def test_without_a_ticket_topic_the_stream_is_as_before():
    four = EventStream(7, TOPICS, 0.1)
    five = EventStream(7, TICKET_TOPICS, 0.1)
    old, new = list(four.events(0, 6000)), list(five.events(0, 6000))
    assert all(e.source != "ticket" and four.ticket_at(e.index) is None for e in old)
    slots = [i for i in range(6000) if five.ticket_at(i)]
    assert slots and all(i % TICKET_EVERY == TICKET_EVERY - 1 for i in slots)
    # Only ticket slots differ, and duplicates (which repeat an earlier event) of ticket events.
    differ = {i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b}
    assert all(i in differ or new[i].kind == "duplicate" for i in slots)
    assert all(new[i].kind == "duplicate" and new[i].source == "ticket" for i in differ - set(slots))
    assert len(differ) > len(slots) * 0.9
    # The first slots of updates and closings have no ticket to take yet: ordinary events.
    assert any(i % TICKET_EVERY == TICKET_EVERY - 1 and not five.ticket_at(i) and old[i] == new[i] for i in range(6000))


def _tickets(events) -> dict[str, list[dict]]:
    """The valid ticket events by ticket, in event time."""
    by_ticket = defaultdict(list)
    for event in events:
        if event.source == "ticket" and event.kind == "valid":
            record = json.loads(event.value)
            assert event.key == record["customer_id"].encode()
            by_ticket[record["ticket_id"]].append(record)
    return {t: sorted(records, key=lambda r: r["event_time"]) for t, records in by_ticket.items()}


def _hours(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds() / 3600


def _check_lifecycles(tickets: dict[str, list[dict]], low: float, high: float) -> list[float]:
    """Each ticket's events agree on it and follow open -> open|pending -> closed; returns the
    resolution times, each checked to be within [low, high] hours."""
    resolved = []
    for records in tickets.values():
        first = records[0]
        assert len(records) <= 3
        for r in records:
            for name in ("customer_id", "opened_at", "channel", "sla_hours", "subject"):
                assert r[name] == first[name], (name, records)
        statuses = [r["status"] for r in records]
        assert statuses[0] == "open" and first["event_time"] == first["opened_at"], records
        assert statuses[1:2] in ([], ["open"], ["pending"]) and statuses[2:] in ([], ["closed"]), records
        if statuses[-1] == "closed":
            assert len(records) == 3
            resolved.append(_hours(records[-1]["event_time"], first["opened_at"]))
            assert low <= resolved[-1] <= high, records
    return resolved


def test_tickets_open_are_updated_and_close_about_a_day_later():
    stream = EventStream(5, TICKET_TOPICS, 0.0)
    events = list(stream.events(0, 30_000))
    assert all((e.source == "ticket") == bool(stream.ticket_at(e.index)) for e in events)
    tickets = _tickets(events)
    assert len(tickets) == 30_000 // TICKET_EVERY // 3  # one opening per position
    resolved = _check_lifecycles(tickets, 20.4, 29.6)  # the small shop's range
    assert len(resolved) > 400 and len({round(h) for h in resolved}) >= 6
    closed = {t: records for t, records in tickets.items() if records[-1]["status"] == "closed"}
    sla = [records[0]["sla_hours"] for records in closed.values()]
    assert 0 < sum(h > s for h, s in zip(resolved, sla)) < len(resolved)  # some breach, not all
    assert 0 < sum(h > 24 for h, s in zip(resolved, sla) if s == 24) < sla.count(24)
    assert {records[0]["channel"] for records in tickets.values()} == set(SLA_HOURS)
    updates = Counter(records[1]["status"] for records in tickets.values() if len(records) > 1)
    assert 0.6 < updates["pending"] / sum(updates.values()) < 0.8
    # Tickets opened in the last 30 hours of the range may still be open; all older ones are closed.
    end = max(json.loads(e.value)["event_time"] for e in events)
    still_open = [records for records in tickets.values() if records[-1]["status"] != "closed"]
    assert still_open and all(_hours(end, records[0]["opened_at"]) < 30 for records in still_open)
    # Subjects are complaints; about 10% also give the customer's phone number or email.
    customer = {c.customer_id: c for c in stream.customers}
    complaints = {t.format(p=name) for t in SUBJECTS for _, name, _ in PRODUCTS}
    personal = 0
    for records in tickets.values():
        subject, c = records[0]["subject"], customer[records[0]["customer_id"]]
        head = re.match(r"(.*?[.?!])(?: Call me back on (.+)\.| My email is (.+)\.)?$", subject)
        assert head and head[1] in complaints, subject
        if head[2] or head[3]:
            assert head[2] == c.phone or head[3] == c.email, subject
            personal += 1
    assert 0.05 < personal / len(tickets) < 0.15


def test_tickets_resolve_in_hours_whatever_the_traffic():
    # At 50,000 events a day a position (60 events) is 104 s; closings start 4 blocks of 208
    # positions in, at event 50,000. Only ticket slots are generated, as event i depends on i alone.
    stream = EventStream(5, TICKET_TOPICS, 0.0, traffic=Traffic(customers=500, events_per_day=50_000))
    tickets = _tickets(map(stream.event, range(TICKET_EVERY - 1, 75_000, TICKET_EVERY)))
    resolved = _check_lifecycles(tickets, 18.0, 30.0)
    assert len(resolved) > 300 and min(resolved) < 19 and max(resolved) > 29
