"""Zip the `pipelines` package for `spark-submit --py-files`.

    python -m pipelines.dist dist/pipelines.zip

Executors import the package from the zip; the driver runs the job file with the project's
virtualenv (its Python packages), from the repository root (conf/, directives/, schemas/).
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def build(target: Path) -> int:
    """Write the zip; returns the number of modules in it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    modules = sorted(PACKAGE.rglob("*.py"))
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for module in modules:
            archive.write(module, module.relative_to(PACKAGE.parent).as_posix())
    return len(modules)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipelines.dist TARGET.zip")
    count = build(Path(sys.argv[1]))
    print(f"{sys.argv[1]}: {count} modules of pipelines/")
