"""`make eval`: datafication quality on real public data, against the published figures.

- Loghub 2k samples (8 systems): grouping accuracy of the log template miner
  (pipelines.crom.logs), next to Drain's figure from Zhu et al. (2019).

Results merge into eval-results.json (keys from other evaluations are kept). The data is
read from CRM_SAMPLE_DATA (default ../shared/data); see its README for the sources.

    python -m tests.eval.run [--only loghub]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

from pipelines.config import CONF_DIR, REPO_ROOT, sample_data
from pipelines.crom.logs import LogTemplates

RESULTS = REPO_ROOT / "eval-results.json"

# Drain's grouping accuracy on the Loghub 2k samples (Zhu et al. 2019, ICSE-SEIP).
DRAIN_PUBLISHED = {
    "Apache": 1.000, "HDFS": 0.998, "OpenSSH": 0.788, "HealthApp": 0.780,
    "Android": 0.911, "Zookeeper": 0.967, "Spark": 0.920, "Hadoop": 0.948,
}  # fmt: skip


def grouping_accuracy(truth: list[str], predicted: list[object]) -> float:
    """Share of lines whose predicted group is exactly the set of lines sharing their true id."""
    true_sizes = Counter(truth)
    groups: dict[object, list[int]] = defaultdict(list)
    for line, group in enumerate(predicted):
        groups[group].append(line)
    correct = 0
    for members in groups.values():
        ids = {truth[i] for i in members}
        if len(ids) == 1 and true_sizes[ids.pop()] == len(members):
            correct += len(members)
    return correct / len(truth)


def loghub(data: Path) -> dict[str, float]:
    layouts = yaml.safe_load((CONF_DIR / "datasets" / "loghub.yaml").read_text())["layouts"]
    results = {}
    for system, published in DRAIN_PUBLISHED.items():
        folder = data / "loghub" / system
        lines = (folder / f"{system}_2k.log").read_text(encoding="utf-8", errors="replace").splitlines()
        with (folder / f"{system}_2k.log_structured.csv").open(encoding="utf-8") as handle:
            truth = [row["EventId"] for row in csv.DictReader(handle)]
        miner = LogTemplates(layouts[system])
        unsplit = sum(1 for line in lines if miner.layout.split(line) is None)
        if unsplit or len(lines) != len(truth):
            raise SystemExit(f"loghub {system}: {unsplit} lines do not follow the layout; {len(lines)} lines, {len(truth)} labels")
        started = time.monotonic()
        predicted = [miner.mine(line).template_id for line in lines]
        elapsed = time.monotonic() - started
        accuracy = grouping_accuracy(truth, predicted)
        results[f"loghub_{system}_grouping_accuracy"] = accuracy
        verdict = "meets" if accuracy >= published else "BELOW"
        print(f"  {system:<10} {accuracy:.4f}  (Drain published {published:.3f}: {verdict})  {len(lines) / elapsed:,.0f} lines/s")
    results["loghub_average_grouping_accuracy"] = sum(results.values()) / len(DRAIN_PUBLISHED)
    results["loghub_systems_meeting_published"] = sum(
        results[f"loghub_{s}_grouping_accuracy"] >= p for s, p in DRAIN_PUBLISHED.items()
    )
    print(f"  average    {results['loghub_average_grouping_accuracy']:.4f}  (Drain published {sum(DRAIN_PUBLISHED.values()) / 8:.4f})")
    return results


EVALUATIONS = {"loghub": loghub}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(EVALUATIONS), action="append", help="run only these evaluations")
    args = parser.parse_args()
    data = sample_data()
    if not data.is_dir():
        sys.exit(f"no sample data at {data}: set CRM_SAMPLE_DATA to the folder holding airline-tweets/, loghub/, ...")
    results: dict[str, float] = {}
    for name in args.only or EVALUATIONS:
        print(f"{name}:", flush=True)
        results.update(EVALUATIONS[name](data))
    merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    merged.update({k: round(v, 4) for k, v in results.items()})
    RESULTS.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    print(f"wrote {RESULTS.name}")


if __name__ == "__main__":
    main()
