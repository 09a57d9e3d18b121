"""One run of a job at a time: the lock refuses a second holder and dies with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipelines.errors import CrmError
from pipelines.locks import single_run

HOLD = """
import sys
from pathlib import Path
from pipelines.locks import single_run
with single_run(Path(sys.argv[1]), "job"):
    print("held", flush=True)
    sys.stdin.read()  # until the test kills it
"""


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    lock = tmp_path / "locks" / "job.lock"
    with single_run(lock, "crm job"):
        with pytest.raises(CrmError, match=rf"^crm job is already running \(pid {os.getpid()}, lock .*job.lock\); this run did nothing$"):
            with single_run(lock, "crm job"):
                pass
    with single_run(lock, "crm job"):  # released when the first run ended
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    lock = tmp_path / "job.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # blocks until the lock is taken
        with pytest.raises(CrmError, match=rf"pid {holder.pid}"):
            with single_run(lock, "crm job"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with single_run(lock, "crm job"):  # does not raise: the kernel dropped the dead process's lock
        assert lock.read_text().strip() == str(os.getpid())
