"""What a user sees: `crm demo` prints the project's own lines and progress, while Ivy's report,
Spark's log4j lines and Python warnings go to the run's log file under <cache>/logs/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import crm_env

pytestmark = pytest.mark.integration

CRM = str(Path(sys.executable).parent / "crm")
NOISE = re.compile(r"^(:: |\s*found \S+#|Ivy Default Cache|.*\b(WARN|WARNING)\b|.*Warning:|Using Spark's default log4j|Setting default log level)")


def test_demo_prints_only_its_own_lines(own_broker, tmp_path):
    profile, _ = own_broker  # the demo finds it answering and uses it
    cache_logs = profile.cache / "logs"
    before = set(cache_logs.glob("crm-demo-*.log"))
    run = subprocess.run([CRM, "demo", "--events", "2000"], env=crm_env(profile), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]

    noise = [line for line in (run.stdout + run.stderr).splitlines() if NOISE.match(line)]
    assert noise == []
    assert "Lakehouse totals" in run.stdout and "CROM batch 0: 2,000 records" in run.stderr
    assert re.search(r"^crm: CRFM functional\.customer_metrics: segments \(", run.stderr, re.M)
    assert re.search(r"^crm: CRSM strategic\.customer_value validity: V4 variability, \d+ re-measures", run.stderr, re.M)
    # What was kept off the terminal is in this run's log file.
    [log_file] = set(cache_logs.glob("crm-demo-*.log")) - before
    kept = log_file.read_text(errors="replace")
    assert "resolution report" in kept or "found io.delta#delta-spark" in kept  # Ivy's report
    assert re.search(r"^\d\d/\d\d/\d\d \d\d:\d\d:\d\d WARN ", kept, re.M)  # Spark's log4j lines
    assert "CROM batch 0: 2,000 records" in kept  # and the project's own lines, with timestamps
