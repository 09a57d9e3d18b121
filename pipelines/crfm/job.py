"""The CRFM job: silver tables -> one functional Delta table per functional directive.

Each source's new silver events are folded into daily partials (incremental.py); the
parameters are then rolled up from those partials, so old events are never re-read. The
roll-up runs when a silver table it reads has a new Delta version or the partials were
rebuilt, and not otherwise; `source_version` in the output records what it was computed
from. When the strategic directive it serves asks for validity checks, `<table>_variants`
holds the parameters re-measured for them (see parameter_variants); with `segmentation`,
`<table>_segments` holds RFM scores, segments, k-means clusters and scores; each breakdown
`by_<grain>` has its own partials and table `<table>_by_<grain>` (with its scores), with the
same as_of. A new version of the directive recomputes them all, even on the same silver data.
The tables after the customer parameters are independent of each other, so they are built
together (STEPS_AT_ONCE at a time) and their step times overlap.

A finished run records what it was computed from (`current.json` beside the partials'
checkpoints): the silver versions and a fingerprint of the directive. A scheduled run that
finds the same versions (read from the Delta logs by delta-rs) and the same fingerprint has
nothing to do, and returns without a Spark job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path

import deltalake
from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crfm.incremental import Fold, update_partials
from pipelines.crfm.parameters import as_of_time, check_plan, customer_parameters, earlier_labels, feeds, joined, parameter_variants, source_parts
from pipelines.crfm.segments import check_scores, scores, segments
from pipelines.directives import DirectiveSet, FunctionalDirective, Loaded, Validity
from pipelines.lakehouse import overwrite_unless_current, table_version
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
    record = CurrentRecord(profile.checkpoints / "crfm" / directive.id / "current.json", _fingerprint(directive, validity))
    if not full and (done := record.unchanged(paths)) is not None:
        log.info("CRFM %s: up to date, silver has no new version", directive.id)
        return replace(done, phases={"check": time.monotonic() - started})
    # Versions only grow, so their sum identifies the input state and grows with it.
    source_version = sum(table_version(spark, p) for p in paths.values())
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
        return update_partials(spark, paths[source], folds, profile.checkpoints / "crfm" / directive.id / f"silver_{source}", full)

    with timed(phases, "partials"), ThreadPoolExecutor(min(len(sources), STREAMS_AT_ONCE), thread_name_prefix="crfm-partials") as pool:
        runs = list(pool.map(partials, sources))
    rebuilt_partials = any(run.rebuilt for run in runs)
    daily = {part: {name: spark.read.format("delta").load(partials_table(part, name)) for name in named} for part, named in fed.items()}
    out = functional_table(profile, directive.id)

    @cache
    def as_of():  # a job over the customer partials, run only when something is rebuilt; breakdowns share it
        return as_of_time(directive, daily[""])

    def lineage():
        return [
            as_of().alias("as_of"),
            F.lit(directive.id).alias("directive_id"),
            F.lit(directive.version).alias("directive_version"),
            F.current_timestamp().alias("computed_at"),
        ]

    @cache
    def parts():  # cached: the parameters and most variants are joins of the same parts
        earlier = earlier_labels(validity.windows) if validity else None  # the earlier windows' variants, in the same pass
        return {s: part.persist() for s, part in source_parts(daily[""], directive, as_of(), earlier=earlier).items()}

    def parameters():
        return joined(parts(), directive).select("*", *lineage())

    # Another version of the directive may score, segment or re-measure differently on the same data.
    changed = DeltaTable.isDeltaTable(spark, out) and _directive_version(spark, out) != directive.version
    log.info("CRFM %s: partials of %s (%.1fs)", directive.id, ", ".join(sources), phases["partials"])
    with timed(phases, "roll-up"):
        rebuilt = overwrite_unless_current(spark, out, source_version, parameters, force=rebuilt_partials or changed)
    log.info("CRFM %s: customer parameters %s (%.1fs)", directive.id, "rolled up" if rebuilt else "up to date", phases["roll-up"])
    # Built from the parameters table or the partials, the other tables are independent of each other.
    steps = {}
    if validity is not None:

        def variants():
            return parameter_variants(daily[""], directive, as_of(), validity.windows, parts()).select("*", *lineage())

        steps["variants"] = lambda: overwrite_unless_current(spark, functional_table(profile, directive.id, "variants"), source_version, variants, force=rebuilt)
    if directive.segmentation is not None:

        def customer_segments():
            return segments(spark.read.format("delta").load(out), directive.segmentation, directive.grain)

        steps["segments"] = lambda: overwrite_unless_current(spark, functional_table(profile, directive.id, "segments"), source_version, customer_segments, force=rebuilt)
    breakdowns = {}
    for b in directive.breakdowns:
        breakdowns[b.name] = functional_table(profile, directive.id, b.name)

        def per_grain(each=measured[b.name], partials=daily[b.name]):
            measures = customer_parameters(partials, each, as_of())
            return (scores(measures, each.segmentation) if each.segmentation else measures).select("*", *lineage())

        steps[b.name] = lambda path=breakdowns[b.name], build=per_grain: overwrite_unless_current(spark, path, source_version, build, force=rebuilt)

    def step(name: str) -> None:
        with timed(phases, name):
            steps[name]()
        log.info("CRFM %s: %s (%.1fs)", directive.id, name, phases[name])

    # Together: much of a small table's build is planning and Delta's commit, which leave the cores idle.
    with ThreadPoolExecutor(STEPS_AT_ONCE, thread_name_prefix="crfm-tables") as pool:
        list(pool.map(step, steps))
    if parts.cache_info().currsize:
        for part in parts().values():
            part.unpersist()
    customers = spark.read.format("delta").load(out).count()
    new_events = sum(run.new_events for run in runs)
    if rebuilt:
        log.debug("functional %s: %d customers from silver version %d, %d new events (%s)", directive.id, customers, source_version, new_events, describe(phases))
    run = FunctionalRun(out, customers, source_version, new_events, rebuilt_partials, not rebuilt, phases, breakdowns)
    record.save(paths, run, [out, *(functional_table(profile, directive.id, step) for step in steps if step not in breakdowns), *breakdowns.values()])
    return run


def measured_parts(directive: FunctionalDirective) -> dict[str, FunctionalDirective]:
    """What a directive measures: the customer parameters (part "") and each breakdown (part "by_...")."""
    return {"": directive} | {b.name: directive.measuring(b) for b in directive.breakdowns}


def partials_path(profile: Profile, directive_id: str, part: str, name: str) -> str:
    """The partials table that feed `name` of a part folds into."""
    return functional_table(profile, directive_id, f"{part}_partials_{name}" if part else f"partials_{name}")


def _fingerprint(directive: FunctionalDirective, validity: Validity | None) -> str:
    """Changes whenever the tables would be computed differently from the same silver data."""
    spec = [directive.model_dump(mode="json"), validity.model_dump(mode="json") if validity else None]
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CurrentRecord:
    """What the last finished run was computed from: silver's versions and the directive's
    fingerprint, with the run it returned and the tables it keeps."""

    path: Path
    fingerprint: str

    def unchanged(self, silver: dict[str, str]) -> FunctionalRun | None:
        """The last run, when silver has no new version, the directive is the same and every
        table is still there; else None (the run then checks everything with Spark)."""
        try:
            saved = json.loads(self.path.read_text())
            if saved["fingerprint"] != self.fingerprint or saved["silver_versions"] != _versions(silver):
                return None
            if not all(Path(table, "_delta_log").is_dir() for table in saved["tables"]):
                return None
            return FunctionalRun(**{**saved["run"], "new_events": 0, "rebuilt_partials": False, "skipped": True})
        except (OSError, ValueError, KeyError, TypeError, deltalake.exceptions.DeltaError):
            return None  # no record yet, one from another release, or a table delta-rs cannot open

    def save(self, silver: dict[str, str], run: FunctionalRun, tables: list[str]) -> None:
        """Record a finished run; written to a temporary file and renamed, so never half-written."""
        try:
            versions = _versions(silver)
        except deltalake.exceptions.DeltaError:
            return
        if sum(versions.values()) != run.source_version:
            return  # silver moved during the run (ingest runs beside it): the next run checks again
        saved = {"fingerprint": self.fingerprint, "silver_versions": versions, "tables": tables, "run": asdict(run)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(saved, indent=1))
        os.replace(partial, self.path)


def _versions(tables: dict[str, str]) -> dict[str, int]:
    """Each table's latest Delta version, read from its log by delta-rs: no Spark job."""
    return {name: deltalake.DeltaTable(path).version() for name, path in tables.items()}


def _directive_version(spark: SparkSession, table: str) -> int | None:
    return spark.read.format("delta").load(table).agg(F.max("directive_version")).first()[0]
