"""Every expression of the directives, analysed before any data: `crm directives check`.

Loading the directives checks names and references. This goes further: each Spark SQL
expression (parameter filters, segment and breakdown scores, KPI formulas, recommendation
conditions and priorities) is analysed by Spark against empty frames shaped like the tables
it will run on: silver as the operational directive and schemas define it, the functional
parameters as CRFM plans them, and the purchase model's outputs. No job runs and no table is
read, so a directive can be checked before its first event arrives.
"""

from __future__ import annotations

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.crfm.job import measured_parts
from pipelines.crfm.parameters import check_plan
from pipelines.crfm.segments import check_scores
from pipelines.crom.records import silver_schema
from pipelines.crsm.kpis import check_kpis
from pipelines.crsm.recommend import check_rules
from pipelines.directives import MODEL_OUTPUTS, DirectiveSet


def check_expressions(spark: SparkSession, directives: DirectiveSet) -> int:
    """Analyse every expression; a CrmError names the directive, the expression and why.
    Returns how many expressions were analysed."""
    silver = {
        name: silver_schema(directives.schemas[name], src.datafy.derived_fields())
        for op in directives.operational.values()
        for name, src in op.directive.sources.items()
    }
    checked = 0
    planned = {}  # functional directive id -> its (empty) customer parameters
    for functional in directives.functional.values():
        for part, each in measured_parts(functional.directive).items():
            where = f"{functional.path}" + (f": breakdowns ({part})" if part else "")
            params = check_plan(spark, each, silver, where)
            checked += sum(1 for p in each.parameters if p.filter) + sum(1 for p in each.parameters if p.of)
            if each.segmentation is not None:
                check_scores(params, each.segmentation, where, "scores" if part else "segmentation.scores")
                checked += len(each.segmentation.scores)
            if not part:
                planned[functional.directive.id] = params
    for strategic in directives.strategic.values():
        directive = strategic.directive
        for functional in (f for f in directives.functional.values() if f.directive.serves == directive.id):
            params = planned[functional.directive.id]
            if directive.purchase_model is not None:
                params = params.select("*", *[F.lit(None).cast("double").alias(name) for name in MODEL_OUTPUTS])
            check_kpis(params, directive, str(strategic.path))
            check_rules(params, directive, str(strategic.path))
            rules = directive.recommendations.rules if directive.recommendations else []
            checked += len(directive.kpis) + 2 * len(rules)
    return checked
