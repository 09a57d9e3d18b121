"""`crm status`: what the lakehouse holds and how far ingest is behind, without Spark.

Tables are read through delta-rs (row count, version, last commit); the ingest lag is the end
of each topic minus the offsets of the newest batch the CROM query committed, read from its
checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from deltalake import DeltaTable

from pipelines.tables import lakehouse_tables, table_name


@dataclass(frozen=True)
class TableState:
    name: str  # layer/table
    rows: int | None
    version: int | None
    committed_at: datetime | None
    operation: str
    error: str | None = None  # why delta-rs could not read it


def tables(lakehouse: Path) -> list[TableState]:
    states = []
    for table in lakehouse_tables(lakehouse):
        name = table_name(table)
        try:
            dt = DeltaTable(str(table))
            last = dt.history(1)[0]
            when = datetime.fromtimestamp(last["timestamp"] / 1000, timezone.utc)
            states.append(TableState(name, dt.to_pyarrow_dataset().count_rows(), dt.version(), when, last.get("operation", "")))
        except Exception as exc:  # noqa: BLE001 - one unreadable table must not hide the others
            states.append(TableState(name, None, None, None, "", (str(exc).strip().splitlines() or [type(exc).__name__])[0]))
    return states


def committed_offsets(checkpoint: Path) -> dict[tuple[str, int], int]:
    """Kafka offsets the newest committed batch of a query read up to; empty before its first."""
    commits = checkpoint / "commits"
    done = [int(f.name) for f in commits.iterdir() if f.name.isdigit()] if commits.is_dir() else []
    if not done:
        return {}
    lines = (checkpoint / "offsets" / str(max(done))).read_text().splitlines()
    offsets = json.loads(lines[2])  # "v1", the batch's metadata, then the (one) Kafka source's offsets
    return {(topic, int(partition)): offset for topic, parts in offsets.items() for partition, offset in parts.items()}


def lag(end: dict[tuple[str, int], int], committed: dict[tuple[str, int], int]) -> dict[str, int]:
    """Records per topic that the query has not read yet."""
    behind: dict[str, int] = {}
    for (topic, partition), offset in end.items():
        behind[topic] = behind.get(topic, 0) + max(0, offset - committed.get((topic, partition), 0))
    return behind
