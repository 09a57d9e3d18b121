"""The broker behind SASL_SSL with SCRAM and the project's own CA: the generator and CROM (under
spark-submit, with the Spark event log on) connect with credentials from the environment; a
wrong password or CA fails at once with a clear reason; and the password, a canary, shows
up nowhere: not in any output, log, event log, table or checkpoint."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from pipelines import broker
from pipelines.config import REPO_ROOT
from pipelines.dist import build
from pipelines.tables import CromTables
from pipelines.tls import ensure_broker_tls
from tests.conftest import free_port
from tests.helpers import crm_env

pytestmark = pytest.mark.integration

SPARK_SUBMIT = str(Path(sys.executable).parent / "spark-submit")
CRM = str(Path(sys.executable).parent / "crm")
EVENTS = 1500


@pytest.fixture
def secure_broker(profile, tmp_path):
    """A SASL_SSL broker of its own; yields the profile pointing at it and its password."""
    canary = "canary-" + secrets.token_hex(12)
    data_dir = tmp_path / "broker"
    port = free_port()
    kafka = profile.kafka.model_copy(
        update=dict(
            bootstrap_servers=f"127.0.0.1:{port}",
            security_protocol="SASL_SSL",
            username="crm",
            password=SecretStr(canary),
            ssl_cafile=data_dir / "tls" / "ca.pem",
        )
    )
    secure = profile.model_copy(update={"kafka": kafka})
    broker.start(secure, port=port, controller_port=free_port(), data_dir=data_dir)
    try:
        yield secure, canary
    finally:
        broker.stop(secure, data_dir)


def _env(profile, **override) -> dict:
    kafka = profile.kafka
    secrets = {"CRM_KAFKA_PASSWORD": kafka.password.get_secret_value(), "CRM_KAFKA_CAFILE": str(kafka.ssl_cafile)}
    return crm_env(profile, **{**secrets, **override})  # a test may override either


def _crm(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CRM, *args, "--conf", "secure"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_clients_authenticate_from_the_environment_and_the_password_leaks_nowhere(spark, secure_broker, directives, tmp_path):
    profile, canary = secure_broker
    outputs = []

    produced = _crm(_env(profile), "produce", "--events", str(EVENTS), "--seed", "11")
    outputs.append(produced.stdout + produced.stderr)
    assert produced.returncode == 0, produced.stderr[-2000:]

    events_dir = tmp_path / "spark-events"
    events_dir.mkdir()
    package = tmp_path / "pipelines.zip"
    build(package)
    submit = [
        SPARK_SUBMIT, "--master", "local[2]", "--driver-memory", "2g",
        "--packages", ",".join(profile.spark.packages), "--conf", f"spark.jars.ivy={profile.cache / 'ivy'}",
        "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events_dir}",
        "--conf", "spark.eventLog.compress=false",  # scanned as text below
        "--py-files", str(package), "jobs/crom_ingest.py", "--until-caught-up", "--conf", "secure",
    ]  # fmt: skip
    ingest = subprocess.run(submit, cwd=REPO_ROOT, env=_env(profile), capture_output=True, text=True, timeout=900)
    outputs.append(ingest.stdout + ingest.stderr)
    assert ingest.returncode == 0, ingest.stderr[-3000:]

    tables = CromTables.of(profile, list(directives.only("operational").directive.sources))
    assert spark.read.format("delta").load(tables.bronze).count() == EVENTS  # every record came through SASL_SSL

    event_log = b"".join(path.read_bytes() for path in events_dir.rglob("*") if path.is_file())
    assert b"SparkListenerSQLExecutionStart" in event_log and b"crm.web" in event_log  # the ingest's plans were logged

    leaks = [text for text in outputs if canary in text]
    leaks += [str(path) for path in tmp_path.rglob("*") if path.is_file() and canary.encode() in path.read_bytes()]
    assert not leaks, f"the password appears in {leaks}"


def test_a_wrong_password_or_ca_fails_at_once_with_the_reason(secure_broker, tmp_path):
    profile, canary = secure_broker
    wrong_password = _crm(_env(profile, CRM_KAFKA_PASSWORD="not-" + canary), "produce", "--events", "10")
    assert wrong_password.returncode != 0
    assert "refused user 'crm'" in wrong_password.stderr and "wrong username or password" in wrong_password.stderr
    assert canary not in wrong_password.stderr + wrong_password.stdout

    other_ca = ensure_broker_tls(tmp_path / "another-ca").ca
    wrong_ca = _crm(_env(profile, CRM_KAFKA_CAFILE=str(other_ca)), "ingest", "--until-caught-up")
    assert wrong_ca.returncode != 0
    reason = wrong_ca.stderr.strip().splitlines()[-1]
    assert "does not vouch" in reason and str(other_ca) in reason

    no_password = _crm({k: v for k, v in _env(profile).items() if k != "CRM_KAFKA_PASSWORD"}, "produce", "--events", "10")
    assert no_password.returncode != 0 and "CRM_KAFKA_PASSWORD" in no_password.stderr
