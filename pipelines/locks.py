"""One run of a job at a time, for schedulers: cron starts the next run whether or not the
last one finished.

The lock is an flock on a file beside the job's checkpoints. The kernel releases it when the
process ends, however it ends (even SIGKILL), so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import CrmError


@contextmanager
def single_run(lock: Path, job: str) -> Iterator[None]:
    """Hold the job's lock for the block; raise CrmError at once if another run holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            raise CrmError(f"{job} is already running (pid {holder}, lock {lock}); this run did nothing") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
