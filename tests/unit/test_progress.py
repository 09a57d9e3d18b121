"""The progress listener's per-batch lines, from the batch writer's results."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pipelines.crom.ingest import BatchResult
from pipelines.crom.progress import ProgressListener


def _progress_event(batch_id: int) -> SimpleNamespace:
    progress = SimpleNamespace(
        name="crom_ingest", batchId=batch_id, timestamp="2031-01-01T00:00:00Z", numInputRows=10,
        inputRowsPerSecond=5.0, processedRowsPerSecond=4.0, batchDuration=2500, sources=[],
    )  # fmt: skip
    return SimpleNamespace(progress=progress)


def test_a_batchs_counts_are_kept_only_until_its_progress_line_is_written(tmp_path):
    listener = ProgressListener("crom_ingest", tmp_path)
    counts = [
        {"source": "web", "records": 6, "quarantined": 1, "watermark": None},
        {"source": "log", "records": 4, "quarantined": 1, "watermark": None},
    ]
    listener.add(BatchResult(7, counts, {"parse+validate": 0.5}))
    listener.add(BatchResult(8, [], {}))  # an empty batch has nothing to report
    listener.onQueryProgress(_progress_event(7))
    line = json.loads((tmp_path / "crom_ingest.jsonl").read_text())
    assert (line["batch"], line["rows"], line["quarantine_rate"]) == (7, 10, 0.2)
    assert listener.batch_counts == {}  # a stream that runs for months keeps nothing per batch
