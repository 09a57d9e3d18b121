"""Structured progress of the CROM query, for operators: a JSON line per micro-batch in
`<checkpoints>/progress/<query>.jsonl`, and the same figures as Prometheus metrics in
`<checkpoints>/progress/<query>.prom` (node_exporter's textfile format, which suits jobs that
cron starts and that exit).

Each line has the rows and rows/s, the batch duration, the quarantine rate (from the batch
writer's own counts), the watermark, and the lag: Kafka records between the offsets the batch
read up to and the end of each topic.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from pyspark.sql.streaming import StreamingQueryListener

log = logging.getLogger(__name__)


def offsets_behind(start: str | None, end: str | None) -> int | None:
    """Records between two Kafka source offsets (JSON {topic: {partition: offset}})."""
    if not start or not end:
        return None
    read, latest = json.loads(start), json.loads(end)
    return sum(max(0, latest[t][p] - read.get(t, {}).get(p, 0)) for t in latest for p in latest[t])


class ProgressListener(StreamingQueryListener):
    """Writes each progress event of the named query; other queries are left alone."""

    def __init__(self, query: str, folder: Path):
        self.query = query
        self.lines = folder / f"{query}.jsonl"
        self.metrics = folder / f"{query}.prom"
        # batch id -> records, quarantined, watermarks, from the batch writer (`add`) until the batch's progress event
        self.batch_counts: dict[int, dict] = {}
        folder.mkdir(parents=True, exist_ok=True)
        self.ids: set[str] = set()
        self.terminated = threading.Event()  # the bus delivers every progress event before this
        self.registry = CollectorRegistry()
        gauge = lambda name, text: Gauge(f"crm_{name}", text, ["query"], registry=self.registry)  # noqa: E731
        self.gauges = {
            "rows": gauge("batch_rows", "Kafka records in the last micro-batch"),
            "rows_per_s": gauge("processed_rows_per_second", "Records processed per second in the last micro-batch"),
            "batch_ms": gauge("batch_duration_ms", "Duration of the last micro-batch"),
            "quarantine_rate": gauge("quarantine_rate", "Share of the last micro-batch's records sent to quarantine"),
            "lag": gauge("kafka_lag_records", "Records between the last batch's end offsets and the end of the topics"),
            "batch": gauge("batch_id", "Id of the last micro-batch"),
        }

    def onQueryStarted(self, event) -> None:
        if event.name == self.query:
            self.ids.add(str(event.id))

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        if str(event.id) in self.ids:
            self.terminated.set()

    def close(self, timeout: float = 30.0) -> None:
        """Wait for the query's last events (the listener bus is asynchronous), at most `timeout` s."""
        if not self.terminated.wait(timeout):
            log.warning("progress of %s: the query's last events did not arrive within %.0fs", self.query, timeout)

    def add(self, result) -> None:
        """Keep a batch's counts (a `BatchResult`) until its progress event arrives."""
        if result.counts:
            counts = {"records": result.total("records"), "quarantined": result.total("quarantined"), "watermarks": result.watermarks}
            self.batch_counts[result.batch_id] = counts

    def onQueryProgress(self, event) -> None:
        p = event.progress
        if p.name != self.query:
            return
        counts = self.batch_counts.pop(p.batchId, {})
        lags = [offsets_behind(s.endOffset, s.latestOffset) for s in p.sources]
        line = {
            "query": p.name,
            "batch": p.batchId,
            "timestamp": p.timestamp,
            "rows": p.numInputRows,
            "input_rows_per_s": p.inputRowsPerSecond,
            "processed_rows_per_s": p.processedRowsPerSecond,
            "batch_ms": p.batchDuration,
            "quarantine_rate": counts["quarantined"] / counts["records"] if counts.get("records") else None,
            "watermarks": counts.get("watermarks"),  # per source: CROM's own, not Spark's
            "lag_records": sum(lag for lag in lags if lag is not None) if any(lag is not None for lag in lags) else None,
        }
        try:
            with self.lines.open("a") as out:
                out.write(json.dumps(line) + "\n")
            values = {"rows": line["rows"], "rows_per_s": line["processed_rows_per_s"], "batch_ms": line["batch_ms"],
                      "quarantine_rate": line["quarantine_rate"], "lag": line["lag_records"], "batch": line["batch"]}  # fmt: skip
            for key, value in values.items():
                if value is not None:
                    self.gauges[key].labels(query=p.name).set(value)
            write_to_textfile(str(self.metrics), self.registry)
        except OSError as exc:  # progress reporting must never stop the pipeline
            log.warning("could not write progress for batch %s: %s", p.batchId, exc)
