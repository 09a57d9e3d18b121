"""Events of items with a lifecycle datafied, e.g. a service ticket's: how long the item had
been open at each event, and whether that is past its target (an SLA).

Each event carries the item's opening time (help desks send the ticket's `created_at` with
every update), so both are facts of the event alone: no state is kept across batches. The
functional layer reads them per item (open tickets, breaches, time to resolve).
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

from pipelines.derived_fields import LIFECYCLE_FIELDS


def lifecycle_columns(opened: str, target_hours: str | None, time_column: str) -> list[Column]:
    """LIFECYCLE_FIELDS as columns over an event's time, its item's opening time and target."""
    hours_open = (F.col(time_column).cast("double") - F.col(opened).cast("double")) / 3600.0
    overdue = hours_open > F.col(target_hours) if target_hours else F.lit(None).cast("boolean")
    derived = {"hours_open": hours_open, "overdue": overdue}
    return [derived[f.name].cast(f.dataType).alias(f.name) for f in LIFECYCLE_FIELDS]
