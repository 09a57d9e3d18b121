"""JSON Schemas in schemas/ are the single source of truth for event shapes.

The Spark schema, the list of required fields, each field's CRM data-type class and its
personal-data treatment are all derived from the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pyspark.sql import types as T

from pipelines.config import inside
from pipelines.errors import CrmError

DATA_CLASSES = ("identification", "descriptive", "probe", "transactional", "conversed")
# hmac: replaced by a keyed pseudonym; scrub: free text kept, emails, phones and cards masked;
# card: a payment card number, kept as a keyed token plus its last four digits
PII_TREATMENTS = ("hmac", "scrub", "card")
# x-crm-key: the kind of customer key a field holds, for identity resolution (pipelines.crom.identity)
IDENTITY_KEYS = ("customer", "email", "phone", "cookie", "device", "handle")


def hashed_name(field: str) -> str:
    """The silver column of an identifier replaced by its keyed pseudonym."""
    return f"{field}_hmac"


def card_names(field: str) -> tuple[str, str]:
    """The silver columns of a card number: its token and its last four digits."""
    return f"{field}_token", f"{field}_last4"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    spark_type: T.DataType
    required: bool
    data_class: str
    pii: str | None
    identity: str | None = None  # x-crm-key
    phone_region: str | None = None  # x-crm-phone-region: the field with the country of a national number

    @property
    def stored_as(self) -> tuple[str, ...]:
        """Its columns in silver: personal data replaced whole is stored under other names."""
        if self.pii == "hmac":
            return (hashed_name(self.name),)
        if self.pii == "card":
            return card_names(self.name)
        return (self.name,)


@dataclass(frozen=True)
class EventSchema:
    name: str  # e.g. "web.v1"
    source: str
    version: int
    document: dict
    fields: tuple[FieldSpec, ...]

    @property
    def spark_schema(self) -> T.StructType:
        return T.StructType([T.StructField(f.name, f.spark_type, True) for f in self.fields])

    @property
    def pii_fields(self) -> tuple[str, ...]:
        """Fields whose values are personal data replaced whole (identifiers, card numbers)."""
        return tuple(f.name for f in self.fields if f.pii in ("hmac", "card"))

    def field(self, name: str) -> FieldSpec | None:
        return next((f for f in self.fields if f.name == name), None)

    def stored_columns(self) -> tuple[str, ...]:
        """The silver columns that come from the event's own fields."""
        return tuple(c for f in self.fields for c in f.stored_as)


def _non_null_type(prop: dict, where: str) -> str:
    kind = prop.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind or [])
    kinds = [k for k in kinds if k != "null"]
    if len(kinds) != 1:
        raise CrmError(f"{where}: needs exactly one non-null JSON type, found {kind!r}")
    return kinds[0]


def to_spark_type(prop: dict, where: str) -> T.DataType:
    """Map one JSON Schema property to a Spark type."""
    kind = _non_null_type(prop, where)
    if kind == "string":
        return T.TimestampType() if prop.get("format") == "date-time" else T.StringType()
    if kind == "integer":
        return T.LongType()
    if kind == "number":
        return T.DoubleType()
    if kind == "boolean":
        return T.BooleanType()
    if kind == "array":
        return T.ArrayType(to_spark_type(prop.get("items", {}), f"{where}.items"), True)
    if kind == "object":
        props = prop.get("properties", {})
        return T.StructType(
            [T.StructField(k, to_spark_type(v, f"{where}.{k}"), True) for k, v in props.items()]
        )
    raise CrmError(f"{where}: unsupported JSON type {kind!r}")


def parse_schema(name: str, document: dict, where: str) -> EventSchema:
    props = document.get("properties")
    if document.get("type") != "object" or not isinstance(props, dict):
        raise CrmError(f"{where}: an event schema must be an object with properties")
    required = set(document.get("required", []))
    fields = []
    for key, prop in props.items():
        data_class = prop.get("x-crm-class")
        if data_class not in DATA_CLASSES:
            raise CrmError(f"{where}: properties.{key}: x-crm-class must be one of {DATA_CLASSES}")
        pii = prop.get("x-crm-pii")
        if pii is not None and pii not in PII_TREATMENTS:
            raise CrmError(f"{where}: properties.{key}: x-crm-pii must be one of {PII_TREATMENTS}")
        identity = prop.get("x-crm-key")
        if identity is not None and identity not in IDENTITY_KEYS:
            raise CrmError(f"{where}: properties.{key}: x-crm-key must be one of {IDENTITY_KEYS}")
        if identity not in (None, "customer") and pii != "hmac":
            raise CrmError(f"{where}: properties.{key}: x-crm-key {identity!r} is personal data and needs x-crm-pii: hmac")
        region = prop.get("x-crm-phone-region")
        if region is not None and (identity != "phone" or region not in props):
            raise CrmError(f"{where}: properties.{key}: x-crm-phone-region must name another property, on a phone key")
        spark_type = to_spark_type(prop, f"{where}: properties.{key}")
        fields.append(FieldSpec(key, spark_type, key in required, data_class, pii, identity, region))
    source = props.get("source", {}).get("const")
    version = props.get("schema_version", {}).get("const")
    if not isinstance(source, str) or not isinstance(version, int):
        raise CrmError(f"{where}: properties source and schema_version need a `const`")
    return EventSchema(name, source, version, document, tuple(fields))


@lru_cache(maxsize=None)
def load_schema(schemas_dir: Path, name: str) -> EventSchema:
    """Load schemas/<name>.json, for example name='web.v1'."""
    path = inside(schemas_dir, Path(f"{name}.json"), "schema")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CrmError(f"cannot read schema {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise CrmError(f"{path}: not valid JSON: {exc}") from exc
    return parse_schema(name, document, str(path))
