"""A Spark standalone cluster on this machine, from the pyspark install: a master and workers
on 127.0.0.1, for the cluster-mode test and benchmark (conf/cluster.yaml).

On a real cluster the master and workers run on their own hosts (`start-master.sh`,
`start-worker.sh` of a Spark distribution) and this module is not used; the jobs are the
same, submitted with `--master spark://HOST:7077`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.errors import CrmError

SPARK_CLASS = Path(sys.executable).parent / "spark-class"  # installed with pyspark


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as answer:
            return int(json.load(answer).get("aliveworkers", 0))
    except OSError:
        return 0  # the master's UI is not up yet


@contextmanager
def standalone(folder: Path, workers: int = 2, cores: int = 1, memory: str = "2g", timeout_s: float = 90) -> Iterator[str]:
    """Start a master and `workers` workers; yield the master URL; stop them all on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port, ui_port = _free_port(), _free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable, "SPARK_LOG_DIR": str(folder)}
    url = f"spark://127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log = (folder / f"{name}.log").open("w")
        processes.append(subprocess.Popen([str(SPARK_CLASS), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port))
        for i in range(workers):
            start(
                f"worker-{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                "--memory", memory, "--work-dir", str(folder / f"work-{i}"), "--webui-port", str(_free_port()), url,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while _alive_workers(ui_port) < workers:
            if any(p.poll() is not None for p in processes):
                raise CrmError(f"a Spark standalone process exited at start; see the logs in {folder}")
            if time.monotonic() > deadline:
                raise CrmError(f"the Spark master at {url} did not see {workers} workers within {timeout_s:.0f}s; logs in {folder}")
            time.sleep(0.5)  # polled against the deadline above
        yield url
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
