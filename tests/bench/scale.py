"""Benchmarks of CROM as a scheduler or an operator runs it: `crm ingest` in a process of its
own (restart time; throughput on a standalone cluster) and the
end-to-end latency of a running query at a steady input rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import functions as F

from pipelines.cluster import standalone
from pipelines.generator import EventStream, produce
from tests.helpers import crm_env

CRM = str(Path(sys.executable).parent / "crm")
CLUSTER_BATCH = 25_000  # records a batch in the cluster run
CLUSTER_WARM_UP = 3  # batches left out before measuring: the JVMs compile the first batches' code
CLUSTER_BATCHES = 4  # measured batches after the warm-up


def _ingest_env(profile, work: Path, name: str, **extra: str) -> dict:
    return crm_env(profile.model_copy(update={"lakehouse": work / f"{name}-lakehouse", "checkpoints": work / f"{name}-checkpoints"}), **extra)


def _start_ingest(env: dict, *args: str) -> subprocess.Popen:
    """`crm ingest` in its own process group."""
    return subprocess.Popen([CRM, "ingest", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait(condition: Callable[[], bool], proc: subprocess.Popen | None, what: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: {what} did not happen (process ended or {timeout_s:.0f}s passed)")
        time.sleep(0.2)  # polled against the deadline above


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def first_batch_and_restart(profile, work: Path) -> dict[str, float]:
    """Start `crm ingest` and time its first committed batch (`crom_first_batch_s`); then kill
    it with SIGKILL, restart it, and time its first committed batch again (`restart_to_first_batch_s`)."""
    env = _ingest_env(profile, work, "restart")
    commits = Path(env["CRM_CHECKPOINTS"]) / "crom_ingest" / "commits"
    done = lambda: sum(1 for f in commits.iterdir() if f.name.isdigit()) if commits.is_dir() else 0  # noqa: E731
    started = time.monotonic()
    proc = _start_ingest(env)
    _wait(lambda: done() > 0, proc, "a first committed batch")
    first = time.monotonic() - started
    _stop(proc)
    before = done()
    started = time.monotonic()
    proc = _start_ingest(env)
    try:
        _wait(lambda: done() > before, proc, "a committed batch after the restart")
        return {"crom_first_batch_s": first, "restart_to_first_batch_s": time.monotonic() - started}
    finally:
        _stop(proc)


def _batches(progress: Path) -> list[dict]:
    if not progress.exists():
        return []
    lines = [json.loads(line) for line in progress.read_text().splitlines() if line.strip()]
    return [line for line in lines if line["rows"]]


def ingest_eps(profile, work: Path, name: str, *args: str, **env: str) -> float:
    """Records per second of `crm ingest` over CLUSTER_BATCHES batches after CLUSTER_WARM_UP
    batches, from its own progress log (batch durations: the JVM's start is not counted)."""
    run_env = _ingest_env(profile, work, name, CRM_MAX_OFFSETS_PER_TRIGGER=str(CLUSTER_BATCH), **env)
    progress = Path(run_env["CRM_CHECKPOINTS"]) / "progress" / "crom_ingest.jsonl"
    proc = _start_ingest(run_env, *args)
    try:
        needed = CLUSTER_WARM_UP + CLUSTER_BATCHES
        _wait(lambda: len(_batches(progress)) >= needed, proc, f"{needed} batches of {name}")
    finally:
        _stop(proc)
    measured = _batches(progress)[CLUSTER_WARM_UP:needed]
    return sum(b["rows"] for b in measured) / (sum(b["batch_ms"] for b in measured) / 1000)


def cluster(profile, work: Path) -> dict[str, float]:
    """CROM on a standalone cluster of two one-core workers, as a cluster user runs it."""
    with standalone(work / "cluster") as master:
        return {"cluster_eps": ingest_eps(profile, work, "cluster", "--conf", "cluster", CRM_SPARK_MASTER=master)}


def _commit_times(table: Path) -> dict[str, int]:
    """Data file name -> the time (ms) of the Delta commit that added it: when readers see it."""
    added: dict[str, int] = {}
    for entry in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in entry.read_text().splitlines() if line.strip()]
        when = next(a["commitInfo"]["timestamp"] for a in actions if "commitInfo" in a)
        added.update({a["add"]["path"].rsplit("/", 1)[-1]: when for a in actions if "add" in a})
    return added


def _latency_quantiles(spark, tables: list[Path], kafka_time: str) -> tuple[float, float, int]:
    """p50 and p95 seconds from each record's Kafka timestamp to the commit that made it
    visible, and how many records were measured."""
    commits = spark.createDataFrame([(name, ms) for t in tables for name, ms in _commit_times(t).items()], "file string, commit_ms long")
    rows = None
    for table in tables:
        df = spark.read.format("delta").load(str(table)).select(F.col(kafka_time).alias("kafka_time"), F.col("_metadata.file_name").alias("file"))
        rows = df if rows is None else rows.unionByName(df)
    seconds = rows.join(commits, "file").select(((F.col("commit_ms") - F.unix_millis("kafka_time")) / 1000).alias("s"))
    row = seconds.agg(F.percentile("s", [0.5, 0.95]).alias("q"), F.count("*").alias("n")).first()
    return row["q"][0], row["q"][1], row["n"]


def latency(spark, profile, stream: EventStream, first: int, rate: float, seconds: float, start_query, tables: list[Path], kafka_time: str) -> tuple[float, float, int]:
    """p50 and p95 end-to-end latency of a running query while `rate` events/s arrive for
    `seconds`, and how many records were measured. The query starts at the end of the topics."""
    query = start_query()
    try:
        _wait(lambda: query.lastProgress is not None, None, "the latency query's first trigger", 300)
        count = int(rate * seconds)
        produce(profile.kafka, stream, first, count, rate=rate, progress=lambda _: None)
        # Only these events arrive after the query's start (from the end of the topics).
        read = lambda: sum(p["numInputRows"] for p in query.recentProgress)  # noqa: E731
        _wait(lambda: read() >= count, None, "the latency query catching up", 600)
    finally:
        query.stop()
    return _latency_quantiles(spark, tables, kafka_time)
