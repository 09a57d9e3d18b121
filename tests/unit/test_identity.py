"""Identity resolution (pipelines.crom.identity) and the key normalisation it relies on."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from functools import reduce

import pytest
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.crom.identity import key_links, resolve_identities
from pipelines.errors import CrmError
from pipelines.privacy import hmac_sha256, normalise_phone, phone_key
from pipelines.schemas import load_schema, parse_schema

T0 = datetime(2026, 1, 1)
KEY = b"k" * 32


def _pseudonym(customer_id: str) -> str:
    return hmac.new(KEY, customer_id.encode(), hashlib.sha256).hexdigest()


def _links(spark, schemas_dir):
    tx = spark.createDataFrame(
        [
            ("c1", "e1", "p1", T0),
            ("c1", "e1", None, T0),
            ("c2", "e2", "p1", T0),  # p1 is claimed by c1 and c2: a conflict
        ],
        "customer_id string, customer_email_hmac string, customer_phone_hmac string, event_time timestamp",
    )
    web = spark.createDataFrame(
        [("c1", "k1", T0), (None, "k1", T0), (None, "k2", T0)],  # k2 is never seen logged in
        "customer_id string, cookie_id_hmac string, event_time timestamp",
    )
    social = spark.createDataFrame([("c2", "h1", T0)], "customer_id string, handle_hmac string, event_time timestamp")
    frames = [
        key_links(tx, load_schema(schemas_dir, "transaction.v1"), "transaction", "event_time", KEY),
        key_links(web, load_schema(schemas_dir, "web.v1"), "web", "event_time", KEY),
        key_links(social, load_schema(schemas_dir, "social.v1"), "social", "event_time", KEY),
    ]
    return reduce(DataFrame.unionByName, frames)


def test_keys_resolve_conflicts_are_counted_not_merged(spark, base_profile):
    rows = {(r["key_type"], r["key_hash"]): r for r in resolve_identities(_links(spark, base_profile.schemas)).collect()}
    customers = {("customer", _pseudonym(c)) for c in ("c1", "c2")}  # each customer id's own pseudonym, too
    assert set(rows) == {("email", "e1"), ("email", "e2"), ("phone", "p1"), ("cookie", "k1"), ("cookie", "k2"), ("handle", "h1")} | customers
    assert {rows[k]["resolved_customer_id"] for k in customers} == {"c1", "c2"} and rows[("customer", _pseudonym("c1"))]["events"] == 3
    assert (rows[("email", "e1")]["resolved_customer_id"], rows[("email", "e1")]["events"]) == ("c1", 2)
    assert rows[("cookie", "k1")]["resolved_customer_id"] == "c1"  # the anonymous visit links through the cookie
    assert rows[("handle", "h1")]["resolved_customer_id"] == "c2"
    conflict = rows[("phone", "p1")]
    assert (conflict["conflict"], conflict["resolved_customer_id"], conflict["claimants"]) == (True, None, ["c1", "c2"])
    anonymous = rows[("cookie", "k2")]
    assert (anonymous["conflict"], anonymous["resolved_customer_id"], anonymous["claimants"]) == (False, None, [])
    assert sum(r["conflict"] for r in rows.values()) == 1


def test_the_map_does_not_depend_on_partitioning_or_order(spark, base_profile):
    links = _links(spark, base_profile.schemas)
    one = sorted(map(tuple, resolve_identities(links.coalesce(1)).collect()))
    shuffled = links.repartition(7, "customer_id").orderBy(F.rand(seed=3))
    assert sorted(map(tuple, resolve_identities(shuffled).collect())) == one


@pytest.mark.parametrize(
    "number, region",
    [("+49 151 12345678", None), ("0151 12345678", "DE"), ("0049-151-1234 5678", "de"), ("+49 (151) 123 456 78", "FR")],
)
def test_every_spelling_of_a_phone_number_gets_one_key(number, region):
    assert phone_key(number, region) == "+4915112345678"


def test_unreadable_phone_numbers_keep_their_digits():
    assert (phone_key("12-34", None), phone_key("n/a", None), phone_key("  ", None), phone_key(None)) == ("1234", None, None, None)


def test_phone_pseudonyms_match_across_spellings(spark):
    df = spark.createDataFrame([("+49 151 12345678", None), ("0151 12345678", "DE"), ("+44 20 7946 0958", None)], "phone string, country string")
    hashes = [r[0] for r in df.select(hmac_sha256(normalise_phone(F.col("phone"), F.col("country")), b"k")).collect()]
    assert hashes[0] == hashes[1] != hashes[2]


def test_a_customer_key_must_be_pseudonymised():
    document = {
        "type": "object",
        "properties": {
            "source": {"type": "string", "const": "x", "x-crm-class": "probe"},
            "schema_version": {"type": "integer", "const": 1, "x-crm-class": "probe"},
            "email": {"type": "string", "x-crm-class": "identification", "x-crm-key": "email"},
        },
    }
    with pytest.raises(CrmError, match="properties.email: x-crm-key 'email' is personal data and needs x-crm-pii: hmac"):
        parse_schema("x.v1", document, "x.v1.json")
    document["properties"]["email"].update({"x-crm-pii": "hmac", "x-crm-key": "passport"})
    with pytest.raises(CrmError, match="x-crm-key must be one of"):
        parse_schema("x.v1", document, "x.v1.json")
