"""Directives: strategic -> functional -> operational YAML, read into typed models.

Each lower directive names the higher one it serves. `load_directives` reads the whole tree
with `yaml.safe_load`, refuses unknown keys, dangling references and orphans, and names the
file and key of every problem before any job starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pyspark.sql import types as T

from pipelines import config
from pipelines.derived_fields import LIFECYCLE_FIELDS, ORDER_FIELDS, TEMPLATE_FIELDS, TEXT_FIELDS, WEB_FIELDS
from pipelines.errors import CrmError, describe_validation_error
from pipelines.line_layout import LineLayout
from pipelines.rates import read_rates
from pipelines.schemas import DATA_CLASSES, EventSchema, load_schema

_NAME = r"^[a-z][a-z0-9_]*$"
_ID = r"^(strategic|functional|operational)\.[a-z][a-z0-9_]*$"

DataClass = Literal[DATA_CLASSES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- strategic ---------------------------------------------------------------------------


class Target(_Strict):
    op: Literal[">=", "<="]
    value: float

    def met_by(self, value: float | None) -> bool:
        if value is None:
            return False
        return value >= self.value if self.op == ">=" else value <= self.value


class Kpi(_Strict):
    name: str = Field(pattern=_NAME)
    strategic_variable: Literal["customer_lifetime_value", "loyalty", "advocacy", "churn", "satisfaction"]
    description: str
    expression: str = Field(description="Spark SQL aggregate over the functional parameters in `uses`.")
    uses: list[str] = Field(min_length=1)
    unit: str = ""
    target: Target


# Per-customer columns the purchase model adds; KPIs may use them like parameters.
MODEL_OUTPUTS = ("p_alive", "expected_purchases", "expected_spend", "clv")
_PURCHASES = ("frequency", "recency", "age")
OUTPUT_ROLES = {"p_alive": _PURCHASES, "expected_purchases": _PURCHASES, "expected_spend": ("frequency", "monetary"),
                "clv": (*_PURCHASES, "monetary")}  # fmt: skip


class Holdout(_Strict):
    purchases: str = Field(description="An active_days parameter with holdout_days: the purchase days after as_of.")
    units: float = Field(gt=0, description="The holdout's length in time units.")


class PurchaseModel(_Strict):
    """BG/NBD for the number of purchases and Gamma-Gamma for their value, fitted on the
    functional parameters it names (see pipelines.crsm.clv)."""

    frequency: str = Field(description="A repeat_days parameter: purchase days after the first.")
    recency: str = Field(description="A first_to_last_days parameter.")
    age: str = Field(description="A tenure_days parameter: days from the first purchase to as_of.")
    monetary: str = Field(description="A repeat_avg parameter: the mean value of a repeat purchase day.")
    time_unit_days: int = Field(default=7, ge=1, description="The model's time unit; 7 fits weekly buying.")
    horizon_units: float = Field(default=52, gt=0, description="How far ahead lifetime value counts, in time units.")
    periods: int = Field(default=12, ge=1, le=520, description="The horizon is discounted in this many equal periods.")
    margin: float = Field(default=1.0, gt=0, le=1, description="The share of spend that is profit.")
    annual_discount_rate: float = Field(default=0.0, ge=0, lt=1)
    holdout: Holdout | None = None

    def parameters(self) -> dict[str, str]:
        """Role -> the functional parameter named for it (MODEL_MEASURES gives the measure each needs)."""
        named = {"frequency": self.frequency, "recency": self.recency, "age": self.age, "monetary": self.monetary}
        if self.holdout:
            named["holdout.purchases"] = self.holdout.purchases
        return named


MODEL_MEASURES = {
    "frequency": "repeat_days",
    "recency": "first_to_last_days",
    "age": "tenure_days",
    "monetary": "repeat_avg",
    "holdout.purchases": "active_days",
}


class Windows(_Strict):
    count: int = Field(default=4, ge=2, le=24, description="as_of and the count - 1 earlier windows.")
    step_days: int = Field(default=30, ge=1)


class Validity(_Strict):
    """How each KPI is re-measured under the five V's, and when its insight counts as valid.

    A check's deviation is how far the KPI moves, relative to max(|KPI|, floor): below
    `resolved_below` the insight is resolved, above `unresolved_above` unresolved, else sensitive.
    """

    volume_fractions: list[float] = Field(default=[0.1, 0.25, 0.5, 0.75, 1.0], min_length=2,
                                          description="V1: nested random shares of the customers.")  # fmt: skip
    converged_from: float = Field(default=0.5, gt=0, le=1, description="V1 judges the subsamples of at least this share.")
    windows: Windows = Windows()  # V2: the parameters as of successively earlier days
    bootstrap_samples: int = Field(default=20, ge=5, le=500, description="V4: Poisson bootstrap replicates of the customers.")
    resolved_below: float = Field(default=0.05, gt=0)
    unresolved_above: float = Field(default=0.20, gt=0)
    floor: float = Field(default=0.01, gt=0, description="Deviations of KPIs near zero are taken relative to this.")

    @field_validator("volume_fractions")
    @classmethod
    def _fractions(cls, fractions: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in fractions) or sorted(set(fractions)) != fractions or fractions[-1] != 1:
            raise ValueError("must grow strictly, each in (0, 1], and end at 1")
        return fractions

    @model_validator(mode="after")
    def _ordered(self):
        if self.resolved_below >= self.unresolved_above:
            raise ValueError("resolved_below must be below unresolved_above")
        return self

    def verdict(self, deviation: float | None) -> str:
        if deviation is None or deviation > self.unresolved_above:
            return "unresolved"
        return "resolved" if deviation < self.resolved_below else "sensitive"


class RecommendationRule(_Strict):
    name: str = Field(pattern=_NAME)
    description: str
    when: str = Field(description="Spark SQL condition over the parameters (and model outputs) in `uses`.")
    priority: str = Field(description="Spark SQL expression; customers with a higher one come first.")
    uses: list[str] = Field(min_length=1)


class Recommendations(_Strict):
    """Actions for the operational CRM, published to a Kafka topic and a Delta table."""

    topic: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=1, ge=1)
    retention_hours: int = Field(default=720, ge=1)
    rules: list[RecommendationRule] = Field(min_length=1)


class StrategicDirective(_Strict):
    id: str = Field(pattern=_ID)
    version: int = Field(ge=1)
    description: str
    recommendations: Recommendations | None = None
    validity: Validity | None = Field(default=None, description="Re-measure each KPI under V1-V5 (volume, velocity, variety, variability, veracity).")
    purchase_model: PurchaseModel | None = Field(default=None, description=f"Adds {', '.join(MODEL_OUTPUTS)} per customer.")
    kpis: list[Kpi] = Field(min_length=1)


# --- functional --------------------------------------------------------------------------


ROW_MEASURES = ("count", "sum", "avg", "median", "count_distinct", "last", "recency_days", "ratio")
# Measured on purchase days (a customer's events of one day are one purchase), as BG/NBD counts.
DAY_MEASURES = ("active_days", "repeat_days", "repeat_avg", "first_to_last_days", "tenure_days")


CUSTOMER = "customer_id"  # the functional grain CRSM reads, and the key attribution joins on


class Attribution(_Strict):
    """Last-touch attribution, by day: an event takes the breakdown's grain (e.g. the campaign)
    from the same customer's newest event of `source` that has one, on the event's day or the
    `within_days` days before; events without such a touch are not counted. Breakdowns only."""

    source: str = Field(description="The source whose events carry the breakdown's grain, e.g. web for campaigns.")
    within_days: int = Field(default=7, ge=0, le=366)


class Parameter(_Strict):
    name: str = Field(pattern=_NAME)
    data_class: DataClass = Field(alias="class")
    description: str = ""
    source: str = Field(description="An operational source; its silver table is read.")
    measure: Literal[ROW_MEASURES + DAY_MEASURES]  # type: ignore[valid-type]
    column: str | None = None
    filter: str | None = None
    of: str | None = Field(default=None, description="A ratio's denominator: the events it is a share of (all, by default).")
    window_days: int | None = Field(default=None, ge=1, description="Only the N days up to as_of.")
    holdout_days: int | None = Field(default=None, ge=1, description="Only the N days after as_of: a holdout to check predictions.")
    attributed_by: Attribution | None = Field(default=None, description="In a breakdown: the grain of events that do not carry it.")
    latest_per: str | None = Field(
        default=None, description="A count of items (e.g. ticket_id) whose newest event in scope the filter keeps, e.g. tickets still open."
    )

    @model_validator(mode="after")
    def _one_period(self):
        if self.window_days and self.holdout_days:
            raise ValueError("window_days and holdout_days exclude each other")
        return self

    @model_validator(mode="after")
    def _ratio(self):
        """A ratio is the share of the events `of` keeps that `filter` also keeps: no column."""
        if self.measure == "ratio" and (self.filter is None or self.column is not None):
            raise ValueError("a ratio needs a filter (the events it counts) and no column")
        if self.of is not None and self.measure != "ratio":
            raise ValueError("only a ratio has `of`")
        return self

    @model_validator(mode="after")
    def _latest_per(self):
        if self.latest_per is not None and (self.measure != "count" or self.column is not None):
            raise ValueError("latest_per counts items: it needs measure count and no column")
        return self


class RfmScores(_Strict):
    """Recency, frequency and monetary scores from 1 to `bins` (quantiles; higher is better)."""

    recency: str = Field(description="A parameter where fewer days is better, e.g. a recency_days one.")
    frequency: str
    monetary: str
    bins: int = Field(default=5, ge=2, le=10)


class Clustering(_Strict):
    """k-means (Spark MLlib) on the standardised parameters named in `features`."""

    features: list[str] = Field(min_length=2)
    k: int = Field(default=4, ge=2, le=50)
    seed: int = 42


class Score(_Strict):
    """A per-customer score: a SQL expression over the parameters, and r_score, f_score and
    m_score when `rfm` is set (e.g. a lead score for customers who never bought)."""

    name: str = Field(pattern=_NAME)
    description: str = ""
    expression: str


class Refit(_Strict):
    """When CRFM fits the segmentation again (RFM edges, k-means); between fits it scores new
    and changed customers with the saved fit."""

    every_days: int = Field(default=7, ge=1, description="Days of as_of after which the fit is due again.")
    drift: float = Field(default=0.25, gt=0, description="A fit is also due when a parameter's mean moved more than this many of its standard deviations at the fit.")


class Segmentation(_Strict):
    rfm: RfmScores | None = None
    clustering: Clustering | None = None
    refit: Refit = Refit()
    scores: list[Score] = Field(default=[], description="Analysed against the parameters by `crm directives check` and when CRFM starts.")

    def parameters(self) -> list[str]:
        named = [self.rfm.recency, self.rfm.frequency, self.rfm.monetary] if self.rfm else []
        return named + (self.clustering.features if self.clustering else [])


class Breakdown(_Strict):
    """Parameters per another grain than the customer, e.g. per campaign, channel or complaint
    reason, in `<table>_<name>`; measured like the customer's, with the same as_of."""

    name: str = Field(pattern=r"^by_[a-z0-9_]+$")
    description: str
    grain: str = Field(pattern=_NAME, description="A column of every source its parameters read, e.g. campaign_name.")
    parameters: list[Parameter] = Field(min_length=1)
    scores: list[Score] = Field(default=[], description="SQL over the breakdown's parameters, e.g. a lead score per visitor.")


class FunctionalDirective(_Strict):
    id: str = Field(pattern=_ID)
    version: int = Field(ge=1)
    serves: str | None = None
    description: str
    grain: Literal["customer_id"] = Field(default=CUSTOMER, description="CRSM reads one row per customer; see breakdowns.")
    as_of: date | None = Field(default=None, description="The last day counted (e.g. a calibration end); default: the newest event's.")
    include_untrusted: bool = Field(default=False, description="Read events from producers no source trusts.")
    parameters: list[Parameter] = Field(min_length=1)
    segmentation: Segmentation | None = Field(default=None, description="RFM segments and clusters, in <table>_segments.")
    breakdowns: list[Breakdown] = Field(default=[], description="Parameters per other grains, each in <table>_<name>.")

    def measuring(self, breakdown: Breakdown) -> "FunctionalDirective":
        """This directive as it measures a breakdown: the breakdown's grain and parameters, with
        the same as_of and trust choice (a copy; the grain is checked when the directives load)."""
        scores = Segmentation(scores=breakdown.scores) if breakdown.scores else None
        update = {"grain": breakdown.grain, "parameters": breakdown.parameters, "segmentation": scores, "breakdowns": []}
        return self.model_copy(update=update)


# --- operational -------------------------------------------------------------------------


Action = Literal["warn", "quarantine", "fail"]
TrustLevel = Literal["high", "medium", "low"]
UNTRUSTED = "untrusted"  # the trust level of producers a source does not list

# Columns the validator derives for every event, usable in expectations besides the schema's.
DERIVED_COLUMNS = ("event_lag_seconds",)
COLUMN_KWARGS = ("column", "column_A", "column_B")


class Expectation(_Strict):
    name: str = Field(pattern=_NAME)
    type: str = Field(pattern=r"^expect_[a-z_]+$", description="A Great Expectations expectation type.")
    kwargs: dict = {}
    action: Action = Field(description="warn: keep and flag; quarantine: route failing rows; fail: stop the job.")
    protects: list[str] = Field(min_length=1, description="Functional parameters this rule protects.")

    def columns(self) -> list[str]:
        named = [self.kwargs[k] for k in COLUMN_KWARGS if isinstance(self.kwargs.get(k), str)]
        return named + [c for c in self.kwargs.get("column_list", []) if isinstance(c, str)]


class ExpectationDefaults(_Strict):
    """Merged into every rule of the directive; a rule's own keys win."""

    action: Action | None = None
    protects: list[str] | None = None


class Evolution(_Strict):
    """What to do with records that drifted from the registered schema."""

    extra_fields: Literal["quarantine", "accept"] = "quarantine"
    newer_versions: Literal["quarantine", "accept"] = Field(
        default="quarantine", description="accept: a higher schema_version is kept if it still fits this schema."
    )
    changed_types: Literal["quarantine"] = "quarantine"  # a changed type needs a new schema, never a silent cast


class Trust(_Strict):
    level: TrustLevel = "high"
    producers: list[str] = Field(min_length=1, description="Known producers; any other producer is untrusted.")


class LogMining(_Strict):
    """Mine templates from a text field of log lines (see pipelines.crom.logs)."""

    field: str = Field(default="line", description="The string field holding the log line.")
    layout: str | None = Field(default=None, description="Line layout in Loghub's notation; only <Content> is mined.")

    @field_validator("layout")
    @classmethod
    def _layout_compiles(cls, layout: str | None) -> str | None:
        if layout is not None:
            LineLayout(layout)
        return layout


class TextMining(_Strict):
    """Sentiment, complaint, reason, brands, products, hashtags, mentions and language from
    a free-text field (see pipelines.crom.text)."""

    field: str = Field(default="text", description="The string field holding the text.")
    model: Literal["label_free", "trained"] = Field(
        default="label_free",
        description="label_free: VADER plus complaint cues; trained: the model `crm train sentiment` saved under the profile's models folder.",
    )
    brands: dict[str, list[str]] = Field(default={}, description="Brand name -> the words, @handles or #tags naming it.")
    products: dict[str, list[str]] = Field(default={}, description="Product name -> the words naming it.")

    @field_validator("brands", "products")
    @classmethod
    def _aliases_given(cls, names: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, aliases in names.items():
            if not aliases or any(not alias.strip() for alias in aliases):
                raise ValueError(f"{name!r} needs at least one non-empty alias")
        return names


class OrderFacts(_Strict):
    """Base-currency amounts, line items and promotion as columns (see pipelines.crom.orders)."""

    amount: str = Field(default="amount", description="The order total, in `currency`.")
    currency: str = Field(default="currency", description="The ISO 4217 code of the order's currency.")
    items: str = Field(default="items", description="The line items: sku, product, quantity, unit_price.")
    promotion: str = Field(default="promotion_code", description="The promotion code, null if none.")
    rates: str = Field(
        default="conf/currency_rates.csv", description="The rate table, relative to the repository root and inside conf/ (see conf/currency_rates.csv)."
    )


class WebFacts(_Strict):
    """Page, referrer, campaign, device, browser and bot flag (see pipelines.crom.web)."""

    page: str = Field(default="page", description="The page path or URL.")
    referrer: str = Field(default="referrer", description="The referring URL, null or '-' if none.")
    user_agent: str = Field(default="user_agent")
    utm_source: str | None = Field(default=None, description="A utm_source field; without one, the page URL's query is read.")
    utm_medium: str | None = None
    utm_campaign: str | None = None
    site_hosts: list[str] = Field(default=[], description="The site's own hosts: referrers from them are 'internal'.")
    visitor: str | None = Field(default=None, description="The field naming the visitor (e.g. a cookie id); sessions need it.")
    session_gap_minutes: int = Field(default=30, ge=1, description="A pause longer than this ends a visitor's session.")


class LifecycleFacts(_Strict):
    """An item's age at each of its events, e.g. a service ticket's: hours since it was opened,
    and whether that is past its target (see pipelines.crom.lifecycle)."""

    opened: str = Field(description="The date-time field telling when the item was opened, on every event.")
    target_hours: str | None = Field(default=None, description="A numeric field: the hours within which the item should be closed (e.g. an SLA).")


class Datafy(_Strict):
    """Structured fields derived from unstructured ones, per source."""

    logs: LogMining | None = None
    text: TextMining | None = None
    orders: OrderFacts | None = None
    web: WebFacts | None = None
    lifecycle: LifecycleFacts | None = None

    def derived_fields(self) -> tuple[T.StructField, ...]:
        """The silver columns these derivations add, in table order."""
        chosen = (
            (self.logs, TEMPLATE_FIELDS), (self.text, TEXT_FIELDS), (self.orders, ORDER_FIELDS), (self.web, WEB_FIELDS),
            (self.lifecycle, LIFECYCLE_FIELDS),
        )  # fmt: skip
        return tuple(f for mining, fields in chosen if mining is not None for f in fields)


class Source(_Strict):
    topic: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    schema_: str = Field(alias="schema", pattern=r"^[a-z_]+\.v[0-9]+$")
    partitions: int = Field(default=1, ge=1)
    retention_hours: int = Field(default=168, ge=1, description="Kafka topic retention.")
    delta_retention_days: int | None = Field(default=None, ge=1, description="`crm purge` deletes the source's CROM rows older than this; none keeps them.")
    max_future_skew_hours: float | None = Field(default=None, gt=0, description="Overrides watermark.max_future_skew_hours for this source.")
    trust: Trust
    evolution: Evolution = Evolution()
    expectations: list[Expectation] = []
    datafy: Datafy = Datafy()


class Watermark(_Strict):
    column: str = "event_time"
    delay_hours: int = Field(ge=1, description="An event more than this behind the newest event before it in its Kafka partition is late.")
    max_future_skew_hours: float = Field(
        default=24, gt=0, description="An event time further ahead of its Kafka timestamp is quarantined (event_time_in_future); a source may set its own."
    )


class Limits(_Strict):
    max_record_bytes: int = Field(default=262_144, ge=1024)
    require_key: bool = True


class OperationalDirective(_Strict):
    id: str = Field(pattern=_ID)
    version: int = Field(ge=1)
    serves: str | None = None
    description: str
    defaults: ExpectationDefaults = ExpectationDefaults()
    watermark: Watermark
    limits: Limits = Limits()
    sources: dict[str, Source] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, raw):
        """Merge `defaults` into each rule before the rules are validated."""
        if not isinstance(raw, dict) or not isinstance(raw.get("defaults"), dict) or not isinstance(raw.get("sources"), dict):
            return raw
        defaults = {k: v for k, v in raw["defaults"].items() if v is not None}
        sources = {}
        for name, src in raw["sources"].items():
            if isinstance(src, dict) and isinstance(src.get("expectations"), list):
                rules = [{**defaults, **rule} if isinstance(rule, dict) else rule for rule in src["expectations"]]
                src = {**src, "expectations": rules}
            sources[name] = src
        return {**raw, "sources": sources}


# --- the chain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    directive: StrategicDirective | FunctionalDirective | OperationalDirective
    path: Path


@dataclass(frozen=True)
class DirectiveSet:
    strategic: dict[str, Loaded]
    functional: dict[str, Loaded]
    operational: dict[str, Loaded]
    schemas: dict[str, EventSchema]  # by operational source name

    def only(self, level: str) -> Loaded:
        """The single directive of a level; jobs of this skeleton run one chain."""
        found = getattr(self, level)
        if len(found) != 1:
            raise CrmError(f"expected exactly one {level} directive, found {len(found)}: {sorted(found)}")
        return next(iter(found.values()))


_MODELS = {
    "strategic": StrategicDirective,
    "functional": FunctionalDirective,
    "operational": OperationalDirective,
}
_SERVES = {"functional": "strategic", "operational": "functional"}


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CrmError(f"{path}: cannot read directive: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise CrmError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(raw, dict):
        raise CrmError(f"{path}: a directive must be a YAML mapping")
    return raw


def _load_level(root: Path, level: str) -> dict[str, Loaded]:
    loaded: dict[str, Loaded] = {}
    folder = root / level
    for path in sorted(folder.glob("*.y*ml")):
        raw = _read_yaml(config.inside(root, path, "directive"))
        try:
            directive = _MODELS[level].model_validate(raw)
        except ValidationError as exc:
            raise CrmError(describe_validation_error(path, exc, name_of=lambda loc: _rule_name(raw, loc))) from exc
        if not directive.id.startswith(level + "."):
            raise CrmError(f"{path}: id: {directive.id!r} must start with '{level}.'")
        if directive.id in loaded:
            raise CrmError(f"{path}: id: {directive.id!r} is already defined in {loaded[directive.id].path}")
        loaded[directive.id] = Loaded(directive, path)
    return loaded


def _rule_name(raw: dict, loc: tuple) -> str | None:
    """The `name` of the rule an error location points into, e.g. sources.web.expectations.0."""
    if len(loc) >= 4 and loc[0] == "sources" and loc[2] == "expectations" and isinstance(loc[3], int):
        try:
            return raw["sources"][loc[1]]["expectations"][loc[3]].get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
    return None


def load_directives(root: Path, schemas_dir: Path) -> DirectiveSet:
    """Read and cross-check every directive under root/{strategic,functional,operational}."""
    if not root.is_dir():
        raise CrmError(f"directives folder {root} does not exist")
    levels = {level: _load_level(root, level) for level in _MODELS}
    if not levels["strategic"]:
        raise CrmError(f"{root / 'strategic'}: no strategic directive found")

    for level, higher in _SERVES.items():
        for ref in levels[level].values():
            serves = ref.directive.serves
            if not serves:
                raise CrmError(f"{ref.path}: serves: a {level} directive must name the {higher} directive it serves")
            if serves not in levels[higher]:
                raise CrmError(f"{ref.path}: serves: {serves!r} is not a known {higher} directive")

    schemas: dict[str, EventSchema] = {}
    topics: dict[str, Path] = {}
    for ref in levels["operational"].values():
        for name, src in ref.directive.sources.items():
            where = f"{ref.path}: sources.{name}"
            if name in schemas:
                raise CrmError(f"{where}: source {name!r} is declared twice")
            if src.topic in topics:
                raise CrmError(f"{where}.topic: {src.topic!r} is already used in {topics[src.topic]}")
            topics[src.topic] = ref.path
            try:
                schema = load_schema(schemas_dir, src.schema_)
            except CrmError as exc:
                raise CrmError(f"{where}.schema: {exc}") from exc
            if schema.source != name:
                raise CrmError(f"{where}.schema: {src.schema_} describes source {schema.source!r}, not {name!r}")
            schemas[name] = schema
            _check_expectations(ref, name, src, schema, levels["functional"])

    for ref in levels["functional"].values():
        _check_parameters(ref, levels, schemas)
        _check_segmentation(ref)
    for ref in levels["strategic"].values():
        _check_kpis(ref, levels["functional"])
    return DirectiveSet(**levels, schemas=schemas)


def _check_expectations(ref: Loaded, source: str, src: Source, schema: EventSchema, functional: dict) -> None:
    params = {p.name for p in functional[ref.directive.serves].directive.parameters}
    seen: set[str] = set()
    for i, rule in enumerate(src.expectations):
        where = f"{ref.path}: sources.{source}.expectations[{i}] ({rule.name})"
        if rule.name in seen:
            raise CrmError(f"{where}: name: duplicate rule name")
        seen.add(rule.name)
        for column in rule.columns():
            if schema.field(column) is None and column not in DERIVED_COLUMNS:
                raise CrmError(f"{where}: kwargs: column {column!r} is not a field of {schema.name}")
        for param in rule.protects:
            if param not in params:
                raise CrmError(f"{where}: protects: {param!r} is not a parameter of {ref.directive.serves}")
    datafy = src.datafy
    string_fields = [(f"{kind}.field", m.field) for kind, m in (("logs", datafy.logs), ("text", datafy.text)) if m is not None]
    if datafy.web is not None:
        named = ("page", "referrer", "user_agent", "utm_source", "utm_medium", "utm_campaign", "visitor")
        string_fields += [(f"web.{key}", getattr(datafy.web, key)) for key in named if getattr(datafy.web, key) is not None]
    for key, name in string_fields:
        field = schema.field(name)
        if field is None or field.spark_type != T.StringType():
            raise CrmError(f"{ref.path}: sources.{source}.datafy.{key}: {name!r} is not a string field of {schema.name}")
    if src.datafy.orders is not None:
        _check_orders(f"{ref.path}: sources.{source}.datafy.orders", src.datafy.orders, schema)
    if src.datafy.lifecycle is not None:
        _check_lifecycle(f"{ref.path}: sources.{source}.datafy.lifecycle", src.datafy.lifecycle, schema)
    if schema.field(ref.directive.watermark.column) is None:
        raise CrmError(f"{ref.path}: watermark.column: {ref.directive.watermark.column!r} is not a field of {schema.name}")


def _check_orders(where: str, orders: OrderFacts, schema: EventSchema) -> None:
    """The named fields exist with usable types, and the rate table covers every currency the schema allows."""
    wanted = {"amount": (T.DoubleType(), T.LongType()), "currency": (T.StringType(),), "promotion": (T.StringType(),)}
    for key, types in wanted.items():
        field = schema.field(getattr(orders, key))
        if field is None or field.spark_type not in types:
            raise CrmError(f"{where}.{key}: {getattr(orders, key)!r} is not a {' or '.join(t.simpleString() for t in types)} field of {schema.name}")
    items = schema.field(orders.items)
    needed = {"sku", "product", "quantity", "unit_price"}
    if items is None or not isinstance(items.spark_type, T.ArrayType) or not needed <= set(items.spark_type.elementType.names):
        raise CrmError(f"{where}.items: {orders.items!r} is not an array of line items ({', '.join(sorted(needed))}) in {schema.name}")
    table = read_rates(config.inside(config.CONF_DIR, config.REPO_ROOT / orders.rates, f"{where}.rates"))
    allowed = set(schema.document["properties"][orders.currency].get("enum") or ())
    if allowed - table.currencies:
        raise CrmError(f"{where}.rates: {orders.rates} has no rate for {sorted(allowed - table.currencies)}, which {schema.name} allows")


def _check_lifecycle(where: str, lifecycle: LifecycleFacts, schema: EventSchema) -> None:
    wanted = {"opened": (T.TimestampType(),), "target_hours": (T.LongType(), T.IntegerType(), T.DoubleType())}
    for key, types in wanted.items():
        name = getattr(lifecycle, key)
        if name is None:
            continue
        field = schema.field(name)
        if field is None or field.spark_type not in types:
            raise CrmError(f"{where}.{key}: {name!r} is not a {' or '.join(t.simpleString() for t in types)} field of {schema.name}")


def _check_parameters(ref: Loaded, levels: dict, schemas: dict[str, EventSchema]) -> None:
    datafied = {
        name: src.datafy
        for op in levels["operational"].values()
        if op.directive.serves == ref.directive.id
        for name, src in op.directive.sources.items()
    }
    _check_parameter_list(f"{ref.path}: parameters", ref.directive, ref.directive.parameters, datafied, schemas)
    for i, param in enumerate(ref.directive.parameters):
        if param.attributed_by is not None:
            raise CrmError(f"{ref.path}: parameters[{i}] ({param.name}): attributed_by: only a breakdown's parameters are attributed")
    seen: set[str] = set()  # the other tables' names (variants, segments) cannot match ^by_
    for i, breakdown in enumerate(ref.directive.breakdowns):
        where = f"{ref.path}: breakdowns[{i}] ({breakdown.name})"
        if breakdown.name in seen:
            raise CrmError(f"{where}: name: duplicate breakdown name")
        seen.add(breakdown.name)
        _check_parameter_list(f"{where}: parameters", ref.directive, breakdown.parameters, datafied, schemas)
        for source in sorted({p.source for p in breakdown.parameters}):
            attribution = _check_attribution(where, ref.directive.id, breakdown, source, datafied, schemas)
            carrier = attribution.source if attribution else source  # the source whose events carry the grain
            if not _is_column(breakdown.grain, schemas[carrier], datafied[carrier]):
                raise CrmError(f"{where}: grain: {breakdown.grain!r} is not a column of {schemas[carrier].name}'s silver table")


def _check_attribution(
    where: str, serving: str, breakdown: Breakdown, source: str, datafied: dict, schemas: dict[str, EventSchema]
) -> Attribution | None:
    """The one attribution of a source's parameters in a breakdown (the partials are per source)."""
    params = [(i, p) for i, p in enumerate(breakdown.parameters) if p.source == source]
    attributions = {p.attributed_by for _, p in params}
    i, param = next(((i, p) for i, p in params if p.attributed_by is not None), params[0])  # the one named in errors
    at = f"{where}: parameters[{i}] ({param.name}): attributed_by"
    if len(attributions) > 1:
        raise CrmError(f"{at}: every {source} parameter of a breakdown is attributed the same way, or none is")
    attribution = param.attributed_by
    if attribution is None:
        return None
    if attribution.source == source:
        raise CrmError(f"{at}: source: {source!r} is the parameter's own source; attribution takes the grain from another")
    if attribution.source not in datafied:
        raise CrmError(f"{at}: source: {attribution.source!r} is not a source of any operational directive serving {serving}")
    for each in (source, attribution.source):  # attribution joins the two on the customer
        if not _is_column(CUSTOMER, schemas[each], datafied[each]):
            raise CrmError(f"{at}: {schemas[each].name}'s silver table has no {CUSTOMER} to attribute by")
    return attribution


def _is_column(name: str, schema: EventSchema, datafy) -> bool:
    """A column of the source's silver table: a stored field or one its datafy block derives."""
    return name in schema.stored_columns() or name in {f.name for f in datafy.derived_fields()}


def _check_parameter_list(where_list: str, directive: FunctionalDirective, params: list[Parameter], datafied: dict, schemas: dict[str, EventSchema]) -> None:
    seen: set[str] = set()
    for i, param in enumerate(params):
        where = f"{where_list}[{i}] ({param.name})"
        if param.name in seen:
            raise CrmError(f"{where}: name: duplicate parameter name")
        seen.add(param.name)
        if param.source not in datafied:
            raise CrmError(f"{where}: source: {param.source!r} is not a source of any operational directive serving {directive.id}")
        needs_column = param.measure in ("sum", "avg", "median", "count_distinct", "last", "repeat_avg")
        if needs_column and not param.column:
            raise CrmError(f"{where}: column: measure {param.measure!r} needs a column")
        schema = schemas[param.source]
        if param.column and not _is_column(param.column, schema, datafied[param.source]):
            spec = schema.field(param.column)
            if spec is not None:  # personal data never reaches silver under its own name
                raise CrmError(f"{where}: column: {param.column!r} is personal data ({spec.pii}); silver holds it as {', '.join(spec.stored_as)}")
            raise CrmError(f"{where}: column: {param.column!r} is not a field of {schema.name} nor derived by its datafy block")
        if param.latest_per and not _is_column(param.latest_per, schema, datafied[param.source]):
            raise CrmError(f"{where}: latest_per: {param.latest_per!r} is not a column of {schema.name}'s silver table")


def _check_segmentation(ref: Loaded) -> None:
    segmentation = ref.directive.segmentation
    names = {p.name for p in ref.directive.parameters}
    for name in segmentation.parameters() if segmentation else []:
        if name not in names:
            raise CrmError(f"{ref.path}: segmentation: {name!r} is not a parameter of {ref.directive.id}")


def _check_kpis(ref: Loaded, functional: dict[str, Loaded]) -> None:
    params = {
        p.name: p
        for f in functional.values()
        if f.directive.serves == ref.directive.id
        for p in f.directive.parameters
    }
    model = ref.directive.purchase_model
    if model is not None:
        for role, name in model.parameters().items():
            where = f"{ref.path}: purchase_model.{role}"
            if name not in params:
                raise CrmError(f"{where}: {name!r} is not a parameter of any functional directive serving {ref.directive.id}")
            wanted = MODEL_MEASURES[role]
            if params[name].measure != wanted:
                raise CrmError(f"{where}: {name!r} is measured by {params[name].measure!r}; the model needs a {wanted!r} parameter")
        if model.holdout and not params[model.holdout.purchases].holdout_days:
            raise CrmError(f"{ref.path}: purchase_model.holdout.purchases: {model.holdout.purchases!r} has no holdout_days")
    usable = set(params) | (set(MODEL_OUTPUTS) if model else set())
    rules = ref.directive.recommendations.rules if ref.directive.recommendations else []
    named = [(f"kpis[{i}] ({k.name})", k.uses, (k.expression,)) for i, k in enumerate(ref.directive.kpis)]
    named += [(f"recommendations.rules[{i}] ({r.name})", r.uses, (r.when, r.priority)) for i, r in enumerate(rules)]
    for where, uses, expressions in named:
        for name in uses:
            if name not in usable:
                extra = f" nor an output of its purchase_model ({', '.join(MODEL_OUTPUTS)})" if model else ""
                raise CrmError(
                    f"{ref.path}: {where}: uses: {name!r} is not a parameter of any functional directive serving {ref.directive.id}{extra}"
                )
        missing = [n for n in uses if not any(re.search(rf"\b{re.escape(n)}\b", e) for e in expressions)]
        if missing:
            raise CrmError(f"{ref.path}: {where}: uses: {missing} do not appear in the expression")


# --- traceability ------------------------------------------------------------------------


@dataclass(frozen=True)
class Impact:
    what: str  # "expectation web_session_present (source web)" or "topic crm.web (source web)"
    parameters: list[str]
    kpis: list[tuple[str, str]]  # (strategic directive id, KPI name)
    breakdowns: list[tuple[str, str]] = ()  # (functional directive id, breakdown name)
    rules: list[tuple[str, str]] = ()  # (strategic directive id, recommendation rule name)


def _strategic_users(directives: DirectiveSet, parameters: set[str], named) -> list[tuple[str, str]]:
    """(directive id, name) of every KPI or rule (`named(directive)` gives (name, uses) pairs)
    that reads one of the parameters, directly or through the directive's purchase model."""
    found = []
    for ref in directives.strategic.values():
        directive = ref.directive
        model = directive.purchase_model
        roles = model.parameters() if model else {}
        for name, uses in named(directive):
            used = set(uses) | {roles[r] for out in uses for r in OUTPUT_ROLES.get(out, ()) if model}
            if used & parameters:
                found.append((directive.id, name))
    return found


def kpis_using(directives: DirectiveSet, parameters: set[str]) -> list[tuple[str, str]]:
    """Every KPI that reads one of the parameters, directly or through its purchase model."""
    return _strategic_users(directives, parameters, lambda d: [(k.name, k.uses) for k in d.kpis])


def rules_using(directives: DirectiveSet, parameters: set[str]) -> list[tuple[str, str]]:
    """Every recommendation rule that reads one of the parameters, directly or through the purchase model."""
    return _strategic_users(directives, parameters, lambda d: [(r.name, r.uses) for r in (d.recommendations.rules if d.recommendations else [])])


def _breakdowns_reading(directives: DirectiveSet, source: str, parameters: set[str]) -> list[tuple[str, str]]:
    """Every breakdown with a parameter from `source` (all of them, or only those named in `parameters` if given)."""
    return [
        (ref.directive.id, b.name)
        for ref in directives.functional.values()
        for b in ref.directive.breakdowns
        if any(p.source == source and (not parameters or p.name in parameters) for p in b.parameters)
    ]


def _impact(directives: DirectiveSet, what: str, params: list[str], source: str, whole_source: bool) -> Impact:
    wanted = set(params)
    breakdowns = _breakdowns_reading(directives, source, set() if whole_source else wanted)
    return Impact(what, params, kpis_using(directives, wanted), breakdowns, rules_using(directives, wanted))


def impact(directives: DirectiveSet, name: str) -> Impact:
    """What an expectation (by rule name) or a topic (or source name) puts at risk if it fails."""
    for ref in directives.operational.values():
        for source, src in ref.directive.sources.items():
            if name in (src.topic, source):
                params = sorted(p.name for f in directives.functional.values() for p in f.directive.parameters if p.source == source)
                params = sorted(set(params) | {p for rule in src.expectations for p in rule.protects})
                return _impact(directives, f"topic {src.topic} (source {source})", params, source, whole_source=True)
            for rule in src.expectations:
                if rule.name == name:
                    what = f"expectation {rule.name} (source {source}, {rule.action})"
                    return _impact(directives, what, sorted(rule.protects), source, whole_source=False)
    raise CrmError(f"{name!r} is neither an expectation nor a topic or source of the operational directives")
