"""Web events datafied: page, referrer, campaign, device, browser, bot flag, and gap sessions.

User agents are read by ua-parser (the uap-core rules, run through RE2), once per distinct
agent in an Arrow batch. Automated clients are flagged from ua-parser's `Spider` device plus
generic markers of non-browser agents (bot, crawler, feed reader, HTTP library, an empty
agent, a "compatible;" token that is not Internet Explorer); no rule names one site's data.
Sessions are gap-based: a visitor's events belong to one session until they pause for longer
than the gap (30 minutes by default, the usual web-analytics convention).
"""

from __future__ import annotations

import re
from functools import lru_cache

import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.derived_fields import WEB_FIELDS

AGENT_FIELDS = ("browser", "browser_major", "os", "device_type", "is_bot")

# Generic signs of an automated client; each is a naming convention, not a site's list.
_AUTOMATED = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|feed|rss|fetch|scan|monitor|archiver|preview|headless|"
    r"curl|wget|python|java/|libwww|httpclient|go-http|okhttp|perl|ruby|php/|http://|https://|@",
    re.IGNORECASE,
)
_NOT_IE_COMPATIBLE = re.compile(r"\(compatible;(?![^)]*(?:MSIE|Trident))", re.IGNORECASE)
_MOBILE_OS = {"iOS", "Android", "Windows Phone", "BlackBerry OS", "Firefox OS", "KaiOS", "Symbian OS"}
_DESKTOP_OS = {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "Debian", "FreeBSD", "OpenBSD"}
_TABLET = re.compile(r"ipad|tablet|kindle|nexus (7|9|10)|sm-t|gt-p", re.IGNORECASE)
SEARCH_HOSTS = r"(^|\.)(google|bing|yahoo|duckduckgo|baidu|yandex|ecosia|ask|aol|naver|seznam)\."
SOCIAL_HOSTS = r"(^|\.)(facebook|fb|t|twitter|x|linkedin|lnkd|reddit|instagram|pinterest|youtube|tiktok|news\.ycombinator|vk|weibo)\.(com|co|in|me|ly)$"
EMAIL_HOSTS = r"(^|\.)(mail\.google|outlook\.live|mail\.yahoo|webmail|mail)\."


@lru_cache(maxsize=65_536)
def describe_agent(agent: str | None) -> tuple[str | None, str | None, str | None, str, bool]:
    """(browser, browser major version, os, device type, is bot) for one user agent."""
    from ua_parser import parse  # imported lazily: it compiles the uap-core rules once, on first use

    agent = (agent or "").strip()
    if not agent or agent == "-":
        return None, None, None, "bot", True
    result = parse(agent)
    browser = result.user_agent.family if result.user_agent else None
    major = result.user_agent.major if result.user_agent else None
    os_family = result.os.family if result.os else None
    device = result.device.family if result.device else ""
    if device == "Spider" or _AUTOMATED.search(agent) or _NOT_IE_COMPATIBLE.search(agent):
        return browser, major, os_family, "bot", True
    if _TABLET.search(agent) or _TABLET.search(device) or (os_family == "Android" and "Mobile" not in agent):
        kind = "tablet"
    elif os_family in _MOBILE_OS or "Mobile" in agent or "Phone" in device:
        kind = "mobile"
    elif os_family in _DESKTOP_OS:
        kind = "desktop"
    else:
        kind = "other"
    return browser, major, os_family, kind, False


@F.pandas_udf(T.StructType([f for f in WEB_FIELDS if f.name in AGENT_FIELDS]))
def _agents(agents: pd.Series) -> pd.DataFrame:
    return pd.DataFrame([describe_agent(a) for a in agents], columns=list(AGENT_FIELDS))


def _host(url: Column) -> Column:
    """The lower-cased host of an absolute URL, without 'www.'; null for anything else."""
    host = F.lower(F.regexp_extract(url, r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#:@]+)", 1))
    return F.when(host != "", F.regexp_replace(host, r"^www\.", ""))


def _query_param(url: Column, name: str) -> Column:
    value = F.regexp_extract(url, rf"[?&]{name}=([^&#]*)", 1)
    return F.when(value != "", F.url_decode(value))


def page_path(page: Column) -> Column:
    """The path of a page or URL: no scheme, host, query or fragment, no trailing slash (but '/')."""
    path = F.regexp_replace(F.regexp_replace(page, r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", ""), r"[?#].*$", "")
    path = F.regexp_replace(path, r"(.)/+$", "$1")
    return F.when(path == "", F.lit("/")).otherwise(path)


def referrer_kind(host: Column, site_hosts: list[str]) -> Column:
    internal = F.lit(False)
    for site in site_hosts:
        internal = internal | (host == site.lower().removeprefix("www.")) | host.endswith("." + site.lower().removeprefix("www."))
    return (
        F.when(host.isNull(), "direct")
        .when(internal, "internal")
        .when(host.rlike(SEARCH_HOSTS), "search")
        .when(host.rlike(SOCIAL_HOSTS), "social")
        .when(host.rlike(EMAIL_HOSTS), "email")
        .otherwise("other")
    )


def datafy_web(rows: DataFrame, page: str, referrer: str, user_agent: str, utm: dict[str, str | None], site_hosts: list[str]) -> DataFrame:
    """Rows plus WEB_FIELDS. Campaign fields come from the event's utm_* fields, else from the page URL's query."""
    return rows.select("*", *web_columns(page, referrer, user_agent, utm, site_hosts))


def web_columns(page: str, referrer: str, user_agent: str, utm: dict[str, str | None], site_hosts: list[str]) -> list[Column]:
    """WEB_FIELDS as columns over a web event's fields (see `datafy_web`), to build once per job."""
    host = _host(F.col(referrer))
    campaign = {
        part: F.coalesce(*([F.col(utm[part])] if utm.get(part) else []), _query_param(F.col(page), f"utm_{part}"))
        for part in ("source", "medium", "campaign")
    }
    agent = _agents(F.col(user_agent))
    derived = {
        "page_path": page_path(F.col(page)),
        "referrer_host": host,
        "referrer_kind": referrer_kind(host, site_hosts),
        "campaign_source": campaign["source"],
        "campaign_medium": campaign["medium"],
        "campaign_name": campaign["campaign"],
        **{name: agent[name] for name in AGENT_FIELDS},
    }
    return [derived[f.name].cast(f.dataType).alias(f.name) for f in WEB_FIELDS]


def sessionise(events: DataFrame, visitor: str, time_column: str, order: str, gap_minutes: int = 30) -> DataFrame:
    """Events plus `session_start` and `session_key`: a visitor's session ends after a pause
    longer than the gap. `order` breaks ties between events of the same second, so the result
    does not depend on partitioning."""
    by_visitor = Window.partitionBy(visitor).orderBy(time_column, order)
    previous = F.lag(time_column).over(by_visitor)
    starts = previous.isNull() | (F.col(time_column).cast("long") - previous.cast("long") > gap_minutes * 60)
    marked = events.withColumn("_starts", starts).withColumn(
        "session_start", F.max(F.when(F.col("_starts"), F.col(time_column))).over(by_visitor.rowsBetween(Window.unboundedPreceding, 0))
    )
    key = F.sha2(F.concat_ws("|", F.col(visitor).cast("string"), F.col("session_start").cast("string")), 256).substr(1, 32)
    return marked.drop("_starts").withColumn("session_key", key)


def sessions(events: DataFrame, visitor: str, time_column: str, page: str = "page_path") -> DataFrame:
    """One row per session of `sessionise`d events: start, end, events, distinct pages, landing and exit page, bot."""
    first_last = F.struct(F.col(time_column), F.col(page))
    return events.groupBy(visitor, "session_key", "session_start").agg(
        F.max(time_column).alias("session_end"),
        F.count(F.lit(1)).alias("events"),
        F.count_distinct(page).alias("pages"),
        F.min(first_last)[page].alias("landing_page"),
        F.max(first_last)[page].alias("exit_page"),
        F.bool_or("is_bot").alias("is_bot"),
    )
