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

from pyspark.sql import Column
from pyspark.sql import functions as F

_BLOCK = 64  # SHA-256 block size, in bytes

EMAIL_PATTERN = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
# International phone numbers written with a leading '+'; plain digit runs are left to the
# card pattern so that timestamps and amounts are not touched.
PHONE_PATTERN = r"\+[0-9][0-9 ().-]{6,18}[0-9]"
CARD_PATTERN = r"\b(?:[0-9][ -]?){12,18}[0-9]\b"


def hmac_key(cache_dir: Path) -> bytes:
    """The HMAC key: CRM_HMAC_KEY, or a local key created once for embedded runs."""
    from_env = os.environ.get("CRM_HMAC_KEY")
    if from_env:
        return from_env.encode("utf-8")
    path = cache_dir / "secrets" / "hmac.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
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


def normalise_identifier(value: Column) -> Column:
    """Case-fold and trim before hashing, so that 'A@x.com ' and 'a@x.com' get one pseudonym."""
    return F.lower(F.trim(value))


def mask_payload(payload: Column, pii_keys: list[str]) -> Column:
    """Mask the values of declared personal fields, then any email, phone or card in the text.

    Each generic pattern runs only on payloads holding its cheap marker ('@', '+', a digit
    run), because scanning every payload with every regex dominated the bronze write.
    """
    masked = payload
    if pii_keys:
        keys = "|".join(sorted(set(pii_keys)))
        masked = F.regexp_replace(masked, rf'"({keys})"\s*:\s*"(?:[^"\\]|\\.)*"', r'"$1":"<masked>"')
    return scrub_text(masked)


def scrub_text(text: Column) -> Column:
    """Replace every email, phone number and card number in free text by its kind."""
    masked = F.when(text.contains("@"), F.regexp_replace(text, EMAIL_PATTERN, "<email>")).otherwise(text)
    masked = F.when(masked.contains("+"), F.regexp_replace(masked, PHONE_PATTERN, "<phone>")).otherwise(masked)
    return F.regexp_replace(masked, CARD_PATTERN, "<card>")
