"""The record of CRFM's last finished run, which lets a run with nothing new skip Spark."""

from __future__ import annotations

from datetime import date

import pandas as pd
from deltalake import write_deltalake

from pipelines.crfm.job import CurrentRecord, FunctionalRun, RolledUp


def _tables(folder) -> dict[str, str]:
    silver = {}
    for source in ("web", "transaction"):
        silver[source] = str(folder / f"silver_{source}")
        write_deltalake(silver[source], pd.DataFrame({"event_id": ["a", "b"]}))
    return silver


def _run(folder, source_version: int) -> FunctionalRun:
    out = str(folder / "customer_metrics")
    write_deltalake(out, pd.DataFrame({"customer_id": ["C1"]}), mode="overwrite")
    return FunctionalRun(out, 1, source_version, 2, False, False, {"roll-up": 1.0}, {"by_channel": out}, {"": 1, "by_channel": None})


def _save(record: CurrentRecord, silver: dict[str, str], run: FunctionalRun, tables: list[str]) -> None:
    record.save(silver, run, tables, RolledUp(date(2026, 1, 31), {}, {run.table: 0}))


def test_a_run_is_current_until_silver_or_the_directive_changes(tmp_path):
    silver = _tables(tmp_path)
    record = CurrentRecord(tmp_path / "crfm" / "current.json", "print-1")
    assert record.unchanged(silver) is None  # no record yet
    run = _run(tmp_path, source_version=0)  # both silver tables at version 0
    _save(record, silver, run, [run.table])

    found = record.unchanged(silver)
    assert found is not None and found.skipped and found.new_events == 0 and found.recomputed == {"": 0, "by_channel": 0}
    assert record.rolled_up() == RolledUp(date(2026, 1, 31), {}, {run.table: 0})
    assert (found.table, found.customers, found.source_version, found.breakdowns) == (run.table, 1, 0, run.breakdowns)
    assert CurrentRecord(record.path, "print-2").unchanged(silver) is None  # another directive
    assert CurrentRecord(record.path, "print-2").rolled_up() is None
    write_deltalake(silver["web"], pd.DataFrame({"event_id": ["c"]}), mode="append")
    assert record.unchanged(silver) is None  # silver has a new version


def test_not_current_when_silver_moved_during_the_run_or_a_table_is_gone(tmp_path):
    silver = _tables(tmp_path)
    record = CurrentRecord(tmp_path / "current.json", "print")
    _save(record, silver, _run(tmp_path, source_version=-1), [])  # computed from other versions than silver's now
    assert record.unchanged(silver) is None
    assert record.rolled_up() is not None  # what the tables were computed from holds all the same

    run = _run(tmp_path, source_version=0)
    _save(record, silver, run, [run.table, str(tmp_path / "dropped_table")])
    assert record.path.exists() and record.unchanged(silver) is None  # a table it keeps is missing
    record.path.write_text("{not json")
    assert record.unchanged(silver) is None and record.rolled_up() is None
