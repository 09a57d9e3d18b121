"""Where each layer's Delta tables live: the only contract between the layers.

CROM writes `crom/*`, CRFM reads `crom/silver_*` and writes `crfm/*`, CRSM reads `crfm/*`
and writes `crsm/*`. No layer imports another layer's code to find them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Profile


def lakehouse_tables(lakehouse: Path) -> list[Path]:
    """Every Delta table of every layer: the folders `<layer>/<table>` holding a `_delta_log`."""
    return sorted(log.parent for log in lakehouse.glob("*/*/_delta_log"))


def table_name(table: Path) -> str:
    """`layer/table`, how reports and the catalogue name a table."""
    return f"{table.parent.name}/{table.name}"


@dataclass(frozen=True)
class CromTables:
    bronze: str
    quarantine: str
    late: str
    validation_results: str
    batch_audit: str
    identity_map: str
    silver: dict[str, str]
    web_sessions: dict[str, str]  # per web source with a visitor field
    state: Path  # job state that travels with the tables, e.g. the log template miner's

    def log_templates_state(self, source: str) -> Path:
        """The miner's state: template ids in silver refer to it, so it lives beside silver."""
        return self.state / f"log_templates_{source}.json"

    @classmethod
    def of(cls, profile: Profile, sources: list[str]) -> "CromTables":
        return cls(
            bronze=profile.table_path("crom", "bronze"),
            quarantine=profile.table_path("crom", "quarantine"),
            late=profile.table_path("crom", "late_events"),
            validation_results=profile.table_path("crom", "validation_results"),
            batch_audit=profile.table_path("crom", "batch_audit"),
            identity_map=profile.table_path("crom", "identity_map"),
            silver={s: silver_table(profile, s) for s in sources},
            web_sessions={s: profile.table_path("crom", f"web_sessions_{s}") for s in sources},
            state=Path(profile.table_path("crom", "_state")),
        )


def silver_table(profile: Profile, source: str) -> str:
    return profile.table_path("crom", f"silver_{source}")


def functional_table(profile: Profile, directive_id: str, part: str = "") -> str:
    """The parameters of a functional directive; `part` names its other tables (variants)."""
    name = directive_id.split(".", 1)[1]
    return profile.table_path("crfm", f"{name}_{part}" if part else name)


def strategic_table(profile: Profile, directive_id: str, part: str = "") -> str:
    """The KPI snapshots of a strategic directive; `part` names its other tables (customers, model)."""
    name = directive_id.split(".", 1)[1]
    return profile.table_path("crsm", f"{name}_{part}" if part else name)
