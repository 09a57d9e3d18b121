"""Personal data: the built-in HMAC matches RFC 2104, and masking leaves no identifiers."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pyspark.sql import functions as F

from pipelines.privacy import card_token, hmac_key, hmac_sha256, mask_payload, normalise_identifier, scrub_text


def test_hmac_matches_python(spark):
    values = ["ana@example.com", "", "ünïcødé@example.de", "x" * 300]
    for key in (b"short-key", b"k" * 64, b"a-key-longer-than-the-sha256-block-size-" * 3):
        got = spark.createDataFrame([(v,) for v in values], "v string").select(hmac_sha256(F.col("v"), key).alias("h")).collect()
        assert [r["h"] for r in got] == [hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for v in values]


def test_normalised_identifiers_share_a_pseudonym(spark):
    df = spark.createDataFrame([("Ana@Example.com ",), ("ana@example.com",)], "v string")
    hashes = {r[0] for r in df.select(hmac_sha256(normalise_identifier(F.col("v")), b"k")).collect()}
    assert len(hashes) == 1


def test_mask_payload_removes_declared_fields_and_patterns(spark):
    payload = (
        '{"customer_email":"ana@example.com","handle":"@ana_s","note":"call +49 151 2345678 or mail bob@x.org",'
        '"card":"4111 1111 1111 1111","amount":12.5,"event_time":"2026-06-01T10:00:00.000+00:00"}'
    )
    masked = spark.createDataFrame([(payload,)], "p string").select(mask_payload(F.col("p"), ["customer_email", "handle"])).first()[0]
    for secret in ("ana@example.com", "@ana_s", "+49 151 2345678", "bob@x.org", "4111 1111 1111 1111"):
        assert secret not in masked
    assert '"amount":12.5' in masked and "2026-06-01T10:00:00.000+00:00" in masked


def test_local_key_is_created_once_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.delenv("CRM_HMAC_KEY", raising=False)
    first = hmac_key(tmp_path)
    assert first == hmac_key(tmp_path) and len(first) == 64
    assert (tmp_path / "secrets" / "hmac.key").stat().st_mode & 0o077 == 0
    monkeypatch.setenv("CRM_HMAC_KEY", "from-env")
    assert hmac_key(tmp_path) == b"from-env"


def test_processes_creating_the_key_at_once_all_get_the_same_one(tmp_path, monkeypatch):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    monkeypatch.delenv("CRM_HMAC_KEY", raising=False)
    with ProcessPoolExecutor(6, mp_context=multiprocessing.get_context("spawn")) as pool:
        keys = set(pool.map(hmac_key, [tmp_path] * 24))
    assert keys == {hmac_key(tmp_path)} and list((tmp_path / "secrets").iterdir()) == [tmp_path / "secrets" / "hmac.key"]


@pytest.mark.parametrize(
    "text, kept",
    [
        ("call +44 20 7946 0991 today", "call <phone> today"),
        ("call 020 7946 0991 today", "call <phone> today"),
        ("call me back on +49 151 68263920.", "call me back on <phone>."),  # as many digits as a card
        ("call 0151 12345678 today", "call <phone> today"),
        ("call (415) 555-2671 or 415-555-2671", "call <phone> or <phone>"),
        ("card 4111 1111 1111 1111, exp 12/27", "card <card>, exp 12/27"),
        ("mail A.Person@Example.org now", "mail <email> now"),
        # What is not personal data stays: times, dates, amounts, order ids, versions, addresses.
        ("2026-06-01T10:00:00.000+00:00 order O000123456 paid 129.00 EUR", None),
        ("at 10:05:03 from 83.149.9.216 GET /a?id=1234567 HTTP/1.1 took 250 ms", None),
    ],
)  # fmt: skip
def test_scrub_text_masks_each_kind_and_only_those(spark, text, kept):
    scrubbed = spark.createDataFrame([(text,)], "t string").select(scrub_text(F.col("t"))).first()[0]
    assert scrubbed == (kept if kept is not None else text)


def test_cards_become_a_token_and_their_last_four_digits(spark):
    df = spark.createDataFrame([("4111 1111 1111 1111",), ("4111-1111-1111-1111",), ("4568437014797450",), ("12-34",), (None,)], "c string")
    rows = df.select(*card_token(F.col("c"), b"k")).collect()
    tokens, last4 = [r[0] for r in rows], [r[1] for r in rows]
    assert tokens[0] == tokens[1] != tokens[2] and "1111" not in tokens[0]
    assert last4 == ["1111", "1111", "7450", None, None] and tokens[3:] == [None, None]
