"""The Airflow DAG, checked by a real Apache Airflow (`make airflow`, its own virtualenv):
it imports without errors and runs CROM, the identity step, CRFM and CRSM in that order."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from pipelines.config import REPO_ROOT

pytestmark = pytest.mark.integration

AIRFLOW_PYTHON = REPO_ROOT / ".venv-airflow" / "bin" / "python"

INSPECT = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("crm_layers")
print(json.dumps({
    "errors": {path: str(error) for path, error in bag.import_errors.items()},
    "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} if dag else None,
    "commands": {t.task_id: t.bash_command for t in dag.tasks} if dag else None,
    "max_active_runs": dag.max_active_runs if dag else None,
}))
"""


def test_the_dag_imports_and_runs_the_layers_in_order(tmp_path):
    assert AIRFLOW_PYTHON.exists(), "Apache Airflow is not installed: run `make airflow`"
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "CRM_HOME": str(REPO_ROOT)}
    run = subprocess.run([str(AIRFLOW_PYTHON), "-c", INSPECT, str(REPO_ROOT / "jobs" / "airflow_dag.py")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert found["errors"] == {}
    assert found["tasks"] == {
        "crom_ingest": ["crom_resolve"],
        "crom_resolve": ["crfm_functional"],
        "crfm_functional": ["crsm_strategic"],
        "crsm_strategic": [],
    }
    assert found["max_active_runs"] == 1
    for task, job in (("crom_ingest", "crom_ingest.py --conf local --until-caught-up"), ("crsm_strategic", "crsm_strategic.py --conf local")):
        assert "spark-submit" in found["commands"][task] and "--py-files dist/pipelines.zip" in found["commands"][task]
        assert found["commands"][task].endswith(f"jobs/{job}")
