"""Where a job spends its time: named steps, added up, for log lines and benchmarks."""

from __future__ import annotations

import time
from contextlib import contextmanager


@contextmanager
def timed(phases: dict[str, float], name: str):
    """Add the seconds the block takes to phases[name]."""
    started = time.monotonic()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.monotonic() - started


def describe(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f}s" for name, seconds in phases.items())
