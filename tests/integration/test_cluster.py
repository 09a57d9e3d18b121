"""Scale-out: CROM under spark-submit on a real Spark standalone cluster (a master and two
workers on 127.0.0.1) writes the same tables as local mode, from 4-partition topics."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewPartitions
from pyspark.sql import functions as F

from pipelines.cluster import standalone
from pipelines.config import REPO_ROOT, load_profile
from pipelines.crom.ingest import run_ingest
from pipelines.dist import build
from pipelines.generator import EventStream, produce
from pipelines.tables import CromTables
from tests.helpers import crm_env

pytestmark = pytest.mark.integration

SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")  # installed with pyspark
RUN_TIME_COLUMNS = {"ingested_at", "validated_at", "finished_at"}  # when a row was written, not what it says


def _table_rows(spark, path: str):
    frame = spark.read.format("delta").load(path)
    return frame.select(*sorted(c for c in frame.columns if c not in RUN_TIME_COLUMNS))


def test_crom_on_a_standalone_cluster_writes_what_local_mode_writes(spark, own_broker, directives, tmp_path):
    from pyspark.testing import assertDataFrameEqual

    profile, _ = own_broker
    sources = directives.only("operational").directive.sources
    admin = KafkaAdminClient(bootstrap_servers=profile.kafka.bootstrap_servers)
    try:
        admin.create_partitions({src.topic: NewPartitions(total_count=4) for src in sources.values() if src.partitions < 4})
    finally:
        admin.close()
    stream = EventStream(11, {name: src.topic for name, src in sources.items()}, bad_fraction=0.03)
    produce(profile.kafka, stream, 0, 3000)

    local = profile.model_copy(update={"lakehouse": tmp_path / "local" / "lakehouse", "checkpoints": tmp_path / "local" / "checkpoints"})
    run_ingest(spark, local, directives.only("operational"), directives.schemas, until_caught_up=True)

    package = tmp_path / "pipelines.zip"
    build(package)
    cluster = load_profile("cluster")
    env = crm_env(profile.model_copy(update={"lakehouse": tmp_path / "cluster" / "lakehouse", "checkpoints": tmp_path / "cluster" / "checkpoints"}))
    with standalone(tmp_path / "spark", workers=2, cores=1, memory="2g") as master:
        submit = [
            SPARK_SUBMIT, "--master", master, "--driver-memory", "2g",
            *(arg for key, value in cluster.spark.conf.items() for arg in ("--conf", f"{key}={value}")),
            "--conf", "spark.executor.memory=1g",  # two executors, a driver and the test's own Spark share this machine
            "--packages", ",".join(cluster.spark.packages), "--conf", f"spark.jars.ivy={cluster.cache / 'ivy'}",
            "--py-files", str(package), "jobs/crom_ingest.py", "--conf", "cluster", "--until-caught-up",
        ]  # fmt: skip
        run = subprocess.run(submit, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, f"crom_ingest.py on {master} exited {run.returncode}:\n{run.stderr[-3000:]}"
    ran_on = [w.name for w in (tmp_path / "spark").glob("work-*") if any(w.glob("app-*/*/stderr"))]
    assert sorted(ran_on) == ["work-0", "work-1"]  # an executor of the job ran on each worker

    ours = CromTables.of(local, list(sources))
    theirs = CromTables.of(load_profile("cluster").model_copy(update={"lakehouse": tmp_path / "cluster" / "lakehouse"}), list(sources))
    pairs = {"bronze": (ours.bronze, theirs.bronze), "quarantine": (ours.quarantine, theirs.quarantine),
             "late": (ours.late, theirs.late), "batch_audit": (ours.batch_audit, theirs.batch_audit)}  # fmt: skip
    pairs |= {f"silver_{s}": (ours.silver[s], theirs.silver[s]) for s in sources}
    for name, (mine, other) in pairs.items():
        expected = _table_rows(spark, mine)
        assert expected.count() > 0 or name == "late", name
        assertDataFrameEqual(_table_rows(spark, other), expected, rtol=1e-9)
    partitions = spark.read.format("delta").load(theirs.bronze).groupBy("kafka_topic").agg(F.countDistinct("kafka_partition").alias("n"))
    assert {r["kafka_topic"]: r["n"] for r in partitions.collect()} == {src.topic: 4 for src in sources.values()}
    quarantined = spark.read.format("delta").load(theirs.quarantine).count()
    assert quarantined > 0  # the bad records took the same path on the cluster
