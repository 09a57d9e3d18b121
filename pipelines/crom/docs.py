"""Great Expectations Data Docs (static HTML) from the CROM validation results table.

CROM judges its rules with GE but keeps only counts in `crom/validation_results`, one row
per batch, source and rule. This module turns the newest batches of that table back into
GE validation results and lets GE render them:

- one validation result per (batch id, source) with one expectation result per rule,
  rebuilt from the row's own `expectation_type` and `kwargs_json` (the directive's
  unprefixed columns), so a page shows each rule as it was when that batch ran;
- one expectation suite per source (`crom.<source>`) from the operational directive as
  it is now; the validation pages link to it.

Results carry counts and aggregates only (element_count, unexpected_count and percent,
or observed_value): the table holds no raw values, so no page lists unexpected values.

Where things go: the GE file project is derived data, rebuilt from the table on every run
in `<lakehouse>/_data_docs/gx` (so CRM_LAKEHOUSE and test lakehouses move it too). The site
goes to `<lakehouse>/_data_docs/gx/uncommitted/data_docs/local_site/` (GE's default), or to
`out_dir`, where GE overwrites its own pages and leaves other files alone.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import defaultdict
from datetime import timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

from pyspark.sql import Row, SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crom.validate import RESULTS_SCHEMA
from pipelines.directives import Loaded
from pipelines.errors import CrmError
from pipelines.tables import CromTables

log = logging.getLogger("crm")

SITE = "local_site"  # the site GE's file project is created with
# GE observes the row count for these; the results table keeps it as evaluated_count.
_ROW_COUNT_TYPES = ("expect_table_row_count_to_be_between", "expect_table_row_count_to_equal")


def suite_name(source: str) -> str:
    return f"crom.{source}"


def docs_root(profile: Profile) -> Path:
    return profile.lakehouse / "_data_docs"


def build_data_docs(
    spark: SparkSession, profile: Profile, operational: Loaded, out_dir: Path | None = None, last_batches: int = 50
) -> Path:
    """Render the newest `last_batches` batch ids of validation results; returns index.html."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier, ValidationResultIdentifier

    if last_batches < 1:
        raise CrmError(f"the number of batches to show must be at least 1, not {last_batches}")
    directive = operational.directive
    path = CromTables.of(profile, list(directive.sources)).validation_results
    log.info("reading the newest %d batches of %s", last_batches, path)
    rows = _newest_results(spark, path, last_batches)

    context = _context(docs_root(profile), out_dir)
    _add_suites(context, directive)
    for (batch_id, source), results in sorted(rows.items()):
        validated_at = max(r["validated_at"] for r in results).astimezone(timezone.utc)  # collect() gives naive local time
        run_id = RunIdentifier(run_name=f"batch-{batch_id}", run_time=validated_at)
        key = ValidationResultIdentifier(ExpectationSuiteIdentifier(name=suite_name(source)), run_id, f"{source}-{batch_id}")
        context.validation_results_store.set(key, _suite_result(batch_id, source, results, run_id, path))
    log.info("rendering %d validation results from %d batches", len(rows), len({b for b, _ in rows}))
    url = context.build_data_docs(site_names=[SITE])[SITE]
    return Path(unquote(urlparse(url).path))


def _newest_results(spark: SparkSession, path: str, last_batches: int) -> dict[tuple[int, str], list[Row]]:
    """Rule rows of the newest batch ids by (batch id, source); a replayed rule keeps its last row."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        raise CrmError(f"no validation results at {path} yet; run `crm ingest --until-caught-up` first")
    table = spark.read.format("delta").load(path)
    missing = [c for c in RESULTS_SCHEMA.fieldNames() if c not in table.columns]
    if missing:
        raise CrmError(f"{path} lacks columns {', '.join(missing)}: an older CROM wrote it; move it aside and run `crm ingest` again")
    newest = [r[0] for r in table.select("batch_id").distinct().orderBy(F.desc("batch_id")).limit(last_batches).collect()]
    if not newest:
        raise CrmError(f"the validation results table {path} is empty; run `crm ingest --until-caught-up` first")
    by_batch: dict[tuple[int, str], dict[str, Row]] = defaultdict(dict)
    for row in sorted(table.where(F.col("batch_id").isin(newest)).collect(), key=lambda r: r["validated_at"]):
        by_batch[(row["batch_id"], row["source"])][row["rule"]] = row
    return {key: list(rules.values()) for key, rules in by_batch.items()}


def _context(root: Path, out_dir: Path | None):
    """A fresh GE file project under root, its site moved to out_dir if given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    shutil.rmtree(root / "gx", ignore_errors=True)  # rebuilt from the table, so results past the window do not linger
    context = gx.get_context(mode="file", project_root_dir=root)
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    site = {**context.variables.data_docs_sites[SITE], "show_how_to_buttons": False}  # no GE tutorials and newsletter
    if out_dir is not None:
        site["store_backend"] = {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(out_dir).resolve())}
    context.variables.data_docs_sites = {SITE: site}
    context.variables.save()
    return context


def _add_suites(context, directive) -> None:
    import great_expectations as gx

    for source, spec in directive.sources.items():
        if spec.expectations:
            expectations = [_configuration(r.type, r.kwargs, r.name, r.action, r.protects).to_domain_obj() for r in spec.expectations]
            meta = {"directive_id": directive.id, "directive_version": directive.version}
            context.suites.add(gx.ExpectationSuite(name=suite_name(source), expectations=expectations, meta=meta))


def _configuration(type_: str, kwargs: dict, rule: str, action: str, protects):
    """A rule as a GE expectation configuration, with unprefixed columns as the directive has them.

    GE shows a description instead of its own wording; this one names the rule, its type and
    kwargs, action and protects, so a page reads like the directive and can be searched by rule.
    """
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
    description = f"{rule}: {type_}({args}); action {action}; protects {', '.join(protects)}"
    meta = {"rule": rule, "action": action, "protects": list(protects)}
    return ExpectationConfiguration(type=type_, kwargs=kwargs, meta=meta, description=description)


def _suite_result(batch_id: int, source: str, rows: list[Row], run_id, path: str):
    from great_expectations import __version__
    from great_expectations.core.expectation_validation_result import ExpectationSuiteValidationResult, ExpectationValidationResult

    results = []
    for r in sorted(rows, key=lambda r: r["rule"]):
        config = _configuration(r["expectation_type"], json.loads(r["kwargs_json"] or "{}"), r["rule"], r["action"], r["protects"])
        results.append(ExpectationValidationResult(success=r["success"], expectation_config=config, result=_counts(r)))
    passed = sum(r.success for r in results)
    return ExpectationSuiteValidationResult(
        success=passed == len(results),
        results=results,
        suite_name=suite_name(source),
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100.0 * passed / len(results),
        },
        meta={
            "great_expectations_version": __version__,
            "run_id": run_id.to_json_dict(),
            # GE shows this under "Show more info..." and takes the index's asset name from it.
            "batch_spec": {
                "data_asset_name": source,
                "batch_id": batch_id,
                "directive": f"{rows[0]['directive_id']} v{rows[0]['directive_version']}",
                "results_table": path,
            },
        },
    )


def _counts(row: Row) -> dict:
    """GE's result dict from the stored counts; percents are of the source's rows in the batch."""
    evaluated, unexpected, observed = row["evaluated_count"], row["unexpected_count"], row["observed_value"]
    if unexpected is not None:
        percent = 100.0 * unexpected / evaluated if evaluated else 0.0
        return {"element_count": evaluated, "unexpected_count": unexpected, "unexpected_percent": percent}
    if observed is None and row["expectation_type"] in _ROW_COUNT_TYPES:
        observed = evaluated
    return {"element_count": evaluated, "observed_value": observed}
