"""Personal data: keyed HMAC pseudonyms and masking of raw payloads, as Column functions.

Hashing an email is only pseudonymisation, so identifiers are HMAC-SHA256'd with a key from
the environment (CRM_HMAC_KEY). Without it, a local key is generated once under the cache
folder so embedded runs stay repeatable; it never enters a table, log or the repository.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import pandas as pd
import phonenumbers
from pyspark.sql import Column
from pyspark.sql import functions as F
from pyspark.sql import types as T

_BLOCK = 64  # SHA-256 block size, in bytes

EMAIL_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
# Phone numbers: international ('+' and the country code), national with a trunk '0'
# ('020 7946 0991'), and North American ('(415) 555-2671'). Runs of digits that are none of
# these are left to the card pattern, so that timestamps, amounts and ids are not touched.
# The leading lookahead lets every other character fail in one test instead of three (about
# a third less time on a batch of payloads).
PHONE_PATTERN = (
    r"(?=[+(0-9])(?:"
    r"\+[0-9][0-9 ().-]{6,18}[0-9]"
    r"|\b0[0-9]{2,4}[ -]?[0-9]{3,4}[ -]?[0-9]{3,5}\b"
    r"|(?:\([2-9][0-9]{2}\)|\b[2-9][0-9]{2})[ .-]?[0-9]{3}[ .-][0-9]{4}\b)"
)
CARD_PATTERN = r"(?<!\+)\b(?:[0-9][ -]?){12,18}[0-9]\b"  # no '+': that is an international phone's


def hmac_key(cache_dir: Path) -> bytes:
    """The HMAC key: CRM_HMAC_KEY, or a local key created once for embedded runs."""
    from_env = os.environ.get("CRM_HMAC_KEY")
    if from_env:
        return from_env.encode("utf-8")
    path = cache_dir / "secrets" / "hmac.key"
    if not path.exists():
        # Written whole under a name of its own, then linked into place: processes starting at
        # once all read the one key that was linked first, never a half-written file.
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".hmac.key.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass  # another process's key won
        finally:
            draft.unlink()
    return path.read_text().strip().encode("utf-8")


def hmac_sha256(value: Column, key: bytes) -> Column:
    """HMAC-SHA256 (RFC 2104) of a string column, as lowercase hex, from built-in functions only."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner_pad = F.lit(bytes(b ^ 0x36 for b in key))
    outer_pad = F.lit(bytes(b ^ 0x5C for b in key))
    inner = F.unhex(F.sha2(F.concat(inner_pad, F.encode(value, "UTF-8")), 256))
    return F.sha2(F.concat(outer_pad, inner), 256)


def customer_pseudonym(customer_id: Column, key: bytes) -> Column:
    """The customer id's keyed pseudonym: what leaves the lakehouse (Kafka topics) in its
    place; crom/identity_map (key type `customer`) maps it back."""
    return hmac_sha256(customer_id, key)


def normalise_identifier(value: Column) -> Column:
    """Case-fold and trim before hashing, so that 'A@x.com ' and 'a@x.com' get one pseudonym."""
    return F.lower(F.trim(value))


def phone_key(number: str | None, region: str | None = None) -> str | None:
    """A phone number in E.164 ('+491511234567'), whichever way it was written; national
    numbers need the ISO country `region`. A number phonenumbers cannot read keeps its digits
    only, so the same unreadable number still gets one pseudonym."""
    if number is None or not number.strip():
        return None
    try:
        parsed = phonenumbers.parse(number, (region or "").upper() or None)
        if phonenumbers.is_possible_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    except phonenumbers.NumberParseException:
        pass
    return "".join(ch for ch in number if ch.isdigit()) or None


@F.pandas_udf(T.StringType())
def _phone_keys(numbers: pd.Series, regions: pd.Series) -> pd.Series:
    seen: dict[tuple, str | None] = {}  # a customer's number repeats across their orders
    return pd.Series([seen.get(k) if k in seen else seen.setdefault(k, phone_key(*k)) for k in zip(numbers, regions)], dtype=object)


def normalise_phone(number: Column, region: Column | None = None) -> Column:
    """`phone_key` as a column, before hashing: '+49 151 1234567' and '0151 1234567' (DE) get one pseudonym."""
    return _phone_keys(number, region if region is not None else F.lit(None).cast("string"))


def card_token(number: Column, key: bytes) -> tuple[Column, Column]:
    """(token, last four digits) of a payment card number, written with or without spaces or
    dashes. The token is the keyed HMAC of the digits, so one card gets one token and can be
    counted or joined, never read back; anything with fewer than 12 digits is no card number
    and gets neither."""
    digits = F.regexp_replace(number, r"[^0-9]", "")
    is_card = F.length(digits) >= 12
    return F.when(is_card, hmac_sha256(digits, key)), F.when(is_card, F.substring(digits, -4, 4))


def mask_payload(payload: Column, pii_keys: list[str]) -> Column:
    """Mask the values of declared personal fields, then any email, phone or card in the text.

    The email pattern runs only on payloads holding an '@', because scanning every payload
    with it dominated the bronze write.
    """
    masked = payload
    if pii_keys:
        keys = "|".join(sorted(set(pii_keys)))
        masked = F.regexp_replace(masked, rf'"({keys})"\s*:\s*"(?:[^"\\]|\\.)*"', r'"$1":"<masked>"')
    return scrub_text(masked)


def scrub_text(text: Column) -> Column:
    """Replace every email, phone number and card number in free text by its kind."""
    masked = F.when(text.contains("@"), F.regexp_replace(text, EMAIL_PATTERN, "<email>")).otherwise(text)
    masked = F.regexp_replace(masked, CARD_PATTERN, "<card>")  # first: a card's digit groups can look like a phone's
    return F.regexp_replace(masked, PHONE_PATTERN, "<phone>")
