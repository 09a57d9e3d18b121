"""Copy the latest full `make bench` run (bench-results.md) into docs/benchmarks.md.

The section between the `bench-results` markers is replaced; the rest of the page, which
says what each key means, is left as written.

    python -m tests.bench.publish [--results bench-results.md] [--page docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from pipelines.config import REPO_ROOT

START, END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"


def published(page: str, table: str, when: datetime, machine: str) -> str:
    """`page` with the text between the markers replaced by `table` and where and when it ran."""
    if page.count(START) != 1 or page.count(END) != 1 or page.index(START) > page.index(END):
        raise ValueError(f"the page needs one {START} followed by one {END}")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    body = f"Run on {when:%Y-%m-%d} ({machine}).\n\n{table.strip()}\n"
    return f"{head}{START}\n{body}{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "bench-results.md")
    parser.add_argument("--page", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    if not args.results.exists():
        parser.error(f"{args.results} does not exist: run `make bench` first")
    when = datetime.fromtimestamp(args.results.stat().st_mtime, timezone.utc)
    machine = f"{os.cpu_count()} CPUs, {platform.system()} {platform.machine()}, Python {platform.python_version()}"
    args.page.write_text(published(args.page.read_text(), args.results.read_text(), when, machine))
    print(f"{args.page}: latest full run from {args.results}")


if __name__ == "__main__":
    main()
