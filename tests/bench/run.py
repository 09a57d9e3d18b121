"""`make bench`: throughput of the generator, a plain Kafka->Delta passthrough and CROM.

Everything runs on this machine, on one preloaded set of topics (1M events by default),
with the project's own broker on a free 127.0.0.1 port and about 50k-record batches:

- passthrough: Kafka records appended to Delta as they are (the baseline);
- parse only: the CROM job with every expectation and datafication removed from the directive;
- validated: the CROM job with the shipped directive's Great Expectations rules, no datafication;
- datafied: the shipped directive as it is: rules, log templates and social text facts;
- log_templates: the shipped log template miner over the eight Loghub samples, in this one
  Python process (one core), lines per second;
- sentiment: the social text model over real tweets, as an Arrow batch UDF against a
  row-at-a-time Python UDF on the same rows, and the latency of single texts;
- restart: `crm ingest` timed from its start to its first committed batch, then killed with
  SIGKILL, restarted, and timed again;
- functional: the CRFM job over the datafied run's silver tables, incremental (the newest 1%
  of events folded into partials kept from the other 99%) against a full recompute;
- erasure: `crm forget` over the functional part's lakehouse, one customer (`forget_1_s`), then
  a hundred in one request (`forget_100_s`);
- cluster: `crm ingest` on a standalone cluster of two one-core workers, records per second
  (tests/bench/scale.py);
- latency: a running passthrough and a running CROM, each fed at half its maximum rate,
  timed from each record's Kafka timestamp to the Delta commit that shows it;
- small_batches: CROM's fixed cost, the batch writer fed 500-record batches directly, with
  how many classes Spark compiled for each (latency is about 1.5 batches of this cost), next
  to its floors: one empty Delta append (`delta_commit_floor_s`) and the same rows appended
  as they are to one table (`passthrough_small_batch_s_p50`).

Each variant's batches are also broken down by step (`<variant>_phase_ms_p50.<step>`), so a
difference between variants can be attributed. Each CROM variant first runs over the first
batch's events on throwaway tables (JVM warm-up). Batch times are paired by batch id (the
same offsets in both CROM runs), so `validation_added_ms_p50` is the median of what
validation added to each batch. Results merge into bench-results.json (keys from other
benchmarks are kept) and a Markdown table.

    python -m tests.bench.run [--events N] [--variants parse_only,validated] [--parts cluster,latency]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import socket
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from functools import reduce
from pathlib import Path

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.util import inheritable_thread_target

from pipelines import broker
from pipelines.config import REPO_ROOT, load_profile, sample_data
from pipelines.crfm import rollup
from pipelines.crfm.job import run_functional
from pipelines.crom.resolve import run_identities, run_web_sessions
from pipelines.crom.ingest import BatchWriter, start_ingest, start_query
from pipelines.crom.logs import LogTemplates
from pipelines.crom.text import score_texts
from pipelines.directives import CUSTOMER, UNTRUSTED, Datafy, load_directives
from pipelines.erasure import forget
from pipelines.generator import FEED, EventStream, produce
from pipelines.spark import get_spark
from pipelines.tables import CromTables, functional_table, silver_table
from pipelines.topics import ensure_topics
from tests.bench import scale
from tests.eval.run import loghub_samples

RESULTS = REPO_ROOT / "bench-results.json"
LATENCY_SECONDS = 60
# The generator's scale: a live feed's.
TRAFFIC = FEED
PARTS = ("functional", "erasure", "log_templates", "sentiment", "restart", "cluster", "latency", "small_batches")
SMALL_BATCHES, SMALL_BATCH_RECORDS, SMALL_BATCH_WARM_UP = 16, 500, 3
KAFKA_ROW = "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, timestampType int"
STEPS = {"parse_only": "", "validated": ", Great Expectations", "datafied": ", Great Expectations, log templates, text facts"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _timed_query(query) -> float:
    started = time.monotonic()
    query.awaitTermination()
    if query.exception() is not None:
        raise RuntimeError(f"benchmark query failed: {query.exception()}")
    return time.monotonic() - started


def _batch_ms(query) -> dict[int, int]:
    """Per batch id, the time spent in the sink (foreachBatch), from the query's progress."""
    return {p["batchId"]: p["durationMs"]["addBatch"] for p in query.recentProgress if p["numInputRows"]}


def _phase_p50(variant: str, history: dict[int, dict[str, float]]) -> dict[str, float]:
    """Median milliseconds of each step of a variant's batches (BatchWriter's phases)."""
    phases = sorted({p for steps in history.values() for p in steps})
    return {
        f"{variant}_phase_ms_p50.{p}": 1000 * statistics.median(steps.get(p, 0.0) for steps in history.values()) for p in phases
    }


def _variant(operational, rules: bool, datafy: bool):
    """The operational directive with its rules and/or its datafication removed."""
    directive = operational.directive
    removed = {**({} if rules else {"expectations": []}), **({} if datafy else {"datafy": Datafy()})}
    sources = {n: s.model_copy(update=removed) for n, s in directive.sources.items()}
    return replace(operational, directive=directive.model_copy(update={"sources": sources}))


def sentiment(spark, texts: list[str]) -> dict[str, float]:
    """The label-free model over the same rows as an Arrow batch UDF and as a row-at-a-time
    Python UDF (what scoring one text per call costs), and single-text latency."""
    rows = spark.createDataFrame([(t,) for t in texts], "text string").repartition(2).cache()
    rows.count()
    batched = F.pandas_udf(lambda column: pd.Series([s.score for s in score_texts(column.tolist())]), "double")
    one_by_one = F.udf(lambda text: score_texts([text])[0].score, "double")
    timings = {}
    for name, udf in (("batch", batched), ("row", one_by_one), ("batch", batched), ("row", one_by_one)):
        started = time.monotonic()  # each twice, keeping the second: the first loads the model
        rows.select(F.sum(udf("text"))).first()
        timings[name] = time.monotonic() - started
    rows.unpersist()
    latencies = []
    for text in texts:
        started = time.perf_counter()
        score_texts([text])
        latencies.append((time.perf_counter() - started) * 1000)
    return {
        "sentiment_texts_per_s": len(texts) / timings["batch"],
        "sentiment_row_udf_texts_per_s": len(texts) / timings["row"],
        "sentiment_vs_row_udf": timings["row"] / timings["batch"],
        "sentiment_p99_ms": statistics.quantiles(latencies, n=100)[98],
    }


def log_templates() -> dict[str, float]:
    """Lines per second of the shipped miner (`LogTemplates`) over the eight Loghub samples,
    each with its layout and a fresh state, on one core as the ingest task runs it."""
    samples = loghub_samples(sample_data())
    started = time.monotonic()
    for layout, lines, _ in samples.values():
        miner = LogTemplates(layout)
        for line in lines:
            miner.mine(line)
    return {"log_lines_per_s": sum(len(lines) for _, lines, _ in samples.values()) / (time.monotonic() - started)}


def _tweets(copies: int) -> list[str]:
    """The airline tweets' texts, repeated to a benchmark-sized batch."""
    with (sample_data() / "airline-tweets" / "tweets_dev.csv").open(encoding="utf-8") as handle:
        return [row["text"] for row in csv.DictReader(handle)] * copies


def _warm_up(spark, profile, operational, schemas, work: Path, name: str) -> None:
    """The CROM job over the topics' first batch only, on throwaway tables, so that neither
    measured run pays for the JVM's first compilations (otherwise whichever runs first
    looks slower). It runs until caught up: stopping a query mid-batch is not clean in
    Spark 4.1.1 (its interruption check can overflow the stack on a long error message)."""
    run = profile.model_copy(update={"lakehouse": work / f"warm-up-{name}", "checkpoints": work / f"warm-up-checkpoints-{name}"})
    _timed_query(start_ingest(spark, run, operational, schemas, until_caught_up=True))


def passthrough(spark, profile, topics: list[str], table: str, checkpoint: str, running: bool = False):
    """The baseline: Kafka records appended to Delta as they are, no parsing or checks; until
    caught up from the start of the topics, or `running` from their end like a live job."""
    stream = (
        spark.readStream.format("kafka")
        .options(**profile.kafka.spark_options())
        .option("subscribe", ",".join(topics))
        .option("startingOffsets", "latest" if running else "earliest")
        .option("maxOffsetsPerTrigger", profile.ingest.max_offsets_per_trigger)
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "topic", "partition", "offset", "timestamp")
        .writeStream.format("delta")
        .option("checkpointLocation", checkpoint)
    )
    trigger = {"processingTime": profile.ingest.trigger_interval} if running else {"availableNow": True}
    return stream.trigger(**trigger).start(table)


def _shape_floor(spark, writer: BatchWriter, batch: DataFrame, work: Path, batch_id: int) -> None:
    """The simplest batch with CROM's shape: the same parse into a local checkpoint, one
    aggregation, then in parallel bronze, validation results and one silver table per source
    (each with one Python UDF, as each datafied source has), and an audit row last. No rules,
    no duplicate check, no datafication: what the shape costs before any of CROM's work."""
    staged = writer.stage(batch.coalesce(spark.sparkContext.defaultParallelism)).localCheckpoint(eager=True)
    staged.agg(F.count("*"), F.max("kafka_offset")).first()
    python_step = F.pandas_udf(lambda values: values.str.len(), "long")
    append = lambda frame, name: frame.write.format("delta").mode("append").save(str(work / "shape-floor" / name))  # noqa: E731
    writes = [
        lambda: append(staged.select("key", "value", "kafka_topic", "kafka_offset"), "bronze"),
        lambda: append(spark.createDataFrame([(batch_id, "rule", True)], "batch_id long, rule string, success boolean"), "validation"),
    ]
    for topic, source in writer.topics.items():
        rows = staged.where(F.col("kafka_topic") == topic).select(F.col(f"{source}.event_id"), "kafka_offset", python_step("value").alias("n"))
        writes.append(lambda rows=rows, source=source: append(rows, f"silver_{source}"))
    with ThreadPoolExecutor(len(writes)) as pool:
        for done in [pool.submit(inheritable_thread_target(write)) for write in writes]:
            done.result()
    append(spark.createDataFrame([(batch_id, 0)], "batch_id long, records long"), "audit")
    staged.unpersist()


def small_batches(spark, profile, operational, schemas, stream: EventStream, work: Path) -> dict[str, float]:
    """The seconds and code compilations of a small CROM batch: the batch writer called directly
    with Kafka-shaped rows (no broker, no trigger), on tables of its own. Medians over the
    batches after the first few, which create tables and compile the first classes. Beside it,
    the floors it is measured against: one empty append to one Delta table, and the same
    Kafka-shaped rows appended as they are to one table (a passthrough's batch), and the
    simplest batch with CROM's shape (`_shape_floor`)."""
    run = profile.model_copy(update={"lakehouse": work / "small-lakehouse", "checkpoints": work / "small-checkpoints"})
    writer = BatchWriter(spark, run, operational, schemas)
    compilations = spark.sparkContext._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    seconds, compiled, floor, passthrough_s, shape_s = [], [], [], [], []
    for batch_id in range(SMALL_BATCHES):
        events = map(stream.event, range(batch_id * SMALL_BATCH_RECORDS, (batch_id + 1) * SMALL_BATCH_RECORDS))
        now = datetime.now(timezone.utc)
        batch = spark.createDataFrame([(e.key, e.value, e.topic, 0, e.index, now, 0) for e in events], KAFKA_ROW).cache()
        batch.count()  # the rows are in memory before any of the three writes is timed
        before, started = compilations.getCount(), time.monotonic()
        writer(batch, batch_id)
        seconds.append(time.monotonic() - started)
        compiled.append(compilations.getCount() - before)
        started = time.monotonic()
        batch.limit(0).write.format("delta").mode("append").save(str(work / "small-floor"))
        floor.append(time.monotonic() - started)
        started = time.monotonic()
        batch.write.format("delta").mode("append").save(str(work / "small-passthrough"))
        passthrough_s.append(time.monotonic() - started)
        started = time.monotonic()
        _shape_floor(spark, writer, batch, work, batch_id)
        shape_s.append(time.monotonic() - started)
        batch.unpersist()
    median = lambda values: statistics.median(values[SMALL_BATCH_WARM_UP:])  # noqa: E731
    return {
        "crom_small_batch_s_p50": median(seconds),
        "crom_small_batch_compilations_p50": median(compiled),
        "delta_commit_floor_s": median(floor),
        "passthrough_small_batch_s_p50": median(passthrough_s),
        "crom_small_batch_vs_floor": median(seconds) / median(floor),
        "crom_shape_floor_s_p50": median(shape_s),
    }


def latencies(spark, profile, stream: EventStream, first: int, results: dict, directives, work: Path) -> dict[str, float]:
    """End-to-end latency, from the Kafka timestamp to the Delta commit that shows the record,
    of a running passthrough at half its maximum rate and of CROM (the shipped directive, into
    silver) at half its own: each at a load it can sustain. The generator's own limit caps
    the passthrough's rate."""
    topics = sorted(stream.topics.values())
    rates = {
        "passthrough": min(results["passthrough_eps"], 0.8 * results["generator_eps"]) / 2,
        "e2e": results["datafied_eps"] / 2,
    }
    live = profile.model_copy(update={"ingest": profile.ingest.model_copy(update={"starting_offsets": "latest"})})
    crom = live.model_copy(update={"lakehouse": work / "latency-lakehouse", "checkpoints": work / "latency-checkpoints"})
    operational = directives.only("operational")
    starts = {
        "passthrough": lambda: passthrough(spark, live, topics, str(work / "latency-passthrough"), str(work / "cp-latency-passthrough"), running=True),
        "e2e": lambda: start_query(spark, crom, BatchWriter(spark, crom, operational, directives.schemas), until_caught_up=False),
    }
    tables = {
        "passthrough": ([work / "latency-passthrough"], "timestamp"),
        "e2e": ([Path(t) for t in CromTables.of(crom, list(operational.directive.sources)).silver.values()], "kafka_timestamp"),
    }
    out: dict[str, float] = {}
    for name in ("passthrough", "e2e"):
        print(f"latency: {name} at {rates[name]:,.0f} ev/s for {LATENCY_SECONDS}s", flush=True)
        p50, p95, n = scale.latency(spark, profile, stream, first, rates[name], LATENCY_SECONDS, starts[name], *tables[name])
        first += int(rates[name] * LATENCY_SECONDS)
        out.update({f"{name}_latency_p50_s": p50, f"{name}_latency_p95_s": p95, f"{name}_latency_records": n, f"{name}_latency_rate_eps": rates[name]})
    out["e2e_vs_passthrough_p95"] = out["e2e_latency_p95_s"] / out["passthrough_latency_p95_s"]
    return out


GROWTH_HISTORY = 0.2  # of the events: the smaller history incremental_growth compares against


def functional(spark, crom_run, directives, work: Path) -> dict[str, float]:
    """CRFM over 99% of a CROM run's silver events, then timed over the newest 1% added
    (incremental), with nothing new (fixed) and over all of it again (`full`, partials
    recomputed); then the same newest 1% added to the GROWTH_HISTORY of events before them
    (incremental_growth)."""
    functional = directives.only("functional")
    sources = sorted({p.source for p in functional.directive.parameters})
    silver = {s: spark.read.format("delta").load(silver_table(crom_run, s)) for s in sources}
    times = reduce(DataFrame.unionByName, [df.select("event_time") for df in silver.values()])
    cut, growth_cut = times.agg(F.percentile_approx("event_time", [0.99, 0.99 - GROWTH_HISTORY])).first()[0]
    newest = {s: df.where(F.col("event_time") > F.lit(cut)) for s, df in silver.items()}
    added = sum(df.count() for df in newest.values())

    def incremental(history: dict[str, DataFrame], folder: Path):
        """A lakehouse of `history`, rolled up; then the newest events added and rolled up, timed."""
        profile = crom_run.model_copy(update={"lakehouse": folder / "lakehouse", "checkpoints": folder / "checkpoints"})
        for s, df in history.items():
            df.write.format("delta").save(silver_table(profile, s))
        run_functional(spark, profile, directives, functional)
        for s, df in newest.items():
            df.write.format("delta").mode("append").save(silver_table(profile, s))
        started = time.monotonic()
        run = run_functional(spark, profile, directives, functional)
        seconds = time.monotonic() - started
        if run.new_events != added or run.rebuilt_partials:
            raise RuntimeError(f"the incremental run did not fold exactly the {added:,} new events: {run}")
        return profile, run, seconds

    before = F.col("event_time").isNull() | ~(F.col("event_time") > F.lit(cut))
    profile, run, incremental_s = incremental({s: df.where(before) for s, df in silver.items()}, work)
    started = time.monotonic()
    unchanged = run_functional(spark, profile, directives, functional)  # silver has no new version
    fixed_s = time.monotonic() - started
    if not unchanged.skipped:
        raise RuntimeError(f"a run with nothing new recomputed: {unchanged}")
    floor_s, same_day, stayed = _one_event_run(spark, profile, directives, newest, days_later=0)
    as_of_move_s, next_day, moved = _one_event_run(spark, profile, directives, newest, days_later=1)
    if same_day.recomputed[""] != 1 or stayed != 0 or next_day.recomputed[""] is None or moved != 1:
        raise RuntimeError(f"the one-event runs were not incremental, with as_of moved 0 then 1 day: {same_day}, {stayed}; {next_day}, {moved}")
    started = time.monotonic()
    recomputed = run_functional(spark, profile, directives, functional, full=True)
    full_s = time.monotonic() - started
    merge_floor_s = _merge_floor(spark, recomputed.table, functional.directive.grain, work / "merge-floor")
    recent = before & (F.col("event_time") > F.lit(growth_cut))
    _, _, smaller_s = incremental({s: df.where(recent) for s, df in silver.items()}, work / "growth")
    total = sum(df.count() for df in silver.values())
    runs = (("incremental", run), ("one_event", same_day), ("one_event_next_day", next_day), ("full", recomputed))
    steps = {f"functional_{mode}_phase_s.{step}": s for mode, each in runs for step, s in each.phases.items()}
    return {
        "functional_incremental_s": incremental_s,
        "functional_full_s": full_s,
        "incremental_vs_full": incremental_s / full_s,
        "functional_fixed_s": fixed_s,
        "functional_one_event_s": floor_s,
        "functional_one_event_next_day_s": as_of_move_s,
        "functional_merge_floor_s": merge_floor_s,
        "functional_new_events": added,
        "functional_events": total,
        "functional_recomputed_customers": run.recomputed[""] if run.recomputed[""] is not None else run.customers,
        "functional_customers": run.customers,
        "functional_incremental_small_history_s": smaller_s,
        "incremental_growth": incremental_s / smaller_s,
        **steps,
    }


def _one_event_run(spark, profile, directives, newest: dict[str, DataFrame], days_later: int):
    """A CRFM run after one event was added to silver: a copy of the newest trusted customer
    event, on its day (as_of stays) or `days_later` (as_of moves as many days); timed, with the
    days as_of moved."""
    functional = directives.only("functional")
    counted = F.col(CUSTOMER).isNotNull() & F.coalesce(F.col("trust_level") != F.lit(UNTRUSTED), F.lit(False))
    candidates = {s: df.where(counted).orderBy(F.col("event_time").desc()).limit(1) for s, df in newest.items()}
    newest_time = {s: (row[0] if (row := df.select("event_time").first()) else None) for s, df in candidates.items()}
    source = max((s for s, t in newest_time.items() if t is not None), key=newest_time.get)
    as_of_before = _as_of(spark, profile, functional)
    later = candidates[source].withColumn("event_time", F.col("event_time") + F.expr(f"INTERVAL {days_later} DAYS"))
    later.write.format("delta").mode("append").save(silver_table(profile, source))
    started = time.monotonic()
    run = run_functional(spark, profile, directives, functional)
    seconds = time.monotonic() - started
    return seconds, run, (_as_of(spark, profile, functional) - as_of_before).days


def _merge_floor(spark, table: str, key: str, copy: Path, times: int = 5) -> float:
    """The median time of MERGEing one unchanged row into a copy of the functional table, warm:
    the least a table costs a run that recomputed one key."""
    spark.read.format("delta").load(table).write.format("delta").save(str(copy))
    stored = spark.read.format("delta").load(str(copy))
    row = stored.limit(1).collect()
    seconds = []
    for _ in range(times + 1):
        started = time.monotonic()
        rollup.merge(spark, str(copy), spark.createDataFrame(row, stored.schema), [key])
        seconds.append(time.monotonic() - started)
    return statistics.median(seconds[1:])  # the first plans and compiles


def _as_of(spark, profile, functional) -> datetime:
    return spark.read.format("delta").load(functional_table(profile, functional.directive.id)).agg(F.max("as_of")).first()[0]


def erasure(spark, functional_run: Path, directives) -> dict[str, float]:
    """`crm forget` on the functional benchmark's lakehouse (silver and every CRFM table, with
    the identity map and web sessions built first): one customer, then a hundred others in one
    request."""
    operational = directives.only("operational")
    profile = load_profile("local").model_copy(update={"lakehouse": functional_run / "lakehouse", "checkpoints": functional_run / "checkpoints"})
    sources = [s for s in operational.directive.sources if Path(silver_table(profile, s)).exists()]
    trimmed = replace(operational, directive=operational.directive.model_copy(update={"sources": {s: operational.directive.sources[s] for s in sources}}))
    run_identities(spark, profile, trimmed, directives.schemas)
    run_web_sessions(spark, profile, trimmed, directives.schemas)
    crom = CromTables.of(profile, sources)
    buyers = spark.read.format("delta").load(crom.silver["transaction"]).select("customer_id").distinct().orderBy("customer_id").limit(101)
    ids = [r[0] for r in buyers.collect()]
    out = {}
    for key, request in (("forget_1_s", ids[:1]), ("forget_100_s", ids[1:])):
        started = time.monotonic()
        forget(spark, profile.lakehouse, crom, request)
        out[key] = time.monotonic() - started
    return out


GOALS = {
    "log_lines_per_s": (">=", 10_000),
    "incremental_vs_full": ("<=", 0.10),
    "e2e_vs_passthrough_p95": ("<=", 1.5),
    "crom_small_batch_s_p50": ("<=", 1.5),
    "datafied_vs_passthrough": (">=", 0.35),
    "validation_added_ms_p50": ("<=", 150),
}


def markdown(results: dict[str, float]) -> str:
    """The results as a Markdown table, with each goal the issues set and whether it is met."""
    lines = ["| key | value | goal |", "| --- | ---: | --- |"]
    for key, value in sorted(results.items()):
        goal = ""
        if key in GOALS:
            op, target = GOALS[key]
            met = value <= target if op == "<=" else value >= target
            goal = f"{op} {target} ({'met' if met else 'not met'})"
        lines.append(f"| {key} | {value:,} | {goal} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events preloaded (default 1000000)")
    parser.add_argument("--bad-fraction", type=float, default=0.02)
    parser.add_argument("--variants", default=",".join(STEPS), help="CROM variants to run (default all three)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"other benchmarks to run (default all: {', '.join(PARTS)})")
    args = parser.parse_args()
    chosen, parts = args.variants.split(","), set(args.parts.split(",")) - {""}
    if not chosen or set(chosen) - set(STEPS):
        parser.error(f"--variants: choose from {', '.join(STEPS)}")
    if parts - set(PARTS):
        parser.error(f"--parts: choose from {', '.join(PARTS)}")
    if {"functional", "latency"} & parts and "datafied" not in chosen:
        parser.error("--parts functional and latency need the datafied variant")
    if "erasure" in parts and "functional" not in parts:
        parser.error("--parts erasure needs the functional part (it erases from its lakehouse)")
    cluster_needs = (scale.CLUSTER_WARM_UP + scale.CLUSTER_BATCHES + 1) * scale.CLUSTER_BATCH  # one to spare: the last measured batch is full
    if "cluster" in parts and args.events < cluster_needs:
        parser.error(
            f"--parts cluster needs at least {cluster_needs:,} events: {scale.CLUSTER_WARM_UP} warm-up and "
            f"{scale.CLUSTER_BATCHES} measured batches of {scale.CLUSTER_BATCH:,}, and one to spare"
        )
    full = set(chosen) == set(STEPS) and parts == set(PARTS)

    work = Path(tempfile.mkdtemp(prefix="crm-bench-"))
    base = load_profile("local")
    port = _free_port()
    profile = base.model_copy(
        update={
            "lakehouse": work / "lakehouse",
            "checkpoints": work / "checkpoints",
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{port}"}),
        }
    )
    directives = load_directives(profile.directives, profile.schemas)
    operational = directives.only("operational")
    sources = operational.directive.sources
    results: dict[str, float] = {}
    broker.start(base, port=port, controller_port=_free_port(), data_dir=work / "broker")
    try:
        ensure_topics(profile.kafka, sources)
        stream = EventStream(seed=42, topics={n: s.topic for n, s in sources.items()}, bad_fraction=args.bad_fraction, traffic=TRAFFIC)
        print(f"generator: {TRAFFIC.describe()}", flush=True)
        results |= {"generator_customers": TRAFFIC.customers, "generator_events_per_day": TRAFFIC.events_per_day}
        spark = get_spark(profile, "crm-bench")
        spark.sparkContext.setLogLevel("ERROR")
        variants = tuple(
            (name, directive)
            for name, directive in (
                ("parse_only", _variant(operational, rules=False, datafy=False)),
                ("validated", _variant(operational, rules=True, datafy=False)),
                ("datafied", operational),
            )
            if name in chosen
        )
        first_batch = min(profile.ingest.max_offsets_per_trigger, args.events)
        print(f"warm-up: CROM over the first {first_batch:,} events, each variant", flush=True)
        produce(profile.kafka, stream, 0, first_batch)
        for name, directive in variants:
            _warm_up(spark, profile, directive, directives.schemas, work, name)

        started = time.monotonic()
        produce(profile.kafka, stream, first_batch, args.events - first_batch)
        results["generator_eps"] = (args.events - first_batch) / (time.monotonic() - started)

        print("passthrough: Kafka -> Delta, no parsing", flush=True)
        elapsed = _timed_query(
            passthrough(spark, profile, [s.topic for s in sources.values()], str(work / "passthrough"), str(work / "cp-passthrough"))
        )
        results["passthrough_eps"] = args.events / elapsed
        runs = {}
        for name, directive in variants:
            print(f"crom {name.replace('_', ' ')}: parse, route, dedup, Delta" + STEPS[name], flush=True)
            run = profile.model_copy(update={"lakehouse": work / f"lakehouse-{name}", "checkpoints": work / f"checkpoints-{name}"})
            history = {}
            writer = BatchWriter(spark, run, directive, directives.schemas, on_batch=lambda result, h=history: h.__setitem__(result.batch_id, result.phases))
            query = start_query(spark, run, writer, until_caught_up=True)
            results[f"{name}_eps"] = args.events / _timed_query(query)
            runs[name] = _batch_ms(query)
            results.update(_phase_p50(name, history))
        ratio = lambda a, b: results[f"{a}_eps"] / results[f"{b}_eps"] if {a, b} <= set(runs) else None  # noqa: E731
        results["validated_vs_parse"] = ratio("validated", "parse_only")
        results["validated_vs_passthrough"] = results["validated_eps"] / results["passthrough_eps"] if "validated" in runs else None
        results["datafied_vs_validated"] = ratio("datafied", "validated")
        results["datafied_vs_passthrough"] = results["datafied_eps"] / results["passthrough_eps"] if "datafied" in runs else None
        if {"parse_only", "validated"} <= set(runs):
            paired = [runs["validated"][b] - runs["parse_only"][b] for b in runs["validated"] if b in runs["parse_only"]]
            results["validation_added_ms_p50"] = statistics.median(paired)
            results["batches"] = len(paired)
        for name, batch_ms in runs.items():
            results[f"{name}_batch_ms_p50"] = statistics.median(batch_ms.values())
        if "functional" in parts:
            print("functional: CRFM over the newest 1% of silver, incremental against a full recompute", flush=True)
            datafied = profile.model_copy(update={"lakehouse": work / "lakehouse-datafied"})
            results.update(functional(spark, datafied, directives, work / "crfm"))
        if "erasure" in parts:
            print("erasure: crm forget of one customer, then of a hundred in one request, over silver and CRFM", flush=True)
            results.update(erasure(spark, work / "crfm", directives))
        if "log_templates" in parts:
            print("log templates: the shipped miner over the eight Loghub samples, one core", flush=True)
            results.update(log_templates())
        if "sentiment" in parts:
            print("sentiment: Arrow batch UDF against a row-at-a-time UDF, real tweets", flush=True)
            results.update(sentiment(spark, _tweets(copies=5)))
        if "restart" in parts:
            print("restart: SIGKILL, restart, first committed batch", flush=True)
            results.update(scale.first_batch_and_restart(profile, work))
        if "cluster" in parts:
            print(f"cluster: crm ingest on a 2-worker standalone cluster, {scale.CLUSTER_BATCHES} batches after {scale.CLUSTER_WARM_UP} warm-up", flush=True)
            results.update(scale.cluster(profile, work))
        if "latency" in parts:
            results.update(latencies(spark, profile, stream, args.events, results, directives, work))
        if "small_batches" in parts:
            print(f"small batches: the CROM batch writer over {SMALL_BATCHES} batches of {SMALL_BATCH_RECORDS} records", flush=True)
            results.update(small_batches(spark, profile, operational, directives.schemas, stream, work))
        results["bench_events"] = args.events
    finally:
        broker.stop(base, work / "broker")
        shutil.rmtree(work, ignore_errors=True)

    measured = {k: round(v, 3) for k, v in results.items() if v is not None}
    if not full:  # a partial run is for looking into one cost; the results file holds whole runs only
        print(json.dumps(measured, indent=2, sort_keys=True))
        return
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    retired = ("crom_eps", "crom_vs_passthrough", "local1_eps", "local2_eps", "scaling_local2_vs_local1", "local1_two_cpus_eps")
    stale = [k for k in merged if k in retired or "_phase_ms_p50." in k or "_phase_s." in k]  # renamed or re-broken-down
    for key in stale:
        merged.pop(key)
    merged.update(measured)
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    RESULTS.with_suffix(".md").write_text(markdown(merged))
    print(json.dumps(merged, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
