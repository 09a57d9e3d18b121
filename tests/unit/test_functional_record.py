"""The record of CRFM's last finished run, which lets a run with nothing new skip Spark."""

from __future__ import annotations

import pandas as pd
from deltalake import write_deltalake

from pipelines.crfm.job import CurrentRecord, FunctionalRun


def _tables(folder) -> dict[str, str]:
    silver = {}
    for source in ("web", "transaction"):
        silver[source] = str(folder / f"silver_{source}")
        write_deltalake(silver[source], pd.DataFrame({"event_id": ["a", "b"]}))
    return silver


def _run(folder, source_version: int) -> FunctionalRun:
    out = str(folder / "customer_metrics")
    write_deltalake(out, pd.DataFrame({"customer_id": ["C1"]}), mode="overwrite")
    return FunctionalRun(out, 1, source_version, 2, False, False, {"roll-up": 1.0}, {"by_channel": out})


def test_a_run_is_current_until_silver_or_the_directive_changes(tmp_path):
    silver = _tables(tmp_path)
    record = CurrentRecord(tmp_path / "crfm" / "current.json", "print-1")
    assert record.unchanged(silver) is None  # no record yet
    run = _run(tmp_path, source_version=0)  # both silver tables at version 0
    record.save(silver, run, [run.table])

    found = record.unchanged(silver)
    assert found is not None and found.skipped and found.new_events == 0
    assert (found.table, found.customers, found.source_version, found.breakdowns) == (run.table, 1, 0, run.breakdowns)
    assert CurrentRecord(record.path, "print-2").unchanged(silver) is None  # another directive
    write_deltalake(silver["web"], pd.DataFrame({"event_id": ["c"]}), mode="append")
    assert record.unchanged(silver) is None  # silver has a new version


def test_no_record_when_silver_moved_during_the_run_or_a_table_is_gone(tmp_path):
    silver = _tables(tmp_path)
    record = CurrentRecord(tmp_path / "current.json", "print")
    record.save(silver, _run(tmp_path, source_version=-1), [])  # computed from other versions than silver's now
    assert not record.path.exists()

    run = _run(tmp_path, source_version=0)
    record.save(silver, run, [run.table, str(tmp_path / "dropped_table")])
    assert record.path.exists() and record.unchanged(silver) is None  # a table it keeps is missing
    record.path.write_text("{not json")
    assert record.unchanged(silver) is None
