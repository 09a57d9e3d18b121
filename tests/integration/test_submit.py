"""The jobs as data engineers and schedulers run them: under spark-submit, with the project
shipped as a zip (--py-files), CROM until caught up, then CRFM, then CRSM."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipelines.config import REPO_ROOT
from pipelines.dist import build
from pipelines.generator import EventStream, produce
from pipelines.tables import CromTables, functional_table, strategic_table
from tests.helpers import crm_env

pytestmark = pytest.mark.integration

SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")  # installed with pyspark


def test_every_layer_runs_under_spark_submit(spark, own_broker, directives, tmp_path):
    profile, _ = own_broker  # empty topics: the tables must hold exactly this test's events
    sources = directives.only("operational").directive.sources
    stream = EventStream(8, {name: src.topic for name, src in sources.items()})  # every event valid
    events = list(stream.events(0, 2000))
    produce(profile.kafka, stream, 0, 2000)
    package = tmp_path / "pipelines.zip"
    build(package)
    env = crm_env(profile)  # PYSPARK_PYTHON is the virtualenv's, as the job docstrings ask
    submit = [
        SPARK_SUBMIT, "--master", "local[2]", "--driver-memory", "2g",
        "--packages", ",".join(profile.spark.packages), "--conf", f"spark.jars.ivy={profile.cache / 'ivy'}",
        "--py-files", str(package),
    ]  # fmt: skip
    for job in (["crom_ingest.py", "--until-caught-up"], ["crfm_functional.py"], ["crsm_strategic.py"]):
        run = subprocess.run([*submit, f"jobs/{job[0]}", *job[1:]], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, f"{job[0]} exited {run.returncode}:\n{run.stderr[-3000:]}"

    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    tables = CromTables.of(profile, list(sources))
    produced = Counter(e.source for e in events)
    assert {s: read(path).count() for s, path in tables.silver.items()} == {s: produced[s] for s in sources}
    functional = directives.only("functional").directive
    measured = {p.source for p in functional.parameters}
    customers = {json.loads(e.value).get("customer_id") for e in events if e.source in measured} - {None}
    assert read(functional_table(profile, functional.id)).count() == len(customers)
    strategic = directives.only("strategic").directive
    assert {r["kpi"] for r in read(strategic_table(profile, strategic.id)).collect()} == {k.name for k in strategic.kpis}
