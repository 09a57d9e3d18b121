"""Web datafication (pipelines.crom.web) on a hand-checked slice of the real Apache access log.

The first 40 lines of ../shared/data/apache-access/apache_logs, read by eye: all fall in one
minute (10:05 on 17 May 2015) and come from 9 visitors (client address + agent). Five
requests are automated: Googlebot twice (lines 31, 33), Tiny Tiny RSS (32),
UniversalFeedParser (35) and Baiduspider (40). 83.149.9.216 makes 23 requests, the first at
10:05:00 (line 15, redis.png) and the last at 10:05:59 (line 17, logstashbook.png).
"""

from __future__ import annotations

from datetime import datetime
from itertools import islice

import pytest
from pyspark.sql import functions as F

from pipelines.config import sample_data
from pipelines.crom.web import datafy_web, describe_agent, sessionise, sessions
from pipelines.replay import access_log_event, apache_access

SLICE = 40


@pytest.fixture(scope="module")
def hand_checked(spark):
    events = [r.event for r in islice(apache_access(sample_data() / "apache-access"), SLICE)]
    assert all(events)
    frame = spark.createDataFrame(
        [(e["event_id"], datetime.fromisoformat(e["event_time"]), e["cookie_id"], e["page"], e["referrer"], e["user_agent"]) for e in events],
        "event_id string, event_time timestamp, visitor string, page string, referrer string, user_agent string",
    )
    web = datafy_web(frame, "page", "referrer", "user_agent", {}, site_hosts=["semicomplete.com"])
    return sessionise(web, "visitor", "event_time", "event_id").cache()


@pytest.fixture(scope="module")
def by_line(hand_checked):
    """Line number -> its datafied row."""
    return {int(r["event_id"].rsplit(":", 1)[1]): r for r in hand_checked.collect()}


def test_bots_are_the_five_automated_requests(by_line):
    assert sorted(n for n, r in by_line.items() if r["is_bot"]) == [31, 32, 33, 35, 40]
    assert all(by_line[n]["device_type"] == "bot" for n in (31, 32, 33, 35, 40))


def test_pages_referrers_and_devices(by_line):
    assert by_line[25]["page_path"] == "/articles/dynamic-dns-with-dhcp"  # trailing slash dropped
    assert by_line[32]["page_path"] == "/blog/tags/puppet"  # query dropped
    assert by_line[33]["page_path"] == "/"
    assert (by_line[25]["referrer_host"], by_line[25]["referrer_kind"]) == ("google.ro", "search")
    assert (by_line[26]["referrer_host"], by_line[26]["referrer_kind"]) == ("semicomplete.com", "internal")
    assert (by_line[23]["referrer_host"], by_line[23]["referrer_kind"]) == (None, "direct")
    assert (by_line[1]["browser"], by_line[1]["os"], by_line[1]["device_type"]) == ("Chrome", "Mac OS X", "desktop")
    assert (by_line[24]["browser"], by_line[24]["os"], by_line[24]["device_type"]) == ("Firefox", "Ubuntu", "desktop")
    assert by_line[36]["browser_major"] == "28"


def test_one_session_per_visitor_within_the_minute(hand_checked, by_line):
    per_visitor = {}
    for r in by_line.values():
        per_visitor.setdefault(r["visitor"], set()).add(r["session_key"])
    assert len(per_visitor) == 9 and all(len(keys) == 1 for keys in per_visitor.values())
    summary = {r["visitor"].split("|")[0]: r for r in sessions(hand_checked, "visitor", "event_time").collect()}
    first = summary["83.149.9.216"]
    assert (first["events"], first["session_start"], first["session_end"]) == (23, datetime(2015, 5, 17, 10, 5, 0), datetime(2015, 5, 17, 10, 5, 59))
    assert first["landing_page"].endswith("/images/redis.png") and first["exit_page"].endswith("/images/logstashbook.png")
    assert sum(r["is_bot"] for r in summary.values()) == 5


def test_a_pause_longer_than_the_gap_starts_a_new_session(spark):
    times = ["10:00:00", "10:29:59", "11:00:00", "11:30:00", "12:00:01"]  # gaps: 29:59, 30:01, 30:00, 30:01
    rows = spark.createDataFrame(
        [(f"e{i}", datetime.fromisoformat(f"2026-01-01T{t}"), "v") for i, t in enumerate(times)], "event_id string, event_time timestamp, visitor string"
    )
    marked = sessionise(rows.repartition(3), "visitor", "event_time", "event_id", gap_minutes=30).orderBy("event_time").collect()
    starts = [r["session_start"].strftime("%H:%M:%S") for r in marked]
    assert starts == ["10:00:00", "10:00:00", "11:00:00", "11:00:00", "12:00:01"]
    assert len({r["session_key"] for r in marked}) == 3


def test_campaign_comes_from_the_event_or_else_the_page_query(spark):
    rows = spark.createDataFrame(
        [("/shop?utm_source=news&utm_campaign=spring%20sale", None, None), ("/shop?utm_source=news", "google", "cpc")],
        "page string, utm_source string, utm_medium string",
    ).withColumn("referrer", F.lit(None).cast("string")).withColumn("user_agent", F.lit("curl/8.0"))
    utm = {"source": "utm_source", "medium": "utm_medium"}
    out = datafy_web(rows, "page", "referrer", "user_agent", utm, []).collect()
    assert [(r["campaign_source"], r["campaign_medium"], r["campaign_name"]) for r in out] == [
        ("news", None, "spring sale"),
        ("google", "cpc", None),
    ]
    assert all(r["is_bot"] for r in out)


@pytest.mark.parametrize(
    "agent, kind",
    [
        ("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1", "mobile"),
        ("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1", "tablet"),
        ("Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36", "mobile"),
        ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36", "desktop"),
        ("Mozilla/5.0 (compatible; MSIE 9.0; Windows NT 6.1; Trident/5.0)", "desktop"),
        ("Mozilla/5.0 (compatible; Ezooms/1.0; help@moz.com)", "bot"),
        ("python-requests/2.32", "bot"),
        ("-", "bot"),
        ("", "bot"),
    ],
)  # fmt: skip
def test_device_types(agent, kind):
    assert describe_agent(agent)[3] == kind
    assert describe_agent(agent)[4] == (kind == "bot")


def test_lines_outside_the_combined_format_are_not_events():
    assert access_log_event("not an access log line", "f:1") is None
    event = access_log_event('1.2.3.4 - - [17/May/2015:10:05:03 +0000] "GET /a?b=1 HTTP/1.1" 404 0 "-" "x"', "f:7")
    expected = ("replay-apache-access:f:7", "/a?b=1", None, "2015-05-17T10:05:03+00:00")
    assert (event["event_id"], event["page"], event["referrer"], event["event_time"]) == expected
