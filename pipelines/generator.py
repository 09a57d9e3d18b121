"""Deterministic, realistic events for the five sources, with optional bad records.

Event `i` of seed `s` depends only on (s, i), so a run can continue where the last one
stopped (`start`) and the same seed always gives the same bytes. Each event also says what
CROM should do with it (`kind`), which tests and the demo use to check exact counts.

Service tickets are on when the stream has a "ticket" topic: every TICKET_EVERY-th event then
opens, updates or closes a ticket. A stream without one gives the same bytes as before tickets.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

from pipelines.config import KafkaSettings

SOURCES = ("web", "social", "log", "transaction")
SOURCE_WEIGHTS = (50, 10, 20, 20)
BAD_KINDS = (
    "malformed_json", "wrong_type", "missing_field", "duplicate", "late", "unknown_source", "rule_violation", "untrusted_producer",
)
# What CROM must do with each kind: its quarantine reason, or the table it lands in.
REASON_OF_KIND = {
    "malformed_json": "malformed_json",
    "wrong_type": "wrong_type",
    "missing_field": "missing_field",
    "unknown_source": "unknown_source",
    "rule_violation": "expectation_failed",
}
QUARANTINED_KINDS = tuple(REASON_OF_KIND)
SILVER_KINDS = ("valid", "untrusted_producer")
LATE_BY = timedelta(days=365)  # far behind any watermark
ANCHOR = datetime(2026, 6, 1, tzinfo=timezone.utc)
# Buying behaviour follows the models CRSM fits, so their fits mean something: customers stop
# ordering after an exponential lifetime (BG/NBD's dropout), and an order's value is
# Gamma(SPEND_SHAPE, ν) with ν ~ Gamma(q, γ) per customer (Gamma-Gamma).
MEAN_LIFETIME_DAYS = 365
SPEND_SHAPE = 4.0
SPEND_Q, SPEND_GAMMA = 4.0, 600.0  # mean order values average γ/(q-1) x SPEND_SHAPE = 800
PROSPECTS_PER_CUSTOMER = 0.5  # anonymous visitors: cookies of people who never identify or buy (the leads)
PROSPECT_SHARE = 0.25  # of web events
MAX_MEAN_ORDER = 5_000.0  # caps the few heaviest spenders (about 1 in 300), so no valid order breaks the amount rule

COUNTRIES = {"DE": "EUR", "FR": "EUR", "ES": "EUR", "US": "USD", "GB": "GBP"}
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
TITLES = ("Mr", "Ms", "Mx", "Dr")
EDUCATION = ("secondary", "bachelor", "master", "doctorate")
MARITAL = ("single", "married", "divorced", "widowed")
FIRST = ("ana", "ben", "carla", "dev", "eli", "farah", "gus", "hana", "ivan", "jo", "kim", "lena", "milo", "nia", "omar", "pia")
LAST = ("smith", "garcia", "muller", "rossi", "dubois", "khan", "novak", "silva", "tanaka", "okafor")
PRODUCTS = (
    ("SKU-HEAD-01", "Aurora headphones", 129.0),
    ("SKU-SPKR-02", "Pulse speaker", 89.0),
    ("SKU-WTCH-03", "Orbit smartwatch", 249.0),
    ("SKU-CABL-04", "Braided USB-C cable", 15.0),
    ("SKU-CASE-05", "Travel case", 25.0),
    ("SKU-EARB-06", "Drift earbuds", 99.0),
    ("SKU-CHRG-07", "Wireless charger", 39.0),
    ("SKU-LAMP-08", "Desk lamp", 59.0),
)
PROMOTIONS = {"WELCOME10": 0.10, "SPRING15": 0.15, "LOYAL20": 0.20}
PAGES = ("/", "/products", "/products/headphones", "/products/speakers", "/products/watches", "/cart", "/checkout", "/support", "/blog/sound-guide", "/account")
REFERRERS = ("https://www.google.com/", "https://www.bing.com/", "https://t.co/x", "https://www.facebook.com/", None, None)
CAMPAIGNS = (("newsletter", "email", "spring_sale"), ("google", "cpc", "brand_search"), ("facebook", "social", "summer_launch"))
USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
)
POSITIVE = ("Loving my new {p}, the sound is amazing!", "Great service from @brand today, {p} arrived early.", "The {p} is worth every cent. Recommended.")
NEUTRAL = ("Does the {p} work with older phones?", "Thinking about getting the {p}, any opinions?", "Saw the {p} in a store today.")
COMPLAINTS = (
    "My {p} arrived broken, I want a refund.",
    "Order still never arrived, worst delivery ever. Where is my {p}?",
    "Support was rude when I asked about my {p}. Very disappointed.",
    "Third week waiting for the {p}, delivery is late again. Going to cancel.",
)
SERVICES = ("checkout-service", "catalog-service", "auth-service", "payment-gateway")
# Service tickets: the customer's first message, always a complaint.
SUBJECTS = (
    "My {p} arrived broken, please replace it.",
    "Charged twice for my {p} order, I want a refund.",
    "Where is my order? The {p} never arrived.",
    "Please cancel my order for the {p}, it is still not shipped.",
    "Nobody answered me about the {p} for days, this is unacceptable.",
    "The {p} is defective after one week of use.",
    "Delivery of my {p} is late again, the third time this year.",
    "The {p} stopped working and the returns page gives an error.",
)
SUBJECT_PII = (" Call me back on {phone}.", " My email is {email}.")  # the pipeline must scrub these
SUBJECT_PII_SHARE = 0.1
SLA_HOURS = {"chat": 8, "phone": 24, "email": 24, "web_form": 48}  # by channel; TICKET_CHANNELS in its order
TICKET_CHANNELS = tuple(SLA_HOURS)
TICKET_EVERY = 20  # with tickets on, event i with i % 20 == 19 is a ticket slot: open, update, close in turn
TICKET_LAG_BLOCKS = 2  # L: a ticket's update comes about L blocks after its opening, its closing 2L
RESOLVE_HOURS = 24  # what the time from opening to closing scatters around, whatever the traffic
LOG_LINES = (
    "INFO Order {o} placed by customer {c} in {ms} ms",
    "WARN Payment retry {n} for order {o}",
    "ERROR Timeout calling inventory after {ms} ms",
    "INFO User {c} logged in from 10.{a}.{b}.{n}",
    "INFO Cache hit ratio {r}",
    "ERROR Card declined for order {o} code {n}",
)


@dataclass(frozen=True)
class Traffic:
    """The scale of a generated feed: how many customers send its events, and how fast its
    event time advances (event i happens about i / events_per_day days after ANCHOR)."""

    customers: int
    events_per_day: float

    def __post_init__(self) -> None:
        if not 1 <= self.customers <= 999_999:  # customer ids are C000000..C999999
            raise ValueError("customers must be between 1 and 999,999")
        if self.events_per_day <= 0:
            raise ValueError("events_per_day must be positive")

    @property
    def spacing_s(self) -> float:
        return 86_400 / self.events_per_day

    def describe(self) -> str:
        return f"{self.customers:,} customers, {self.events_per_day:,.0f} events a day"


# A live CRM feed: a million events span 20 days, and 1% of them (half a day) names about 8%
# of the customers (seed 42's last 10,000: 3,853 with the four older topics, 4,028 with a
# ticket topic too). `crm produce` defaults to it.
FEED = Traffic(customers=50_000, events_per_day=50_000)
# A small shop with long histories per customer (2,000 events span two days, 100k events 104
# days), so that small runs have repeat buyers and fitted purchase models: the demo and tests.
SMALL_SHOP = Traffic(customers=2_000, events_per_day=960)


@dataclass(frozen=True)
class Customer:
    customer_id: str
    email: str
    phone: str
    card: str  # a Luhn-valid test number: personal data the pipeline must never store
    handle: str
    cookie_id: str
    country: str
    age_band: str
    title: str
    education: str
    marital_status: str
    activity: float  # relative purchase propensity
    mean_order: float  # the value their orders scatter around, in their currency
    leaves_at: datetime  # orders nothing after this (browses and posts on)


@dataclass(frozen=True)
class GeneratedEvent:
    index: int
    topic: str
    source: str
    kind: str  # "valid" or one of BAD_KINDS
    event_id: str | None
    key: bytes | None
    value: bytes


def _card_number(seed: int, n: int) -> str:
    """A Luhn-valid 16-digit test card number, grouped by four, from a hash (no draw from the
    customers' random stream, so every other attribute stays as it was)."""
    body = "4" + str(int(hashlib.sha256(f"card:{seed}:{n}".encode()).hexdigest(), 16))[:14]
    total = sum(d if i % 2 else sum(divmod(2 * d, 10)) for i, d in enumerate(int(ch) for ch in reversed(body)))
    number = body + str(-total % 10)
    return " ".join(number[i : i + 4] for i in range(0, 16, 4))


def _basket(rng: random.Random, value: float) -> list[dict]:
    """Order lines adding up to at most `value` (the cheapest product alone when none fits):
    mostly the dearest product that fits, so an order has a few lines, not dozens."""
    units: dict[tuple, int] = {}
    total = 0.0
    while fits := [product for product in PRODUCTS if total + product[2] <= value]:
        product = max(fits, key=lambda fit: fit[2]) if rng.random() < 0.6 else rng.choice(fits)
        units[product] = units.get(product, 0) + 1
        total += product[2]
    if not units:
        units[min(PRODUCTS, key=lambda product: product[2])] = 1
    return [{"sku": sku, "product": name, "quantity": n, "unit_price": price} for (sku, name, price), n in units.items()]


def population(seed: int, size: int = SMALL_SHOP.customers) -> list[Customer]:
    """The customers behind the events, with identification and descriptive attributes, and a
    buying behaviour drawn from its own stream (so the other attributes stay as they were)."""
    rng = random.Random(f"population:{seed}")
    people = []
    for n in range(size):
        behaviour = random.Random(f"behaviour:{seed}:{n}")
        first, last = rng.choice(FIRST), rng.choice(LAST)
        people.append(
            Customer(
                customer_id=f"C{n:06d}",
                email=f"{first}.{last}{n}@example.com",
                phone=f"+49 151 {rng.randrange(10**7, 10**8)}",
                card=_card_number(seed, n),
                handle=f"@{first}{last}{n}",
                cookie_id=uuid.UUID(int=rng.getrandbits(128), version=4).hex,
                country=rng.choice(tuple(COUNTRIES)),
                age_band=rng.choice(AGE_BANDS),
                title=rng.choice(TITLES),
                education=rng.choice(EDUCATION),
                marital_status=rng.choice(MARITAL),
                activity=rng.paretovariate(1.5),
                mean_order=min(SPEND_SHAPE / behaviour.gammavariate(SPEND_Q, 1 / SPEND_GAMMA), MAX_MEAN_ORDER),
                leaves_at=ANCHOR + timedelta(days=behaviour.expovariate(1 / MEAN_LIFETIME_DAYS)),
            )
        )
    return people


@dataclass
class EventStream:
    """Event i of a seeded stream; `bad_fraction` of events are replaced by bad records.

    The bad kinds share `bad_fraction` equally, unless `mix` gives a fraction per kind.
    """

    seed: int
    topics: dict[str, str]  # source -> topic
    bad_fraction: float = 0.0
    mix: dict[str, float] | None = None
    traffic: Traffic = SMALL_SHOP
    customers: list[Customer] = field(default_factory=list)
    _cum_weights: list[float] = field(default_factory=list)
    _prospects: list[str] = field(default_factory=list)  # their cookie ids
    _mix: list[tuple[float, str]] = field(default_factory=list)
    _ticket_block: int = 0  # B, in positions (one position: an opening, an update and a closing slot)
    _ticket_mult: int = 1  # A, coprime with B: scatters which ticket an update or closing slot takes

    def __post_init__(self) -> None:
        if not 0.0 <= self.bad_fraction <= 1.0:
            raise ValueError("bad_fraction must be between 0 and 1")
        mix = self.mix if self.mix is not None else {k: self.bad_fraction / len(BAD_KINDS) for k in BAD_KINDS}
        unknown = set(mix) - set(BAD_KINDS)
        if unknown or sum(mix.values()) > 1.0:
            raise ValueError(f"mix must give fractions summing to at most 1 for kinds of {BAD_KINDS}")
        self._mix = list(zip(itertools.accumulate(mix.values()), mix, strict=True))
        self.customers = self.customers or population(self.seed, self.traffic.customers)
        self._cum_weights = list(itertools.accumulate(c.activity for c in self.customers))
        prospects = max(1, round(PROSPECTS_PER_CUSTOMER * len(self.customers)))
        self._prospects = [uuid.UUID(int=random.Random(f"prospect:{self.seed}:{k}").getrandbits(128), version=4).hex for k in range(prospects)]
        # A position spans 3 x TICKET_EVERY events, B positions about RESOLVE_HOURS / 2L of event
        # time. A ticket's update comes B to 3B positions after its opening, its closing 3B to 5B:
        # 0.75x to 1.25x RESOLVE_HOURS, 18 to 30 hours, B's rounding aside, which only feeds of a
        # few hundred events a day notice (small shop: B = 4, 20.5 to 29.5 hours; FEED: B = 208,
        # 18.0 to 29.95 hours).
        position_s = 3 * TICKET_EVERY * self.traffic.spacing_s
        self._ticket_block = max(1, round(RESOLVE_HOURS * 3600 / (2 * TICKET_LAG_BLOCKS * position_s)))
        # Near B/golden ratio, so that (r, A r mod B) spreads over the block like independent draws
        # (A near B/2 would give a few lags only).
        self._ticket_mult = next(a for a in itertools.count(round(0.618 * self._ticket_block)) if math.gcd(a, self._ticket_block) == 1)

    def _rng(self, i: int) -> random.Random:
        return random.Random(f"{self.seed}:{i}")

    def _draw_kind(self, rng: random.Random) -> str:
        draw = rng.random()
        return next((kind for upto, kind in self._mix if draw < upto), "valid")

    def kind_of(self, i: int) -> str:
        return self._draw_kind(self._rng(i))

    def ticket_at(self, i: int) -> tuple[int, int] | None:
        """(ticket, step) that slot i advances (step 0 opens, 1 updates, 2 closes), or None when
        i is no ticket slot. The update and closing slots of a block of B positions take the
        tickets of the block L and 2L earlier in a scattered order (a bijection), so every ticket
        gets one of each, its closing after its update; the first blocks have none to take."""
        if "ticket" not in self.topics or i % TICKET_EVERY != TICKET_EVERY - 1:
            return None
        step, position = (i // TICKET_EVERY) % 3, i // TICKET_EVERY // 3
        if step == 0:
            return position, 0
        block, r = divmod(position, self._ticket_block)
        offset = int(hashlib.sha256(f"ticket-step:{self.seed}:{block}:{step}".encode()).hexdigest(), 16)
        k = (block - step * TICKET_LAG_BLOCKS) * self._ticket_block + (self._ticket_mult * r + offset) % self._ticket_block
        return (k, step) if k >= 0 else None

    def _ticket_time(self, i: int) -> datetime:
        """A ticket slot's event time, from its index alone, so a ticket's opening time is known
        at its later events without replaying the opening's random stream."""
        spacing = self.traffic.spacing_s
        return ANCHOR + timedelta(seconds=i * spacing + random.Random(f"ticket-time:{self.seed}:{i}").randrange(max(1, round(spacing))))

    def event(self, i: int) -> GeneratedEvent:
        rng = self._rng(i)
        kind = self._draw_kind(rng)
        if kind == "duplicate":
            original = i - 1 - rng.randrange(50)
            if original >= 0 and self.kind_of(original) == "valid":
                again = self.event(original)
                return GeneratedEvent(i, again.topic, again.source, "duplicate", again.event_id, again.key, again.value)
            kind = "valid"
        source, record = self._valid_record(i, rng)
        if kind == "late":
            late = datetime.fromisoformat(record["event_time"]) - LATE_BY
            record["event_time"] = late.isoformat(timespec="milliseconds")
        elif kind == "untrusted_producer":
            record["producer"] = f"unregistered-{source}-feed"
        elif kind == "rule_violation":
            source, record = self._rule_violation(i, rng)
        event_id = record["event_id"]
        key = record.get("customer_id") or event_id  # the directive requires a key
        if kind == "wrong_type":
            field_name = rng.choice([k for k, v in record.items() if k not in ("source", "schema_version") and v is not None])
            record[field_name] = {"unexpected": True} if isinstance(record[field_name], str) else "not-a-" + type(record[field_name]).__name__
        elif kind == "missing_field":
            del record[rng.choice([k for k in record if k not in ("source", "schema_version")])]
        elif kind == "unknown_source":
            record["source"] = rng.choice(("fax", "carrier_pigeon", "legacy_crm"))
        value = json.dumps(record, separators=(",", ":")).encode("utf-8")
        if kind == "malformed_json":
            value = value[: rng.randrange(1, len(value) - 1)]
        return GeneratedEvent(i, self.topics[source], source, kind, event_id, key.encode(), value)

    def _rule_violation(self, i: int, rng: random.Random) -> tuple[str, dict]:
        """A well-typed transaction that breaks a quarantine rule of the shipped directive."""
        source, record = self._valid_record(i, rng, source="transaction")
        record["currency"] = "XXX"
        return source, record

    def _valid_record(self, i: int, rng: random.Random, source: str | None = None) -> tuple[str, dict]:
        if source is None and (ticket := self.ticket_at(i)):
            return "ticket", self._ticket(i, rng, *ticket)
        source = source or rng.choices(SOURCES, SOURCE_WEIGHTS)[0]
        spacing = self.traffic.spacing_s
        when = ANCHOR + timedelta(seconds=i * spacing + rng.randrange(max(1, round(spacing))))
        customer = self._customer(rng, when, buying=source == "transaction")
        record = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source": source,
            "schema_version": 1,
            "event_time": when.isoformat(timespec="milliseconds"),
            "producer": f"{source}-gateway-{rng.randrange(1, 4)}",
        }
        record.update(getattr(self, f"_{source}")(rng, customer, when))
        return source, record

    def _ticket(self, i: int, rng: random.Random, k: int, step: int) -> dict:
        """Step `step` of ticket k; what the ticket is about comes from its own stream, so all its
        events agree on it."""
        opened = self._ticket_time(3 * k * TICKET_EVERY + TICKET_EVERY - 1)
        own = random.Random(f"ticket:{self.seed}:{k}")
        customer = self._customer(own, opened, buying=False)
        channel = own.choice(TICKET_CHANNELS)
        subject = own.choice(SUBJECTS).format(p=own.choice(PRODUCTS)[1])
        if own.random() < SUBJECT_PII_SHARE:
            subject += own.choice(SUBJECT_PII).format(phone=customer.phone, email=customer.email)
        record = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "source": "ticket",
            "schema_version": 1,
            "event_time": self._ticket_time(i).isoformat(timespec="milliseconds"),
            "producer": f"ticket-gateway-{rng.randrange(1, 4)}",
        }
        # An update is mostly the agent asking the customer something (pending), else a reply.
        status = "open" if step == 0 else "closed" if step == 2 else "pending" if rng.random() < 0.7 else "open"
        record.update(
            customer_id=customer.customer_id,
            ticket_id=f"T{k:09d}",
            status=status,
            opened_at=opened.isoformat(timespec="milliseconds"),
            channel=channel,
            sla_hours=SLA_HOURS[channel],
            subject=subject,
        )
        return record

    def _customer(self, rng: random.Random, when: datetime, buying: bool) -> Customer:
        """A customer by activity; an order of one who has left goes to another customer. The
        base is not renewed: after three lifetimes (1M events of the small shop span 2.8 years)
        about 5% still buy, so orders concentrate on them; the last of 100 draws is kept regardless."""
        for _ in range(100):
            customer = rng.choices(self.customers, cum_weights=self._cum_weights)[0]
            if not buying or when < customer.leaves_at:
                break
        return customer

    def _web(self, rng: random.Random, c: Customer, when: datetime) -> dict:
        campaign = rng.choice(CAMPAIGNS) if rng.random() < 0.3 else (None, None, None)
        prospect = rng.random() < PROSPECT_SHARE
        cookie = rng.choice(self._prospects) if prospect else c.cookie_id
        return {
            "customer_id": c.customer_id if not prospect and rng.random() < 0.6 else None,
            "cookie_id": cookie,
            "session_id": f"S-{cookie[:8]}-{when:%Y%m%d}-{when.hour // 6}",
            "event_type": rng.choice(("page_view", "page_view", "click")),
            "page": rng.choice(PAGES),
            "referrer": rng.choice(REFERRERS),
            "utm_source": campaign[0],
            "utm_medium": campaign[1],
            "utm_campaign": campaign[2],
            "user_agent": rng.choice(USER_AGENTS),
        }

    @staticmethod
    def _social(rng: random.Random, c: Customer, when: datetime) -> dict:
        mood = rng.random()
        templates = COMPLAINTS if mood < 0.25 else NEUTRAL if mood < 0.55 else POSITIVE
        product = rng.choice(PRODUCTS)[1]
        return {
            "customer_id": c.customer_id if rng.random() < 0.7 else None,
            "handle": c.handle,
            "channel": rng.choice(("twitter", "facebook", "instagram", "forum")),
            "kind": rng.choice(("post", "comment")),
            "text": rng.choice(templates).format(p=product),
            "in_reply_to": None if rng.random() < 0.7 else f"post-{rng.randrange(10**6)}",
            "likes": rng.randrange(0, 200),
        }

    @staticmethod
    def _log(rng: random.Random, c: Customer, when: datetime) -> dict:
        line = rng.choice(LOG_LINES).format(
            o=f"O{rng.randrange(10**7):07d}", c=c.customer_id, ms=rng.randrange(5, 5000), n=rng.randrange(1, 9),
            a=rng.randrange(256), b=rng.randrange(256), r=round(rng.random(), 3),
        )
        return {
            "host": f"app-{rng.randrange(1, 6):02d}",
            "service": rng.choice(SERVICES),
            "line": f"{when:%Y-%m-%d %H:%M:%S},{when.microsecond // 1000:03d} {line}",
        }

    @staticmethod
    def _transaction(rng: random.Random, c: Customer, when: datetime) -> dict:
        items = _basket(rng, rng.gammavariate(SPEND_SHAPE, c.mean_order / SPEND_SHAPE))
        promo = rng.choice(tuple(PROMOTIONS)) if rng.random() < 0.2 else None
        gross = sum(it["quantity"] * it["unit_price"] for it in items)
        return {
            "order_id": f"O{rng.randrange(10**9):09d}",
            "customer_id": c.customer_id,
            "customer_email": c.email,
            "customer_phone": c.phone if rng.random() < 0.5 else None,
            "customer_country": c.country,
            "customer_age_band": c.age_band,
            "channel": rng.choice(("web", "app", "store")),
            "currency": COUNTRIES[c.country],
            "amount": round(gross * (1 - PROMOTIONS.get(promo, 0.0)), 2),
            "promotion_code": promo,
            "payment_card": c.card,
            "items": items,
        }

    def events(self, start: int, count: int) -> Iterator[GeneratedEvent]:
        for i in range(start, start + count):
            yield self.event(i)


@dataclass
class Manifest:
    """What was produced, and so what CROM must report."""

    by_source_kind: Counter = field(default_factory=Counter)

    def add(self, event: GeneratedEvent) -> None:
        self.by_source_kind[(event.source, event.kind)] += 1

    def per_source(self) -> dict[str, int]:
        out: Counter = Counter()
        for (source, _), n in self.by_source_kind.items():
            out[source] += n
        return dict(out)

    def count(self, kinds: tuple[str, ...], source: str | None = None) -> int:
        return sum(n for (s, k), n in self.by_source_kind.items() if k in kinds and (source is None or s == source))


def _produce_slice(kafka: KafkaSettings, stream: EventStream, indices: range, rate: float | None, sent, share: tuple[int, int]) -> Counter:
    """Worker k of n (`share`): send the events of `indices` that fall in its Kafka partitions,
    adding to the shared `sent` counter. Each partition has one worker, which sends its events
    in order, as a keyed producer does: CROM judges lateness by each partition's own order."""
    import logging

    from kafka import KafkaProducer
    from kafka.partitioner.default import murmur2

    from pipelines.connection import connect

    logging.getLogger("kafka").setLevel(logging.ERROR)
    producer = connect(
        KafkaProducer,
        kafka,
        acks="all",
        linger_ms=50,
        batch_size=1024 * 1024,
        compression_type="lz4",  # halves the bytes; kafka-python is CPU-bound per record
        max_request_size=2 * 1024 * 1024,
    )
    k, n = share
    topics = sorted(set(stream.topics.values()))
    partitions = {t: sorted(producer.partitions_for(t)) for t in topics}
    manifest = Manifest()
    started, done = time.monotonic(), 0
    try:
        for position, event in enumerate(map(stream.event, indices), 1):
            # Kafka's default partitioner for a keyed record, so a customer's events share a partition
            ours = partitions[event.topic]
            partition = ours[(murmur2(event.key) & 0x7FFFFFFF) % len(ours)]
            if (topics.index(event.topic) + partition) % n != k:
                continue
            producer.send(event.topic, key=event.key, value=event.value, partition=partition)
            manifest.add(event)
            done += 1
            if done % 1000 == 0:
                with sent.get_lock():
                    sent.value += 1000
            if rate:
                ahead = position / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing every worker to --rate through the same events
        producer.flush()
    finally:
        producer.close()
    with sent.get_lock():
        sent.value += done % 1000
    return manifest.by_source_kind


def produce(
    kafka: KafkaSettings,
    stream: EventStream,
    start: int,
    count: int,
    rate: float | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> Manifest:
    """Send events [start, start+count) with kafka-python from parallel worker processes.

    kafka-python spends most of its time under the GIL, so each worker is a process with its
    own producer. Each Kafka partition has one worker, which sends its events in order, so
    event time advances in every partition as it would from a live keyed producer. Returns
    the merged manifest.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    workers = max(1, min(workers or multiprocessing.cpu_count(), count // 5000 or 1))
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold a JVM gateway
    sent = ctx.Value("q", 0)
    started = time.monotonic()
    manifest = Manifest()
    # A worker that dies raises BrokenProcessPool here instead of hanging the caller.
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_share_counter, initargs=(sent,)) as pool:
        pending = {
            pool.submit(_produce_slice_shared, kafka, stream, range(start, start + count), rate, (k, workers))
            for k in range(workers)
        }
        while pending:
            done, pending = wait(pending, timeout=2.0, return_when=FIRST_COMPLETED)
            for future in done:
                manifest.by_source_kind.update(future.result())
            if pending:
                n = sent.value
                progress(f"produced {n:,}/{count:,} events ({n / (time.monotonic() - started):,.0f} ev/s)")
    elapsed = time.monotonic() - started
    progress(f"produced {count:,} events in {elapsed:.1f}s ({count / max(elapsed, 1e-9):,.0f} ev/s)")
    return manifest


_sent = None


def _share_counter(counter) -> None:
    global _sent
    _sent = counter


def _produce_slice_shared(kafka: KafkaSettings, stream: EventStream, indices: range, rate: float | None, share: tuple[int, int]) -> Counter:
    return _produce_slice(kafka, stream, indices, rate, _sent, share)
