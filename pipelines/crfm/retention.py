"""Retention in the functional layer: `crm purge` trims each source's daily partials to the
source's `delta_retention_days`, as it trims the source's CROM rows.

Partials are per-day sums, so a day older than the source keeps its events is deleted whole;
the next CRFM run recomputes the parameters from what is left (silver's purge gives it a
new version).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from pipelines.config import Profile
from pipelines.crfm.job import measured_parts, partials_path
from pipelines.crfm.parameters import DAY, feeds
from pipelines.directives import DirectiveSet, Source
from pipelines.erasure import Erased, vacuum
from pipelines.tables import table_name


def purge_partials(spark: SparkSession, profile: Profile, directives: DirectiveSet, sources: dict[str, Source], now: datetime) -> list[Erased]:
    """Delete the partials days older than their source's retention, then VACUUM."""
    erased = []
    for functional in directives.functional.values():
        directive = functional.directive
        for part, measured in measured_parts(directive).items():
            for name, feed in feeds(measured).items():
                days = sources[feed.source].delta_retention_days if feed.source in sources else None
                path = partials_path(profile, directive.id, part, name)
                if days is None or not DeltaTable.isDeltaTable(spark, path):
                    continue
                old = F.col(DAY) < F.lit((now - timedelta(days=days)).date())
                table = DeltaTable.forPath(spark, path)
                deleted = table.toDF().where(old).count()
                if deleted:  # a DELETE that matches nothing would still commit a version
                    table.delete(old)
                    vacuum(spark, path, None)
                    erased.append(Erased(f"{table_name(Path(path))} ({feed.source})", deleted, 0))
    return erased
