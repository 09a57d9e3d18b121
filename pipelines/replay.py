"""Real public data sets turned into source events, so the pipeline can run on data nobody here wrote.

`crm replay DATASET --path DIR` sends each record of a data set to its source's topic:

- airline-tweets (tweets_dev.csv) -> social: one post per tweet, by its author's handle, in
  the order they were posted;
- apache-access (apache_logs, combined format) -> web: one page view per request;
- loghub (<System>/<System>_2k.log) -> log: one event per line, the system as host and service;
- cdnow (CDNOW_master.txt) and cdnow-sample (CDNOW_sample.txt, the 1/10 sample of the
  published model fits) -> transaction: one order per purchase, in USD.

Only what the data holds is sent; a field it lacks is null, never made up:
- An access log has no cookie, so the visitor is the client address with its user agent,
  the usual stand-in; it is pseudonymised in silver like any cookie id. It has no session
  either: `session_id` is the visitor's day, and CROM's gap sessions are the real ones.
- Tweets have no like count (likes is null) and their times carry no zone (read as UTC).
- Loghub lines carry times in eight layouts, so a log event's time is when it was replayed,
  as a log shipper stamps lines it reads; the line keeps its own time in its text.
- CDNOW purchases have a date, a CD count and a dollar value: one line item of that many
  CDs, no email, phone, country or age band. They are sent in date order. The 18 months
  they span are no problem for CROM's watermark, which follows each partition's own order;
  the `cdnow` profile's directives (directives/cdnow) take them as the backfill they are.

Event ids are `replay-<dataset>:<file>:<line>`, so replaying a file twice gives the same ids,
which CROM then counts as duplicates instead of storing twice.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipelines.config import KafkaSettings
from pipelines.errors import CrmError
from pipelines.connection import connect

COMBINED = re.compile(
    r'^(?P<client>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d{3}) \S+ "(?P<referrer>[^"]*)" "(?P<agent>[^"]*)"'
)


@dataclass(frozen=True)
class Replayed:
    """One record of a data set: its event, or the reason it could not become one."""

    where: str  # file:line
    source: str
    event: dict | None
    problem: str | None = None
    raw: str | None = None  # the record as read, sent as it is when it cannot become an event


def _base(dataset: str, source: str, where: str, when: datetime) -> dict:
    return {
        "event_id": f"replay-{dataset}:{where}",
        "source": source,
        "schema_version": 1,
        "event_time": when.isoformat(),
        "producer": f"replay-{dataset}",
    }


def access_log_event(line: str, where: str) -> dict | None:
    """One combined-format line -> a web.v1 event; None if the line is not in that format."""
    match = COMBINED.match(line)
    if match is None:
        return None
    parts = match["request"].split()
    page = parts[1] if len(parts) >= 2 else match["request"] or "/"
    when = datetime.strptime(match["time"], "%d/%b/%Y:%H:%M:%S %z")
    visitor = f"{match['client']}|{match['agent']}"
    return _base("apache-access", "web", where, when) | {
        "customer_id": None,
        "cookie_id": visitor,
        "session_id": f"{hashlib.sha256(visitor.encode()).hexdigest()[:16]}-{when:%Y%m%d}",
        "event_type": "page_view",
        "page": page,
        "referrer": None if match["referrer"] in ("", "-") else match["referrer"],
        "utm_source": None,
        "utm_medium": None,
        "utm_campaign": None,
        "user_agent": match["agent"],
    }


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            yield number, line.rstrip("\r\n")


def apache_access(root: Path) -> Iterator[Replayed]:
    path = _expect(root / "apache_logs")
    for number, line in _lines(path):
        where = f"{path.name}:{number}"
        event = access_log_event(line, where)
        yield Replayed(where, "web", event, None if event else "not a combined-format access log line", line)


def airline_tweets(root: Path) -> Iterator[Replayed]:
    """Tweets in the order they were posted, as a live feed would send them (the file is not)."""
    path = _expect(root / "tweets_dev.csv")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(enumerate(csv.DictReader(handle), start=2))  # line 1 is the header
    posted = {}
    for number, row in rows:
        try:
            posted[number] = datetime.strptime(row["tweet_created"], "%d-%m-%Y %H:%M").replace(tzinfo=timezone.utc)
        except (TypeError, ValueError):
            pass
    for number, row in sorted(rows, key=lambda numbered: (posted.get(numbered[0], datetime.min.replace(tzinfo=timezone.utc)), numbered[0])):
        where = f"{path.name}:{number}"
        if number not in posted:
            problem = f"tweet_created {row.get('tweet_created')!r} is not DD-MM-YYYY HH:MM"
            yield Replayed(where, "social", None, problem, json.dumps(row))
            continue
        yield Replayed(where, "social", _base("airline-tweets", "social", where, posted[number]) | {
            "customer_id": None,
            "handle": "@" + row["name"],
            "channel": "twitter",
            "kind": "post",
            "text": row["text"],
            "in_reply_to": None,
            "likes": None,
        })  # fmt: skip


def loghub(root: Path) -> Iterator[Replayed]:
    logs = sorted(root.glob("*/*_2k.log"))
    if not logs:
        raise CrmError(f"{root}: no Loghub samples (<System>/<System>_2k.log) found")
    now = datetime.now(timezone.utc)
    for path in logs:
        system = path.parent.name
        for number, line in _lines(path):
            where = f"{system}/{path.name}:{number}"
            event = _base("loghub", "log", where, now) | {"host": system.lower(), "service": system, "line": line}
            yield Replayed(where, "log", event if line.strip() else None, None if line.strip() else "blank line")


def _cdnow_purchases(path: Path, columns: int) -> Iterator[Replayed]:
    """Purchases in date order, as a live feed would send them (the files are sorted by customer).

    A line is the customer id, then (in the sample) its id within the sample, the date, the
    CD count and the dollar value; the customer id is the master file's, so both files name
    a customer alike.
    """
    for number, line in sorted(_lines(path), key=lambda numbered: (numbered[1].split()[columns - 3 : columns - 2], numbered[0])):
        fields = line.split()
        where = f"{path.name}:{number}"
        if not fields or (number == 1 and not fields[0].isdigit()):
            yield Replayed(where, "transaction", None, "blank line" if not fields else "header")
            continue
        try:
            if len(fields) != columns:
                raise ValueError(f"{len(fields)} fields, not {columns}")
            customer, day, cds, dollars = fields[0], *fields[-3:]
            when = datetime.strptime(day, "%Y%m%d").replace(tzinfo=timezone.utc)
            quantity, amount = int(cds), float(dollars)
            if quantity < 1 or amount < 0:
                raise ValueError(f"{quantity} CDs for {amount} dollars")
        except ValueError as exc:
            yield Replayed(where, "transaction", None, f"not a purchase (customer, YYYYMMDD, CDs, dollars): {exc}", line)
            continue
        yield Replayed(where, "transaction", _base("cdnow", "transaction", where, when) | {
            "order_id": f"cdnow-{path.stem}-{number}",
            "customer_id": f"cdnow-{customer}",
            "customer_email": None,
            "customer_phone": None,
            "customer_country": None,
            "customer_age_band": None,
            "channel": "web",
            "currency": "USD",
            "amount": amount,
            "promotion_code": None,
            "payment_card": None,
            "items": [{"sku": "CD", "product": "CD", "quantity": quantity, "unit_price": round(amount / quantity, 2)}],
        })  # fmt: skip


def cdnow(root: Path) -> Iterator[Replayed]:
    """The master file: 69,659 purchases by 23,570 customers."""
    return _cdnow_purchases(_expect(root / "CDNOW_master.txt"), columns=4)


def cdnow_sample(root: Path) -> Iterator[Replayed]:
    """The 1/10 sample of the published BG/NBD and Gamma-Gamma fits: 6,919 purchases by 2,357 customers."""
    return _cdnow_purchases(_expect(root / "CDNOW_sample.txt"), columns=5)


DATASETS: dict[str, Callable[[Path], Iterator[Replayed]]] = {
    "airline-tweets": airline_tweets,
    "apache-access": apache_access,
    "loghub": loghub,
    "cdnow": cdnow,
    "cdnow-sample": cdnow_sample,
}
FOLDERS = {"cdnow-sample": "cdnow"}  # data sets that share another's folder under ../shared/data


def dataset_folder(dataset: str) -> str:
    return FOLDERS.get(dataset, dataset)


def _expect(path: Path) -> Path:
    if not path.is_file():
        raise CrmError(f"{path} not found; --path must be the data set's folder (e.g. ../shared/data/{path.parent.name})")
    return path


def replay(
    kafka: KafkaSettings,
    dataset: str,
    root: Path,
    topics: dict[str, str],
    limit: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> Counter:
    """Send the data set's events to their sources' topics; counts per source, plus `unreadable`
    and `skipped` records.

    A record that cannot become an event (a line in another format) is sent as it was read, so
    that CROM quarantines it with a reason instead of it vanishing here; it is also reported
    with its file and line. Blank lines hold no record and are skipped.
    """
    from kafka import KafkaProducer

    if dataset not in DATASETS:
        raise CrmError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    producer = connect(KafkaProducer, kafka, acks="all", linger_ms=50, compression_type="lz4")
    counts: Counter = Counter()
    try:
        for n, record in enumerate(DATASETS[dataset](root), start=1):
            if limit is not None and n > limit:
                break
            if record.source not in topics:
                raise CrmError(f"the operational directive has no {record.source!r} source for {dataset}")
            if record.event is not None:
                key = record.event.get("customer_id") or record.event["event_id"]
                value = json.dumps(record.event, separators=(",", ":"))
                counts[record.source] += 1
            elif record.raw is not None:
                key, value = f"replay-{dataset}:{record.where}", record.raw
                counts["unreadable"] += 1
                progress(f"{record.where}: {record.problem}; sent as read, for quarantine")
            else:
                counts["skipped"] += 1
                continue
            producer.send(topics[record.source], key=key.encode(), value=value.encode())
            if n % 10_000 == 0:
                progress(f"replayed {n:,} records of {dataset}")
        producer.flush()
    finally:
        producer.close()
    return counts
