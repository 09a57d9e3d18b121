"""Parse raw Kafka records into typed rows, or a quarantine reason. Pure DataFrame transforms.

Each value is parsed once into a VARIANT and its exact type is checked against the JSON
Schema *before* it is cast, because a permissive cast turns "12" into 12 and a wrong type
into a null that looks valid. Valid rows pass one regex over `schema_of_variant`; the
field-by-field checks that name the reason run only for rejected rows. Every record gets
exactly one outcome: typed fields, or a reason code.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipelines.directives import Evolution, Limits
from pipelines.schemas import EventSchema

# Reason codes, in the order they are checked; the first that applies wins.
EMPTY_VALUE = "empty_value"
OVERSIZED = "oversized"
INVALID_ENCODING = "invalid_encoding"
MISSING_KEY = "missing_key"
NESTING_TOO_DEEP = "nesting_too_deep"
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_a_json_object"
UNKNOWN_SOURCE = "unknown_source"
SOURCE_TOPIC_MISMATCH = "source_topic_mismatch"
UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EXTRA_FIELD = "extra_field"
EVENT_TIME_IN_FUTURE = "event_time_in_future"  # further ahead of the Kafka timestamp than the source allows
UNKNOWN_TOPIC = "unknown_topic"
EXPECTATION_FAILED = "expectation_failed"  # set later, by the directive's quarantine rules

MAX_DEPTH = 1000  # JSON parsers refuse deeper nesting; deeper values get their own reason

# Integers are 64-bit: a variant holds larger ones as DECIMAL(19+,0), which do not match.
_INTEGER = r"^(BIGINT|INT|SMALLINT|TINYINT)$"
# Spark casts "10:00:00" or "2026-06-01" to a timestamp (the first with today's date), so
# date-time strings must match RFC 3339 before they are cast.
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"
_NUMBER = r"^(BIGINT|INT|SMALLINT|TINYINT|DECIMAL\(\d+,\d+\)|DOUBLE|FLOAT)$"


def _json_kinds(prop: dict) -> tuple[str, bool]:
    kind = prop.get("type")
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return next(k for k in kinds if k != "null"), "null" in kinds


def _type_ok(value: Column, prop: dict) -> Column:
    """True when a present, non-null variant has the JSON type `prop` declares (recursively)."""
    kind, _ = _json_kinds(prop)
    vtype = F.schema_of_variant(value)
    if kind == "string":
        ok = vtype == F.lit("STRING")
        if prop.get("format") == "date-time":
            text = F.try_variant_get(value, "$", "string")
            ok = ok & text.rlike(RFC3339) & F.try_variant_get(value, "$", "timestamp").isNotNull()
        return ok
    if kind == "integer":
        return vtype.rlike(_INTEGER)
    if kind == "number":
        return vtype.rlike(_NUMBER)
    if kind == "boolean":
        return vtype == F.lit("BOOLEAN")
    if kind == "array":
        items = prop.get("items", {})
        elements = F.try_variant_get(value, "$", "array<variant>")
        return elements.isNotNull() & F.forall(elements, lambda x: _present_ok(x, items, required=True))
    if kind == "object":
        return _object_ok(value, prop)
    raise ValueError(f"unsupported JSON type {kind!r}")


def _present_ok(value: Column, prop: dict, required: bool) -> Column:
    """Presence, nullability and type of one (possibly nested) value."""
    _, nullable = _json_kinds(prop)
    missing = value.isNull()
    json_null = F.coalesce(F.is_variant_null(value), F.lit(False))
    return (
        F.when(missing, F.lit(not required))
        .when(json_null, F.lit(nullable))
        .otherwise(F.coalesce(_type_ok(value, prop), F.lit(False)))
    )


def _object_ok(value: Column, prop: dict) -> Column:
    props = prop.get("properties", {})
    required = set(prop.get("required", []))
    fields = F.try_variant_get(value, "$", "map<string,variant>")
    ok = fields.isNotNull()
    if prop.get("additionalProperties") is False:
        ok = ok & (F.size(F.array_except(F.map_keys(fields), F.array(*map(F.lit, props)))) == 0)
    for name, sub in props.items():
        ok = ok & _present_ok(F.variant_get(value, f"$.{name}", "variant"), sub, name in required)
    return ok


def _field_checks(schema: EventSchema) -> list[tuple[Column, str, str]]:
    """(failed, reason code, detail) for each top-level field, in schema order."""
    doc = schema.document
    required = set(doc.get("required", []))
    checks = []
    for name, prop in doc["properties"].items():
        if name in ("source", "schema_version"):
            continue  # checked first, with reason codes of their own
        value = F.variant_get(F.col("_v"), f"$.{name}", "variant")
        if name in required:
            checks.append((value.isNull(), MISSING_FIELD, name))
        checks.append((~_present_ok(value, prop, name in required), WRONG_TYPE, name))
    return checks


def _extra_fields(schema: EventSchema) -> Column:
    keys = F.map_keys(F.try_variant_get(F.col("_v"), "$", "map<string,variant>"))
    return F.array_sort(F.array_except(keys, F.array(*map(F.lit, schema.document["properties"]))))


def _version_known(schema: EventSchema, evolution: Evolution) -> Column:
    version = F.variant_get(F.col("_v"), "$.schema_version", "variant")
    number = F.try_variant_get(version, "$", "bigint")
    known = (number >= F.lit(schema.version)) if evolution.newer_versions == "accept" else (number == F.lit(schema.version))
    return F.coalesce(F.schema_of_variant(version).rlike(_INTEGER), F.lit(False)) & F.coalesce(known, F.lit(False))


def _too_deep(value: Column) -> Column:
    """At least MAX_DEPTH brackets opened in a row, once strings and scalars are removed.

    Nesting bombs open brackets from the start; this avoids a recursive regex.
    """
    head = F.regexp_replace(F.substring(value, 1, 64 * MAX_DEPTH), r'"(?:[^"\\]|\\.)*"', "")
    brackets = F.regexp_replace(head, r"[^\[\]{}]", "")
    runs = F.regexp_extract_all(brackets, F.lit(r"([\[{]+)"), 1)
    return F.coalesce(F.array_max(F.transform(runs, F.length)), F.lit(0)) >= MAX_DEPTH


def _reason(schema: EventSchema, known_sources: list[str], evolution: Evolution) -> tuple[Column, Column]:
    """The first failing check as (reason code, detail); both null for a valid record."""
    source = F.try_variant_get(F.col("_v"), "$.source", "string")
    extra = _extra_fields(schema)
    checks: list[tuple[Column, str, Column | str | None]] = [
        (F.col("_v").isNull() & _too_deep(F.col("value")), NESTING_TOO_DEEP, f"more than {MAX_DEPTH} levels"),
        (F.col("_v").isNull(), MALFORMED_JSON, None),
        (~F.schema_of_variant(F.col("_v")).startswith("OBJECT"), NOT_AN_OBJECT, None),
        (source.isNull() | ~source.isin(known_sources), UNKNOWN_SOURCE, None),
        (source != F.lit(schema.source), SOURCE_TOPIC_MISMATCH, F.concat(F.lit("source="), source)),
        (
            ~_version_known(schema, evolution),
            UNKNOWN_SCHEMA_VERSION,
            F.concat(F.lit("schema_version="), F.to_json(F.variant_get(F.col("_v"), "$.schema_version", "variant"))),
        ),
        *_field_checks(schema),
    ]
    if evolution.extra_fields == "quarantine":
        checks.append((F.size(extra) > 0, EXTRA_FIELD, F.array_join(extra, ",")))
    return _first(checks, F.lit(None).cast("string"), F.lit(None).cast("string"))


def _variant_type_regex(prop: dict) -> str:
    """A regex for `schema_of_variant` of a value that has exactly the declared shape.

    Object keys come out sorted; each field is followed by ', ' or the closing '>'.
    Array elements are merged into one type, so per-element checks follow extraction.
    """
    kind, nullable = _json_kinds(prop)
    if kind == "string":
        pattern = "STRING"
    elif kind == "integer":
        pattern = _INTEGER[1:-1]
    elif kind == "number":
        pattern = _NUMBER[1:-1]
    elif kind == "boolean":
        pattern = "BOOLEAN"
    elif kind == "array":
        pattern = f"ARRAY<(?:{_variant_type_regex(prop.get('items', {}))}|VOID)>"
    elif kind == "object":
        required = set(prop.get("required", []))
        parts = []
        for name in sorted(prop.get("properties", {})):
            item = f"{name}: {_variant_type_regex(prop['properties'][name])}(?:, |(?=>))"
            parts.append(f"(?:{item})" if name in required else f"(?:{item})?")
        pattern = "OBJECT<" + "".join(parts) + ">"
    else:
        raise ValueError(f"unsupported JSON type {kind!r}")
    return f"(?:{pattern}|VOID)" if nullable else f"(?:{pattern})"


def _non_null_ok(value: Column, prop: dict) -> Column:
    """After extraction, non-nullable values must not be null: a null means the cast failed."""
    kind, nullable = _json_kinds(prop)
    ok = F.lit(True) if nullable else value.isNotNull()
    if kind == "object":
        for name, sub in prop.get("properties", {}).items():
            ok = ok & F.coalesce(_non_null_ok(value[name], sub), F.lit(nullable))
    elif kind == "array" and _json_kinds(prop.get("items", {}))[0] == "object":
        # Element types are merged in schema_of_variant, so a key missing from one element
        # shows only as a null here. Field projection and array_compact avoid a lambda.
        for name, sub in prop["items"].get("properties", {}).items():
            if not _json_kinds(sub)[1]:
                ok = ok & F.coalesce(F.size(F.array_compact(value[name])) == F.size(value), F.lit(nullable))
    return ok


def _valid(schema: EventSchema, typed: Column) -> Column:
    """The fast check: one regex over the variant's type, then null checks after extraction."""
    document = schema.document
    times = F.lit(True)
    for name, prop in document["properties"].items():
        if prop.get("format") == "date-time":
            text = F.try_variant_get(F.col("_v"), f"$.{name}", "string")
            times = times & (text.rlike(RFC3339) if not _json_kinds(prop)[1] else F.coalesce(text.rlike(RFC3339), F.lit(True)))
    return F.coalesce(
        times
        & F.col("_v").isNotNull()
        & F.schema_of_variant(F.col("_v")).rlike(f"^{_variant_type_regex(document)}$")
        & (typed["source"] == F.lit(schema.source))
        & (typed["schema_version"] == F.lit(schema.version))
        & _non_null_ok(typed, document),
        F.lit(False),
    )


def _single_json_value(value: Column) -> Column:
    """The JSON value of the text, or null; null also when text follows the first value.

    try_parse_json stops after the first value, so '{..}\\n{..}' would silently keep one
    record. Parsing the text as the only element of an array catches that in one pass.
    """
    wrapped = F.try_parse_json(F.concat(F.lit("["), value, F.lit("]")))
    single = F.try_variant_get(wrapped, "$[1]", "variant").isNull()
    # '{..}]junk' still parses as '[{..}]'; inside an object wrapper a ']' cannot close it.
    # Only text holding a ']' needs that second parse.
    closed = ~value.contains("]") | F.try_parse_json(F.concat(F.lit('{"v":'), value, F.lit("}"))).isNotNull()
    return F.when(single & closed, F.try_variant_get(wrapped, "$[0]", "variant"))


def _pre_checks(columns: tuple[str, ...], limits: Limits) -> list[tuple[Column, str, Column | str | None]]:
    """Checks on the raw bytes, before any parsing; the first that fails wins."""
    value = F.col("value")
    checks: list[tuple[Column, str, Column | str | None]] = [
        (value.isNull() | (F.length(value) == 0), EMPTY_VALUE, None),
        (F.col("payload_bytes") > limits.max_record_bytes, OVERSIZED, F.concat(F.col("payload_bytes").cast("string"), F.lit(" bytes"))),
    ]
    if "value_utf8" in columns:
        checks.append((~F.col("value_utf8"), INVALID_ENCODING, "invalid UTF-8"))
    checks.append((F.instr(value, "\u0000") > 0, INVALID_ENCODING, "NUL byte"))
    if limits.require_key and "key" in columns:
        checks.append((F.col("key").isNull() | (F.length("key") == 0), MISSING_KEY, None))
    return checks


def _first(checks: list[tuple[Column, str, Column | str | None]], code: Column, detail: Column) -> tuple[Column, Column]:
    """(reason, detail) of the first check that fails, else (`code`, `detail`).

    One CASE with a branch per check, not a CASE nested per check: the optimizer pushes a
    test such as `IS NULL` into nested CASEs one level per pass, and 25 passes over the
    parse plan cost every batch half a second.
    """
    if not checks:
        return code, detail
    codes, details = None, None
    for failed, reason, info in checks:
        info_col = (F.lit(info) if isinstance(info, str) or info is None else info).cast("string")
        codes = F.when(failed, F.lit(reason)) if codes is None else codes.when(failed, F.lit(reason))
        details = F.when(failed, info_col) if details is None else details.when(failed, info_col)
    return codes.otherwise(code), details.otherwise(detail)


class Parser:
    """The parse of several topics as Column expressions, built once, applied to each batch.

    Building the expressions takes some 20k calls into the JVM (seconds), and Columns are
    unresolved until applied, so a streaming job builds them once. `columns` are the raw
    frame's columns: `value` (string), `kafka_topic`, and optionally `payload_bytes`, `key`,
    `value_utf8` (whether the bytes were valid UTF-8) and `kafka_timestamp`. With
    `kafka_timestamp` and `future_skew_hours` (per source), an event whose `time_column` is
    further ahead of its Kafka timestamp is rejected as event_time_in_future, so a broken
    clock or a hostile record never reaches silver or moves a watermark.
    """

    def __init__(
        self,
        by_topic: dict[str, EventSchema],
        known_sources: list[str] | None = None,
        limits: Limits | None = None,
        evolution: dict[str, Evolution] | None = None,
        columns: tuple[str, ...] = ("value", "kafka_topic"),
        future_skew_hours: dict[str, float] | None = None,
        time_column: str = "event_time",
    ):
        limits = limits or Limits()
        evolution = evolution or {}
        known = known_sources or sorted(schema.source for schema in by_topic.values())
        topic = F.col("kafka_topic")
        pre_code, pre_detail = _first(_pre_checks(columns, limits), F.lit(None).cast("string"), F.lit(None).cast("string"))
        ok = F.lit(False)
        code = F.lit(UNKNOWN_TOPIC)  # unreachable while the query subscribes to directive topics only
        detail = F.lit(None).cast("string")
        drift = F.lit(None).cast("string")
        future, future_detail = F.lit(False), F.lit(None).cast("string")
        for t, schema in by_topic.items():
            this = topic == t
            policy = evolution.get(schema.source, Evolution())
            schema_code, schema_detail = _reason(schema, known, policy)
            fast = _valid(schema, F.col(f"_t_{schema.source}"))
            lenient = policy.extra_fields == "accept" or policy.newer_versions == "accept"
            # A drift the policy accepts fails the exact fast check; the named checks then decide.
            this_ok = (fast | (F.col("_v").isNotNull() & schema_code.isNull())) if lenient else fast
            ok = F.when(this, this_ok).otherwise(ok)
            code = F.when(this, F.coalesce(schema_code, F.lit(WRONG_TYPE))).otherwise(code)
            detail = F.when(this, schema_detail).otherwise(detail)
            if lenient:
                drift = F.when(this & ~fast, _drift(schema)).otherwise(drift)
            skew = (future_skew_hours or {}).get(schema.source)
            if skew is not None and "kafka_timestamp" in columns:
                ahead = F.unix_micros(F.col(f"_t_{schema.source}")[time_column]) - F.unix_micros(F.col("kafka_timestamp"))
                future = F.when(this, F.coalesce(ahead > F.lit(int(skew * 3_600_000_000)), F.lit(False))).otherwise(future)
                future_detail = F.when(this, F.lit(f"{time_column} more than {skew:g} h after the Kafka timestamp")).otherwise(future_detail)
        # One withColumns per dependency level: each call analyses the whole plan again.
        self.steps = [
            {"_pre_code": pre_code, "_pre_detail": pre_detail},
            {"_v": F.when(F.col("_pre_code").isNull(), _single_json_value(F.col("value")))},
            {
                f"_t_{schema.source}": F.when(topic == t, F.try_variant_get(F.col("_v"), "$", schema.spark_schema.simpleString()))
                for t, schema in by_topic.items()
            },
            {"_ok": F.col("_pre_code").isNull() & ok & ~future, "_future": F.col("_pre_code").isNull() & ok & future},
            {
                "reason_code": F.when(~F.col("_ok"), F.coalesce(F.col("_pre_code"), F.when(F.col("_future"), F.lit(EVENT_TIME_IN_FUTURE)), code)),
                "reason_detail": F.when(~F.col("_ok"), F.when(F.col("_pre_code").isNotNull(), F.col("_pre_detail"))
                                        .when(F.col("_future"), future_detail)
                                        .otherwise(detail)),  # fmt: skip
                "drift": F.when(F.col("_ok"), drift),
            },
        ]
        self.typed = [F.when(F.col("_ok"), F.col(f"_t_{s.source}")).alias(s.source) for s in by_topic.values()]

    def __call__(self, raw: DataFrame) -> DataFrame:
        """Adds `reason_code` and `reason_detail` (null for valid rows), `drift` (schema drift
        the evolution policy accepted, else null) and one struct column per source, named
        after it, holding the typed event for valid rows of that source's topic."""
        parsed = raw if "payload_bytes" in raw.columns else raw.withColumn("payload_bytes", F.length(F.encode(F.col("value"), "UTF-8")))
        columns = parsed.columns
        for step in self.steps:
            parsed = parsed.withColumns(step)
        return parsed.select(*columns, "reason_code", "reason_detail", "drift", *self.typed)


def parse_all(
    raw: DataFrame,
    by_topic: dict[str, EventSchema],
    known_sources: list[str] | None = None,
    limits: Limits | None = None,
    evolution: dict[str, Evolution] | None = None,
) -> DataFrame:
    """Parse records of several topics in one pass (see Parser); the per-field checks that
    name a reason run only for rejected rows."""
    return Parser(by_topic, known_sources, limits, evolution, tuple(raw.columns))(raw)


def _drift(schema: EventSchema) -> Column:
    """What an accepted record has that the registered schema lacks, e.g. 'extra_fields=a,b'."""
    extra = _extra_fields(schema)
    version = F.try_variant_get(F.col("_v"), "$.schema_version", "bigint")
    parts = F.array_compact(
        F.array(
            F.when(F.size(extra) > 0, F.concat(F.lit("extra_fields="), F.array_join(extra, ","))),
            F.when(version != F.lit(schema.version), F.concat(F.lit("schema_version="), version.cast("string"))),
        )
    )
    return F.when(F.size(parts) > 0, F.array_join(parts, ";"))


def parse_events(
    raw: DataFrame,
    schema: EventSchema,
    known_sources: list[str] | None = None,
    limits: Limits | None = None,
    evolution: Evolution | None = None,
) -> DataFrame:
    """Parse one source's records: `reason_code`, `reason_detail`, `drift` and one column per field.

    `raw` needs a string column `value`; every row is taken to come from the source's topic.
    """
    topic = f"topic.{schema.source}"
    tagged = raw.withColumn("kafka_topic", F.lit(topic))
    policies = {schema.source: evolution} if evolution else None
    parsed = parse_all(tagged, {topic: schema}, known_sources, limits, policies)
    return parsed.select(*raw.columns, "reason_code", "reason_detail", "drift", f"{schema.source}.*")
