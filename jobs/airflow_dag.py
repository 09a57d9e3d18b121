"""Airflow DAG `crm_layers`: CROM until caught up, the identity map and sessions, then CRFM,
then CRSM, each through spark-submit, one run at a time.

Install: `make airflow` puts Apache Airflow in its own virtualenv (.venv-airflow; it never
imports this project's code). Point Airflow's `dags_folder` at jobs/ or copy this file there,
and set CRM_HOME to the repository (after `make setup dist`) in the scheduler's environment.
Each task exits non-zero with a one-line reason on failure; the jobs' own lock makes a run
that overlaps a cron run of the same job fail at once with "already running".
"""

from __future__ import annotations

import os
import shlex
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

CRM_HOME = Path(os.environ.get("CRM_HOME", Path(__file__).resolve().parent.parent))
PROFILE = os.environ.get("CRM_PROFILE", "local")


def _packages() -> str:
    """The Spark packages of the profile (Delta, the Kafka source), as spark-submit wants them."""
    conf = yaml.safe_load((CRM_HOME / "conf" / f"{PROFILE}.yaml").read_text())
    return ",".join(conf["spark"]["packages"])


def _submit(job: str, *args: str) -> str:
    command = [
        ".venv/bin/spark-submit", "--packages", _packages(), "--conf", f"spark.jars.ivy={CRM_HOME / '.cache' / 'ivy'}",
        "--py-files", "dist/pipelines.zip", f"jobs/{job}", "--conf", PROFILE, *args,
    ]  # fmt: skip
    return f"cd {shlex.quote(str(CRM_HOME))} && PYSPARK_PYTHON=.venv/bin/python {shlex.join(command)}"


with DAG(
    dag_id="crm_layers",
    description="CROM -> CRFM -> CRSM through spark-submit",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    tags=["crm"],
) as dag:
    ingest = BashOperator(task_id="crom_ingest", bash_command=_submit("crom_ingest.py", "--until-caught-up"))
    resolve = BashOperator(task_id="crom_resolve", bash_command=_submit("crom_resolve.py"))
    functional = BashOperator(task_id="crfm_functional", bash_command=_submit("crfm_functional.py"))
    strategic = BashOperator(task_id="crsm_strategic", bash_command=_submit("crsm_strategic.py"))
    ingest >> resolve >> functional >> strategic
