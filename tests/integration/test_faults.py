"""Fault tolerance on the real stack: SIGKILLs at every stage of a batch, a crash between the
Delta writes and the checkpoint commit, and a broker restart, each checked record by record
against what the generator produced. Each test has its own broker, topics and lakehouse."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from pipelines import broker
from pipelines.crom.ingest import run_ingest
from pipelines.generator import EventStream, produce
from pipelines.tables import CromTables
from tests.helpers import crm_env

pytestmark = pytest.mark.integration

CRM = str(Path(sys.executable).parent / "crm")
MIX = {"malformed_json": 0.05, "duplicate": 0.02}  # the fault mix


def _topics(directives) -> dict[str, str]:
    return {name: src.topic for name, src in directives.only("operational").directive.sources.items()}


def _start_ingest(profile, log: Path, streaming: bool = False, batch: int = 5000) -> subprocess.Popen:
    """`crm ingest` in its own process group, so that SIGKILL takes its JVM down with it."""
    args = [CRM, "ingest"] + ([] if streaming else ["--until-caught-up"])
    with log.open("ab") as out:
        return subprocess.Popen(args, env=crm_env(profile, CRM_MAX_OFFSETS_PER_TRIGGER=str(batch)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _wait_for(condition, timeout: float, what: str, fail: bool = True) -> None:
    """Poll `condition` until it holds; past the deadline, fail (or, with fail=False, just return)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    if fail:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-15:])


def exactly_once_problems(spark, profile, directives, events) -> list[str]:
    """Everything wrong with the CROM tables, given the produced events (empty when right).

    Each record must be in exactly one place: silver (or late), quarantine, or counted as a
    duplicate; no table may hold a record twice.
    """
    tables = CromTables.of(profile, list(_topics(directives)))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    problems = []
    silver = Counter(r["event_id"] for path in tables.silver.values() for r in read(path).select("event_id").collect())
    late = Counter(r["event_id"] for r in read(tables.late).select("event_id").collect())
    quarantine = read(tables.quarantine).select("reason_code", "event_id", "kafka_topic", "kafka_partition", "kafka_offset").collect()
    audit = read(tables.batch_audit).agg(F.sum("records"), F.sum("duplicates")).first()
    bronze = read(tables.bronze).groupBy("kafka_topic", "kafka_partition", "kafka_offset").count().where("count > 1").count()

    twice = sum(n - 1 for n in silver.values() if n > 1)
    if twice:
        problems.append(f"silver holds {twice} duplicate event_id rows")
    coordinates = Counter((r["kafka_topic"], r["kafka_partition"], r["kafka_offset"]) for r in quarantine)
    if any(n > 1 for n in coordinates.values()):
        problems.append("quarantine holds a Kafka record twice")
    if bronze:
        problems.append(f"bronze holds {bronze} Kafka records twice")
    valid = {e.event_id for e in events if e.kind == "valid"}
    kept = set(silver) | set(late)
    if kept != valid:
        problems.append(f"silver+late ids differ from produced: {len(valid - kept)} missing, {len(kept - valid)} unexpected")
    injected = Counter(e.kind for e in events)
    reasons = Counter(r["reason_code"] for r in quarantine)
    if reasons != Counter({"malformed_json": injected["malformed_json"]} if injected["malformed_json"] else {}):
        problems.append(f"quarantine reasons {dict(reasons)} != injected malformed {injected['malformed_json']}")
    produced = {e.event_id for e in events}
    if not {r["event_id"] for r in quarantine if r["event_id"]} <= produced:
        problems.append("quarantine holds event ids that were never produced")
    if audit[0] != len(events):
        problems.append(f"batch_audit counts {audit[0]} records, produced {len(events)}")
    if audit[1] != injected["duplicate"]:
        problems.append(f"batch_audit counts {audit[1]} duplicates, injected {injected['duplicate']}")
    placed = sum(silver.values()) + sum(late.values()) + len(quarantine) + (audit[1] or 0)
    if placed != len(events):
        problems.append(f"{placed} records placed for {len(events)} produced")
    return problems


def _milestones(profile, log: Path) -> dict[str, int]:
    """What a `crm ingest` run has reached, as counters that only grow: its log, the batches
    its checkpoint planned and committed, and the commits of the CROM tables."""
    checkpoint = Path(profile.checkpoint_path("crom_ingest"))
    files = lambda folder, pattern: len(list(folder.glob(pattern))) if folder.exists() else 0  # noqa: E731
    return {
        "spark ready": log.read_text(errors="replace").count("Spark ready") if log.exists() else 0,
        "batch planned": files(checkpoint / "offsets", "[0-9]*"),
        "tables written": files(profile.lakehouse / "crom", "*/_delta_log/*.json"),
        "batch committed": files(checkpoint / "commits", "[0-9]*"),
    }


# Where a kill lands: while Spark starts, or just after the run reaches a milestone, plus a
# random delay within which the next step is under way (planning, the parallel table writes,
# the checkpoint commit).
KILL_POINTS = {"while starting": 6.0, "spark ready": 3.0, "batch planned": 2.0, "tables written": 1.0, "batch committed": 0.5}


def test_kills_at_every_stage_of_a_batch_lose_nothing_and_duplicate_nothing(spark, own_broker, directives, tmp_path):
    profile, _ = own_broker
    count, batch = 12_000, 2_000  # a batch per kill at most, and some to spare
    stream = EventStream(2026, _topics(directives), mix=MIX)
    produce(profile.kafka, stream, 0, count, progress=lambda _: None)
    events = list(stream.events(0, count))
    log, rng = tmp_path / "ingest.log", random.Random(11)
    points = list(KILL_POINTS)  # each stage once, in random order
    rng.shuffle(points)
    killed = []
    for point in points:
        before = _milestones(profile, log)
        proc = _start_ingest(profile, log, batch=batch)
        if point != "while starting":
            reached = lambda: _milestones(profile, log)[point] > before[point]  # noqa: E731
            _wait_for(lambda: reached() or proc.poll() is not None, 300, point)
        _wait_for(lambda: proc.poll() is not None, rng.uniform(0, KILL_POINTS[point]), "the delay", fail=False)
        if proc.poll() is not None:
            break
        _kill(proc)
        killed.append(point)
    assert killed == points, f"ingest stopped by itself after kills {killed}\n{_tail(log)}"
    final = _start_ingest(profile, log, batch=count)  # what is left in one batch (a replayed one keeps its offsets)
    assert final.wait(timeout=900) == 0, _tail(log)
    assert exactly_once_problems(spark, profile, directives, events) == []


def _ingest_in_process(spark, profile, directives) -> None:
    run_ingest(spark, profile, directives.only("operational"), directives.schemas, until_caught_up=True)


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "negative-control"])
def test_crash_between_writes_and_checkpoint_commit(spark, own_topics, idempotent):
    """Deleting the last commit file replays the last batch, as a crash just before it would.

    With idempotent writes the replay adds nothing; switched off, the same check that passes
    after the kills must find the duplicates (so it is able to).
    """
    profile, directives = own_topics
    profile = profile.model_copy(update={"ingest": profile.ingest.model_copy(update={"idempotent_writes": idempotent, "max_offsets_per_trigger": 600})})
    stream = EventStream(7, _topics(directives), mix=MIX)
    produce(profile.kafka, stream, 0, 1200, progress=lambda _: None)
    events = list(stream.events(0, 1200))
    _ingest_in_process(spark, profile, directives)
    tables = CromTables.of(profile, list(_topics(directives)))
    paths = [tables.bronze, tables.quarantine, tables.batch_audit, *tables.silver.values()]
    before = {p: spark.read.format("delta").load(p).count() for p in paths}
    assert exactly_once_problems(spark, profile, directives, events) == []

    commits = Path(profile.checkpoint_path("crom_ingest")) / "commits"
    last = max((f for f in commits.iterdir() if f.name.isdigit()), key=lambda f: int(f.name))
    last.unlink()
    (commits / f".{last.name}.crc").unlink(missing_ok=True)  # a crash leaves neither behind
    _ingest_in_process(spark, profile, directives)
    after = {p: spark.read.format("delta").load(p).count() for p in paths}
    problems = exactly_once_problems(spark, profile, directives, events)
    if idempotent:
        assert after == before and problems == []
    else:
        assert any("silver holds" in p and "duplicate" in p for p in problems), problems
        assert after[tables.bronze] > before[tables.bronze]


def test_broker_restart_mid_stream_loses_nothing(spark, own_broker, base_profile, directives, tmp_path):
    profile, ports = own_broker
    stream = EventStream(31, _topics(directives), mix=MIX)
    log = tmp_path / "ingest.log"
    audit = CromTables.of(profile, list(_topics(directives))).batch_audit

    def ingested() -> int:
        # The table exists once its first commit does; `_delta_log` alone comes earlier.
        if not any((Path(audit) / "_delta_log").glob("*.json")):
            return 0
        return spark.read.format("delta").load(audit).agg(F.sum("records")).first()[0] or 0

    produce(profile.kafka, stream, 0, 2400, progress=lambda _: None)
    proc = _start_ingest(profile, log, streaming=True, batch=1200)
    try:
        _wait_for(lambda: ingested() >= 1200, 300, "the first batch in batch_audit")
        broker.stop(base_profile, ports["data_dir"])  # mid-stream: 1200 records still to read
        # The query now talks to a dead broker; bring it back with the same data and port.
        broker.start(base_profile, **ports)
        produce(profile.kafka, stream, 2400, 800, progress=lambda _: None)
        deadline = time.monotonic() + 600
        while ingested() < 3200 and time.monotonic() < deadline:
            if proc.poll() is not None:  # it failed instead of riding out the outage: say why, resume
                assert "error" in _tail(log).lower(), _tail(log)
                proc = _start_ingest(profile, log, streaming=True, batch=1200)
            time.sleep(0.5)
        assert ingested() == 3200, _tail(log)
    finally:
        if proc.poll() is None:
            _kill(proc)
    assert exactly_once_problems(spark, profile, directives, list(stream.events(0, 3200))) == []


def test_an_overlapping_scheduled_run_exits_at_once_and_the_first_finishes(spark, own_broker, directives, tmp_path):
    """What cron does when a run outlasts its interval: the next run starts beside it."""
    profile, _ = own_broker
    stream = EventStream(11, _topics(directives), mix=MIX)
    events = list(stream.events(0, 600))
    produce(profile.kafka, stream, 0, 600, progress=lambda _: None)
    first = _start_ingest(profile, tmp_path / "first.log")
    lock = profile.checkpoints / "locks" / "ingest.lock"
    _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 120, "the first run to take the lock")
    second = subprocess.run([CRM, "ingest", "--until-caught-up"], env=crm_env(profile, CRM_MAX_OFFSETS_PER_TRIGGER="5000"), capture_output=True, text=True, timeout=300)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"crm: error: crm ingest is already running (pid {first.pid}, lock {lock}); this run did nothing"
    )
    assert first.wait(timeout=600) == 0, _tail(tmp_path / "first.log")
    assert exactly_once_problems(spark, profile, directives, events) == []
