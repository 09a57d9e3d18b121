"""Great Expectations suites compiled from the operational directive, run once per micro-batch.

One ephemeral context, one Spark data source and one ValidationDefinition per source are
built when the job starts and reused for every batch: contexts leak memory when rebuilt.
Only counts and success flags are kept; GE's unexpected value lists carry raw values and
personal data, so they are never stored or logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from pydantic import ValidationError
from pydantic.v1 import ValidationError as PydanticV1ValidationError  # GE's expectation models
from pyspark.sql import DataFrame, Row
from pyspark.sql import types as T

from pipelines.directives import Expectation, Source
from pipelines.errors import CrmError

RESULTS_SCHEMA = T.StructType(
    [
        T.StructField("batch_id", T.LongType(), False),
        T.StructField("source", T.StringType(), False),
        T.StructField("rule", T.StringType(), False),
        T.StructField("expectation_type", T.StringType(), False),
        T.StructField("column", T.StringType(), True),
        T.StructField("evaluated_count", T.LongType(), True),
        T.StructField("unexpected_count", T.LongType(), True),
        T.StructField("success", T.BooleanType(), False),
        T.StructField("directive_id", T.StringType(), False),
        T.StructField("directive_version", T.IntegerType(), False),
        T.StructField("validated_at", T.TimestampType(), False),
    ]
)


def expectation_class(type_name: str):
    """The GE class for a snake_case expectation type, or None if GE has no such type."""
    import great_expectations.expectations as gxe

    camel = "".join(part.capitalize() for part in type_name.split("_"))
    return getattr(gxe, camel, None)


def build_expectation(rule: Expectation, where: str):
    cls = expectation_class(rule.type)
    if cls is None:
        raise CrmError(f"{where}: type: {rule.type!r} is not a Great Expectations expectation type")
    try:
        # `meta.rule` ties each GE result back to the directive's rule name.
        return cls(**rule.kwargs, meta={"rule": rule.name})
    except (ValidationError, PydanticV1ValidationError, TypeError) as exc:
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        key = ".".join(str(p) for p in first["loc"])
        raise CrmError(f"{where}: kwargs{'.' + key if key else ''}: {first['msg']}") from exc


@dataclass
class _Suite:
    source: str
    rules: list[Expectation]
    definition: object  # gx.ValidationDefinition


class BatchValidator:
    """Validates each source's rows of a micro-batch with its compiled suite."""

    def __init__(self, sources: dict[str, Source], directive_id: str, directive_version: int, where: str):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.directive_id = directive_id
        self.directive_version = directive_version
        self._context = gx.get_context(mode="ephemeral")
        self._context.variables.progress_bars = ProgressBarsConfig(globally=False)
        datasource = self._context.data_sources.add_spark(name="crom")
        self._suites: dict[str, _Suite] = {}
        for name, source in sources.items():
            if not source.expectations:
                continue
            suite = gx.ExpectationSuite(name=f"{directive_id}.{name}")
            for i, rule in enumerate(source.expectations):
                suite.add_expectation(build_expectation(rule, f"{where}: sources.{name}.expectations[{i}] ({rule.name})"))
            suite = self._context.suites.add(suite)
            batch = datasource.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}_batch")
            definition = self._context.validation_definitions.add(
                gx.ValidationDefinition(name=f"{directive_id}.{name}.batch", data=batch, suite=suite)
            )
            self._suites[name] = _Suite(name, source.expectations, definition)

    def validate(self, source: str, rows: DataFrame, batch_id: int) -> list[Row]:
        """One result row per rule; nothing for an empty batch (GE would report success)."""
        suite = self._suites.get(source)
        if suite is None or rows.isEmpty():
            return []
        result = suite.definition.run(batch_parameters={"dataframe": rows}, result_format="SUMMARY")
        now = datetime.now(timezone.utc)
        rules = {rule.name: rule for rule in suite.rules}
        out = []
        for res in result.results:
            rule = rules[res.expectation_config.meta["rule"]]
            counts = res.result or {}
            out.append(
                Row(
                    batch_id=batch_id,
                    source=source,
                    rule=rule.name,
                    expectation_type=rule.type,
                    column=rule.kwargs.get("column"),
                    evaluated_count=counts.get("element_count"),
                    unexpected_count=counts.get("unexpected_count"),
                    success=bool(res.success),
                    directive_id=self.directive_id,
                    directive_version=self.directive_version,
                    validated_at=now,
                )
            )
        return out


def check_expectations(sources: dict[str, Source], where: str) -> None:
    """Compile every rule without running anything; raises CrmError naming file and rule."""
    for name, source in sources.items():
        for i, rule in enumerate(source.expectations):
            build_expectation(rule, f"{where}: sources.{name}.expectations[{i}] ({rule.name})")
