"""`make bench`: throughput of the generator, a plain Kafka->Delta passthrough and CROM.

Everything runs in one process on this machine, on one preloaded set of topics, with the
project's own broker on a free 127.0.0.1 port. Results merge into bench-results.json (keys
from other benchmarks are kept) and a Markdown table beside it.

    python -m tests.bench.run [--events N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import tempfile
import time
from pathlib import Path

from pipelines import broker
from pipelines.config import REPO_ROOT, load_profile
from pipelines.crom.ingest import start_ingest
from pipelines.directives import load_directives
from pipelines.generator import EventStream, produce
from pipelines.spark import get_spark
from pipelines.topics import ensure_topics

RESULTS = REPO_ROOT / "bench-results.json"


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


def passthrough(spark, profile, topics: list[str], table: str, checkpoint: str):
    """The baseline: Kafka records appended to Delta as they are, no parsing or checks."""
    return (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", profile.kafka.bootstrap_servers)
        .option("subscribe", ",".join(topics))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", profile.ingest.max_offsets_per_trigger)
        .load()
        .selectExpr("CAST(key AS STRING) AS key", "CAST(value AS STRING) AS value", "topic", "partition", "offset", "timestamp")
        .writeStream.format("delta")
        .option("checkpointLocation", checkpoint)
        .trigger(availableNow=True)
        .start(table)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000, help="events preloaded (default 500000)")
    parser.add_argument("--bad-fraction", type=float, default=0.02)
    args = parser.parse_args()

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
        ensure_topics(profile.kafka.bootstrap_servers, sources)
        stream = EventStream(seed=42, topics={n: s.topic for n, s in sources.items()}, bad_fraction=args.bad_fraction)
        started = time.monotonic()
        produce(profile.kafka.bootstrap_servers, stream, 0, args.events)
        results["generator_eps"] = args.events / (time.monotonic() - started)

        spark = get_spark(profile, "crm-bench")
        spark.sparkContext.setLogLevel("ERROR")
        print("passthrough: Kafka -> Delta, no parsing", flush=True)
        elapsed = _timed_query(
            passthrough(spark, profile, [s.topic for s in sources.values()], str(work / "passthrough"), str(work / "cp-passthrough"))
        )
        results["passthrough_eps"] = args.events / elapsed
        print("crom: parse, quarantine, dedup, Great Expectations, Delta", flush=True)
        elapsed = _timed_query(start_ingest(spark, profile, operational, directives.schemas, until_caught_up=True))
        results["crom_eps"] = args.events / elapsed
        results["crom_vs_passthrough"] = results["crom_eps"] / results["passthrough_eps"]
        results["bench_events"] = args.events
    finally:
        broker.stop(base, work / "broker")
        shutil.rmtree(work, ignore_errors=True)

    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.update({k: round(v, 3) for k, v in results.items()})
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    table = ["| key | value |", "| --- | ---: |"] + [f"| {k} | {v:,} |" for k, v in sorted(merged.items())]
    RESULTS.with_suffix(".md").write_text("\n".join(table) + "\n")
    print(json.dumps(merged, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
