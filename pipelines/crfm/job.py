"""The CRFM job: silver tables -> one functional Delta table per functional directive.

Each source's new silver events are folded into daily partials (incremental.py); the
parameters are then rolled up from those partials, so old events are never re-read. Only
the keys the new partials can change are rolled up again (rollup.py): MERGEd into the
tables, or, when as_of moved, written with every other row shifted with it. The tables are
computed whole on a first run, after the partials were rebuilt or lost rows, or for a new
version of the directive. `source_version` in the output records what a row was last
computed from. When the strategic directive it serves asks for validity checks,
`<table>_variants` holds the parameters re-measured for them (see parameter_variants); with
`segmentation`, `<table>_segments` holds RFM scores, segments, k-means clusters and scores;
each breakdown `by_<grain>` has its own partials and table `<table>_by_<grain>` (with its
scores), with the same as_of. A new version of the directive recomputes them all, even on
the same silver data. The tables after the customer parameters are independent of each
other, so they are built together (STEPS_AT_ONCE at a time) and their step times overlap.

A finished run records what it was computed from (`current.json` beside the partials'
checkpoints): the silver versions, a fingerprint of the directive, the as_of day and the
partials' and tables' Delta versions (RolledUp), which the next roll-up starts from. A
scheduled run that finds the same versions (read from the Delta logs by delta-rs) and the
same fingerprint has nothing to do, and returns without a Spark job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import date
from functools import cache, cached_property
from pathlib import Path

import deltalake
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crfm import rollup
from pipelines.crfm.incremental import Fold, update_partials
from pipelines.crfm.parameters import (
    VARIANT,
    Feed,
    as_of_day,
    check_plan,
    customer_parameters,
    earlier_labels,
    end_of,
    feeds,
    parameter_variants,
    parameters_of,
    source_parts,
    wide,
)
from pipelines.crfm.rollup import PartialsState
from pipelines.crfm.segments import SavedFit, apply, check_scores, feature_stats, fit, refit_reason, scores
from pipelines.directives import DirectiveSet, FunctionalDirective, Loaded, Validity
from pipelines.errors import CrmError
from pipelines.files import replace_atomically
from pipelines.lakehouse import table_version
from pipelines.tables import functional_table, silver_table
from pipelines.timing import describe, timed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FunctionalRun:
    table: str
    customers: int
    source_version: int
    new_events: int  # silver rows folded into the partials by this run (each read once)
    rebuilt_partials: bool  # partials recomputed from all of silver
    skipped: bool
    phases: dict[str, float]  # seconds per step
    breakdowns: dict[str, str]  # breakdown name -> its table
    recomputed: dict[str, int | None]  # per part ("" or a breakdown): keys recomputed, None when computed whole


LINEAGE = ("as_of", "directive_id", "directive_version", "computed_at", "source_version")  # columns every table ends with
STREAMS_AT_ONCE = 4  # partials updates run together: a small one is mostly job start-up and commits
STEPS_AT_ONCE = 3  # tables built together after the customer parameters


def run_functional(spark: SparkSession, profile: Profile, directives: DirectiveSet, functional: Loaded, full: bool = False) -> FunctionalRun:
    """Bring the directive's tables up to date; `full` recomputes the partials from all of silver."""
    started = time.monotonic()
    directive = functional.directive
    # What is measured: the customer parameters (part "") and each breakdown (part "by_...").
    measured = measured_parts(directive)
    fed = {part: feeds(each) for part, each in measured.items()}  # each part's partials tables
    sources = sorted({feed.source for named in fed.values() for feed in named.values()})
    paths = {s: silver_table(profile, s) for s in sources}
    # The validity checks of the strategic directive this one serves re-measure the parameters.
    validity = directives.strategic[directive.serves].directive.validity if directive.serves in directives.strategic else None
    state = profile.checkpoints / "crfm" / directive.id  # the partials' checkpoints and what the last run recorded
    record = CurrentRecord(state / "current.json", _fingerprint(directive, validity))
    if not full and (done := record.unchanged(paths)) is not None:
        log.info("CRFM %s: up to date, silver has no new version", directive.id)
        return replace(done, phases={"check": time.monotonic() - started})
    # Versions only grow, so their sum identifies the input state and grows with it.
    source_version = sum(table_version(p) for p in paths.values())
    schemas = {s: spark.read.format("delta").load(p).schema for s, p in paths.items()}
    for part, each in measured.items():
        where = f"{functional.path}" + (f": breakdowns ({part})" if part else "")
        planned = check_plan(spark, each, schemas, where)
        if each.segmentation is not None:  # a breakdown's segmentation is its scores alone
            check_scores(planned, each.segmentation, where, "scores" if part else "segmentation.scores")

    phases: dict[str, float] = {}

    def partials_table(part: str, name: str) -> str:
        return partials_path(profile, directive.id, part, name)

    def partials(source: str):  # one stream per silver table feeds every partials table that reads it
        folds = [
            Fold(partials_table(part, name), feed.params, feed.grain)
            for part, named in fed.items() for name, feed in named.items() if feed.source == source
        ]  # fmt: skip
        return update_partials(spark, paths[source], folds, state / f"silver_{source}", full)

    with timed(phases, "partials"), ThreadPoolExecutor(min(len(sources), STREAMS_AT_ONCE), thread_name_prefix="crfm-partials") as pool:
        runs = list(pool.map(partials, sources))
    rebuilt_partials = any(run.rebuilt for run in runs)
    log.info("CRFM %s: partials of %s (%.1fs)", directive.id, ", ".join(sources), phases["partials"])
    tables = {part: {name: partials_table(part, name) for name in named} for part, named in fed.items()}
    daily = {part: {name: spark.read.format("delta").load(path) for name, path in named.items()} for part, named in tables.items()}
    out = functional_table(profile, directive.id)
    with timed(phases, "as_of"):
        as_of_day_ = as_of_day(directive, daily[""])  # the breakdowns share the customers' as_of
    as_of = end_of(as_of_day_)
    earlier = earlier_labels(validity.windows) if validity else {}  # the earlier windows' variants, in the same pass
    # Each part's tables follow new data (rollup.py) when the last run's record says what they
    # were computed from; else they are computed whole.
    previous = None if full or rebuilt_partials else record.rolled_up()
    segments_path = functional_table(profile, directive.id, "segments")
    keyed = {"": [out] + ([functional_table(profile, directive.id, "variants")] if validity else []) + ([segments_path] if directive.segmentation else [])}
    keyed |= {b.name: [functional_table(profile, directive.id, b.name)] for b in directive.breakdowns}
    with timed(phases, "changes"):
        changes = {
            part: _changes(spark, previous, tables[part], keyed[part], measured[part], fed[part], [0, *earlier.values()] if part == "" else [0], as_of_day_)
            for part in measured
        }  # fmt: skip
    used = {part: daily[part] if changes[part] is None else rollup.of_keys(daily[part], changes[part].keys, measured[part].grain) for part in measured}

    def lineage(frame: DataFrame) -> DataFrame:
        return frame.select(
            "*",
            as_of.alias("as_of"),
            F.lit(directive.id).alias("directive_id"),
            F.lit(directive.version).alias("directive_version"),
            F.current_timestamp().alias("computed_at"),
            F.lit(source_version).cast("long").alias("source_version"),
        )

    def refresh(path: str, part: str, keys: list[str], build, rescore=lambda frame: frame) -> bool:
        """Write a table of `part`: whole, its changed keys MERGEd, or, when as_of moved, its
        changed keys and every other row shifted; True if anything was written."""
        change = changes[part]
        if change is None:
            _overwrite(lineage(build()), path)
            return True
        grain = measured[part].grain
        rows = lineage(build())
        if change.days:  # as_of moved: every other row's measures counted from as_of move with it
            old = spark.read.format("delta").load(path).drop(*LINEAGE)
            shifted = lineage(rollup.shifted(old, change.keys, grain, change.days, _from_as_of(measured[part]), rescore))
            _overwrite(rows.unionByName(shifted), path)  # every row is rewritten: no MERGE to match them
        elif change.keys.isEmpty():
            return False
        else:
            rollup.merge(spark, path, rows, keys)
        return True

    @cache
    def joined():  # cached: the parameters and most variants are projections of this one join
        return wide(source_parts(used[""], directive, as_of, earlier=earlier), directive).persist()

    with timed(phases, "roll-up"):
        rebuilt = refresh(out, "", [directive.grain], lambda: parameters_of(joined(), directive))
    log.info("CRFM %s: customer parameters %s (%.1fs)", directive.id, _how(changes[""], rebuilt), phases["roll-up"])
    # Built from the parameters table or the partials, the other tables are independent of each other.
    steps = {}
    if validity is not None:
        steps["variants"] = lambda: refresh(
            functional_table(profile, directive.id, "variants"), "", [directive.grain, VARIANT],
            lambda: parameter_variants(used[""], directive, as_of, validity.windows, joined()),
        )  # fmt: skip
    if directive.segmentation is not None:
        saved_fit = SavedFit(state / "segments_fit", record.fingerprint)
        steps["segments"] = lambda: _segments(spark, directive, out, segments_path, saved_fit, changes[""], rebuilt, as_of_day_, source_version)
    breakdowns = {}
    for b in directive.breakdowns:
        breakdowns[b.name] = functional_table(profile, directive.id, b.name)
        each = measured[b.name]

        def rescore(frame, each=each):
            return scores(frame.drop(*[s.name for s in each.segmentation.scores]), each.segmentation) if each.segmentation else frame

        def per_grain(each=each, name=b.name, rescore=rescore):
            return rescore(customer_parameters(used[name], each, as_of))

        steps[b.name] = lambda path=breakdowns[b.name], name=b.name, build=per_grain, again=rescore: refresh(path, name, [measured[name].grain], build, again)

    def step(name: str) -> None:
        with timed(phases, name):
            steps[name]()
        log.info("CRFM %s: %s (%.1fs)", directive.id, name, phases[name])

    # Together: much of a small table's build is planning and Delta's commit, which leave the cores idle.
    with ThreadPoolExecutor(STEPS_AT_ONCE, thread_name_prefix="crfm-tables") as pool:
        list(pool.map(step, steps))
    if joined.cache_info().currsize:
        joined().unpersist()
    recomputed = {part: None if change is None else change.recomputed for part, change in changes.items()}
    for change in changes.values():
        if change is not None:
            change.keys.unpersist()
    customers = spark.read.format("delta").load(out).count()
    new_events = sum(run.new_events for run in runs)
    log.debug("functional %s: %d customers from silver version %d, %d new events (%s)", directive.id, customers, source_version, new_events, describe(phases))
    run = FunctionalRun(out, customers, source_version, new_events, rebuilt_partials, not rebuilt, phases, breakdowns, recomputed)
    kept = [out, *(functional_table(profile, directive.id, step) for step in steps if step not in breakdowns), *breakdowns.values()]
    record.save(paths, run, kept, RolledUp.now(as_of_day_, [p for named in tables.values() for p in named.values()], kept))
    return run


def _segments(
    spark: SparkSession,
    directive: FunctionalDirective,
    customers_path: str,
    path: str,
    saved: SavedFit,
    change: Change | None,
    customers_changed: bool,
    as_of: date | None,
    source_version: int,
) -> None:
    """The segments table: fitted again and written whole when the customer table was, or when
    the saved fit is due (its `refit`); else the changed customers scored with the saved fit
    and MERGEd, or all of them written whole when as_of moved (recency moves everyone's scores)."""
    segmentation, grain = directive.segmentation, directive.grain
    customers = spark.read.format("delta").load(customers_path)
    kept = saved.load() if change is not None else None
    if kept is not None and not customers_changed:
        return  # the same customers as of the same day: the saved fit is not due, its scores stand
    stats = feature_stats(customers, segmentation)
    if kept is None:
        reason = "computed whole" if change is None else "no saved fit"
    else:
        reason = refit_reason(segmentation.refit, kept[1], kept[2], as_of, {name: mean for name, (mean, _) in stats.items()})
    version = F.lit(source_version).cast("long").alias("source_version")
    if reason is not None:
        fitted = fit(customers, segmentation)
        if as_of is not None:
            saved.save(fitted, as_of, stats)
        _overwrite(apply(customers, segmentation, fitted, grain).select("*", version), path)
        log.info("CRFM %s: segments fitted (%s)", directive.id, reason)
    elif customers_changed and change.days:  # recency moved everyone's scores
        _overwrite(apply(customers, segmentation, kept[0], grain).select("*", version), path)
    elif customers_changed:
        rows = customers.join(F.broadcast(change.keys), grain, "left_semi")
        rollup.merge(spark, path, apply(rows, segmentation, kept[0], grain).select("*", version), [grain])


def _overwrite(rows: DataFrame, path: str) -> None:
    """Replace the table's rows; `rows` may read the table itself (Delta reads the version before)."""
    rows.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def measured_parts(directive: FunctionalDirective) -> dict[str, FunctionalDirective]:
    """What a directive measures: the customer parameters (part "") and each breakdown (part "by_...")."""
    return {"": directive} | {b.name: directive.measuring(b) for b in directive.breakdowns}


def partials_path(profile: Profile, directive_id: str, part: str, name: str) -> str:
    """The partials table that feed `name` of a part folds into."""
    return functional_table(profile, directive_id, f"{part}_partials_{name}" if part else f"partials_{name}")


@dataclass(frozen=True)
class Change:
    """What a part's tables need since the last run: the keys to recompute (rollup.py), and how
    many days as_of moved (every other key's measures counted from as_of move as many)."""

    keys: DataFrame
    days: int

    @cached_property
    def recomputed(self) -> int:
        return self.keys.count()


def _changes(
    spark: SparkSession,
    previous: RolledUp | None,
    partials: dict[str, str],
    tables: list[str],
    measured: FunctionalDirective,
    fed: dict[str, Feed],
    offsets: list[int],
    as_of: date | None,
) -> Change | None:
    """The change to apply to a part's tables, or None when they must be computed whole."""
    if previous is None or as_of is None or previous.as_of is None:
        return None
    if any(feed.grain != measured.grain for feed in fed.values()):
        return None  # attributed: a key's rows are built from other keys' partials
    if any(_delta_version(t) != previous.tables.get(t) for t in tables):
        return None  # written since the record (a run stopped half-way), or gone
    keys = rollup.changed_keys(spark, partials, previous.partials, measured.grain, measured.parameters, offsets, previous.as_of, as_of)
    return None if keys is None else Change(keys.persist(), (as_of - previous.as_of).days)


def _how(change: Change | None, written: bool) -> str:
    if change is None:
        return "computed whole"
    return f"{change.recomputed:,} keys recomputed, as_of moved {change.days} days" if written else "up to date"


def _from_as_of(measured: FunctionalDirective) -> list[str]:
    return [p.name for p in measured.parameters if p.measure in rollup.FROM_AS_OF]


def _delta_version(path: str) -> int | None:
    try:
        return table_version(path)
    except (CrmError, deltalake.exceptions.DeltaError):  # not written yet, or unreadable
        return None


def _fingerprint(directive: FunctionalDirective, validity: Validity | None) -> str:
    """Changes whenever the tables would be computed differently from the same silver data."""
    spec = [directive.model_dump(mode="json"), validity.model_dump(mode="json") if validity else None]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RolledUp:
    """What the functional tables were computed from: the as_of day, each partials table's
    state, and each table's Delta version once written."""

    as_of: date | None
    partials: dict[str, PartialsState]
    tables: dict[str, int]

    @classmethod
    def now(cls, as_of: date | None, partials: list[str], tables: list[str]) -> RolledUp:
        return cls(as_of, {p: PartialsState.of(p) for p in partials}, {t: table_version(t) for t in tables})

    def to_json(self) -> dict:
        return {"as_of": self.as_of and self.as_of.isoformat(), "partials": {p: asdict(s) for p, s in self.partials.items()}, "tables": self.tables}

    @classmethod
    def from_json(cls, saved: dict) -> RolledUp:
        as_of = date.fromisoformat(saved["as_of"]) if saved["as_of"] else None
        return cls(as_of, {p: PartialsState(**s) for p, s in saved["partials"].items()}, saved["tables"])


@dataclass(frozen=True)
class CurrentRecord:
    """What the last finished run was computed from: silver's versions, the directive's
    fingerprint and the partials (RolledUp), with the run it returned and the tables it keeps."""

    path: Path
    fingerprint: str

    def _saved(self) -> dict | None:
        try:
            saved = json.loads(self.path.read_text())
            return saved if saved["fingerprint"] == self.fingerprint else None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # no record yet, or one from another release

    def unchanged(self, silver: dict[str, str]) -> FunctionalRun | None:
        """The last run, when silver has no new version, the directive is the same and every
        table is still there; else None (the run then checks everything with Spark)."""
        try:
            saved = self._saved()
            if saved is None or saved["silver_versions"] != _versions(silver):
                return None
            if not all(Path(table, "_delta_log").is_dir() for table in saved["tables"]):
                return None
            run = saved["run"]
            return FunctionalRun(**{**run, "new_events": 0, "rebuilt_partials": False, "skipped": True, "recomputed": dict.fromkeys(run["recomputed"], 0)})
        except (KeyError, TypeError, deltalake.exceptions.DeltaError):
            return None  # a record from another release, or a table delta-rs cannot open

    def rolled_up(self) -> RolledUp | None:
        """What the last run's tables were computed from, for the same directive; else None."""
        try:
            saved = self._saved()
            return RolledUp.from_json(saved["rolled_up"]) if saved is not None else None
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, silver: dict[str, str], run: FunctionalRun, tables: list[str], rolled_up: RolledUp) -> None:
        """Record a finished run; written to a temporary file and renamed, so never half-written.
        When silver moved during the run (ingest runs beside it), its versions are not recorded:
        the next run checks again."""
        try:
            versions = _versions(silver)
        except deltalake.exceptions.DeltaError:
            versions = None
        if versions is not None and sum(versions.values()) != run.source_version:
            versions = None
        saved = {"fingerprint": self.fingerprint, "silver_versions": versions, "tables": tables, "run": asdict(run), "rolled_up": rolled_up.to_json()}
        replace_atomically(self.path, json.dumps(saved, indent=1).encode())


def _versions(tables: dict[str, str]) -> dict[str, int]:
    return {name: table_version(path) for name, path in tables.items()}
