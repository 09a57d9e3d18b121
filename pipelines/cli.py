"""`crm`: the one entry point for the layered CRM pipelines.

Every command takes --conf (a profile in conf/, `local` by default) and exits non-zero with a
one-line reason on failure. A command prints its own lines only; Spark's, the JVM's and other
libraries' output goes to a log file under <cache>/logs/ (pipelines.console). --verbose
shows it all; CRM_DEBUG=1 does too, and shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import Future
from contextlib import ExitStack
from pathlib import Path

from pipelines import console
from pipelines.config import Profile, load_profile
from pipelines.errors import CrmError
from pipelines.generator import FEED, SMALL_SHOP, Traffic

log = logging.getLogger("crm")


# --- shared plumbing ---------------------------------------------------------------------


def _directives(profile: Profile):
    from pipelines.directives import load_directives

    return load_directives(profile.directives, profile.schemas)


def _spark(profile: Profile, app: str, checked: Future | None = None):
    """Start Spark; with `checked` (from `_checking_all`), wait for the directives' check too."""
    from pipelines.spark import get_spark

    log.info("starting Spark (%s); the first run fetches the Delta and Kafka packages from Maven Central", profile.spark.master)
    started, progress = time.monotonic(), console.Progress()
    with console.following(console.native_log(), console.ivy_progress, progress):
        spark = get_spark(profile, app)
    log.info("Spark ready in %.0fs", time.monotonic() - started)
    if checked is not None:
        checked.result()
    return spark


def _check_expectations(directives) -> None:
    from pipelines.crom.validate import check_expectations

    for op in directives.operational.values():
        check_expectations(op.directive.sources, str(op.path))


def _check_all(profile: Profile):
    """Load the directive chain and compile every expectation; nothing starts if this fails."""
    directives = _directives(profile)
    _check_expectations(directives)
    return directives


def _checking_all(profile: Profile):
    """Load the directive chain, and compile every expectation on a thread while Spark or the
    broker starts: Great Expectations' import alone takes seconds. The caller waits for the
    returned future (`_spark` does when given it) before it reads or writes anything, so
    nothing runs if a rule does not compile."""
    directives = _directives(profile)
    checked: Future = Future()

    def check() -> None:
        try:
            checked.set_result(_check_expectations(directives))
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread as it is
            checked.set_exception(exc)

    threading.Thread(target=check, name="crm-check", daemon=True).start()
    return directives, checked


# --- commands ----------------------------------------------------------------------------


def cmd_setup(args, profile: Profile) -> int:
    from pipelines import broker

    libs = broker.fetch_jars(profile)
    print(f"Kafka broker jars: {libs}")
    _spark(profile, "crm-setup").stop()
    print(f"Spark packages cached in {profile.cache / 'ivy'}")
    return 0


def cmd_broker(args, profile: Profile) -> int:
    from pipelines import broker

    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    if args.action == "start":
        pid = broker.start(profile, port=args.port, data_dir=data_dir)
        print(f"broker started: pid {pid}, 127.0.0.1:{args.port or profile.broker.port}, log {broker.paths(profile, data_dir).log_file}")
    elif args.action == "stop":
        stopped = broker.stop(profile, data_dir)
        print("broker stopped" if stopped else "broker was not running")
    elif args.action == "fetch":
        print(f"Kafka broker jars in {broker.fetch_jars(profile)}")
    else:
        pid, answering = broker.status(profile, data_dir)
        print(f"broker: {'running, pid ' + str(pid) if pid else 'not running'}; "
              f"{profile.kafka.bootstrap_servers} {'answers' if answering else 'does not answer'}")
        return 0 if pid and answering else 3
    return 0


def _produce(profile: Profile, directives, events: int, seed: int, bad_fraction: float, rate: float | None, start: str, traffic: Traffic):
    from pipelines.generator import EventStream, produce
    from pipelines.topics import end_offsets_total, ensure_topics

    operational = directives.only("operational").directive
    ensure_topics(profile.kafka, operational.sources)
    topics = {name: src.topic for name, src in operational.sources.items()}
    first = end_offsets_total(profile.kafka, list(topics.values())) if start == "auto" else int(start)
    log.info("producing %d events from index %d (seed %d, bad fraction %.3f; %s)", events, first, seed, bad_fraction, traffic.describe())
    stream = EventStream(seed=seed, topics=topics, bad_fraction=bad_fraction, traffic=traffic)
    progress = console.Progress()
    manifest = produce(profile.kafka, stream, first, events, rate=rate, progress=progress.update)
    progress.done(f"produced {events:,} events")
    for source, n in sorted(manifest.per_source().items()):
        print(f"  {source:<12} {n:>9,}")
    return manifest


def cmd_produce(args, profile: Profile) -> int:
    _produce(profile, _check_all(profile), args.events, args.seed, args.bad_fraction, args.rate, args.start, _traffic(args))
    return 0


def _replay(profile: Profile, directives, dataset: str, path: Path | None, limit: int | None) -> None:
    from pipelines.config import sample_data
    from pipelines.replay import dataset_folder, replay
    from pipelines.topics import ensure_topics

    operational = directives.only("operational").directive
    ensure_topics(profile.kafka, operational.sources)
    root = path or sample_data() / dataset_folder(dataset)
    counts = replay(profile.kafka, dataset, root, {name: src.topic for name, src in operational.sources.items()}, limit)
    print(f"replayed {dataset} from {root}:")
    for what, n in sorted(counts.items()):
        print(f"  {what:<12} {n:>9,}")


def cmd_replay(args, profile: Profile) -> int:
    _replay(profile, _check_all(profile), args.dataset, args.path, args.limit)
    return 0


JOBS = ("ingest", "resolve", "functional", "strategic")


def _single_run(profile: Profile, job: str):
    """Refuse to overlap another run of the job on the same checkpoints (cron, Airflow)."""
    from pipelines.locks import single_run

    return single_run(profile.checkpoints / "locks" / f"{job}.lock", f"crm {job}")


def _ingest(spark, profile: Profile, directives, until_caught_up: bool) -> None:
    from pipelines.crom.ingest import run_ingest

    mode = "until caught up" if until_caught_up else "streaming (Ctrl-C stops)"
    log.info("CROM ingest running %s; checkpoint %s", mode, profile.checkpoint_path("crom_ingest"))
    run_ingest(spark, profile, directives.only("operational"), directives.schemas, until_caught_up)


def _sync_topics(profile: Profile, directives) -> None:
    """The directive's topics as it says (created, retention, partitions); prints what changed."""
    from pipelines.topics import sync_topics

    for change in sync_topics(profile.kafka, directives.only("operational").directive.sources):
        print(f"topic {change}")


def cmd_topics(args, profile: Profile) -> int:
    directives = _check_all(profile)
    _sync_topics(profile, directives)
    return 0


def cmd_ingest(args, profile: Profile) -> int:
    from pipelines.connection import check_connection

    directives, checked = _checking_all(profile)
    check_connection(profile.kafka)  # before Spark starts: a wrong password or CA is one line at once
    with _single_run(profile, "ingest"):  # before Spark starts: an overlapping run exits at once
        spark = _spark(profile, "crom-ingest", checked)
        _sync_topics(profile, directives)  # a source just added has no topic yet; a changed retention reaches the broker
        _ingest(spark, profile, directives, args.until_caught_up)
    return 0


def _resolve(spark, profile: Profile, directives) -> None:
    from pipelines.crom.resolve import run_identities, run_web_sessions

    operational = directives.only("operational")
    run = run_identities(spark, profile, operational, directives.schemas)
    web = run_web_sessions(spark, profile, operational, directives.schemas)
    state = lambda skipped: "up to date, nothing new" if skipped else "rebuilt"  # noqa: E731
    conflicts = ", ".join(f"{kind} {n:,}" for kind, n in sorted(run.conflicts.items())) or "none"
    print(
        f"identity map: {run.keys:,} keys, {run.resolved:,} resolved to one customer, {run.anonymous:,} anonymous; "
        f"conflicts (claimed by several customers, left unresolved): {conflicts} ({state(run.skipped)}) -> {run.table}"
    )
    for s in web:
        print(f"web sessions: {s.sessions:,} sessions of {s.visitors:,} visitors, {s.bot_sessions:,} by bots ({state(s.skipped)}) -> {s.table}")


def cmd_resolve(args, profile: Profile) -> int:
    directives, checked = _checking_all(profile)
    with _single_run(profile, "resolve"):
        _resolve(_spark(profile, "crom-resolve", checked), profile, directives)
    return 0


def _functional(spark, profile: Profile, directives, full: bool = False) -> None:
    from pipelines.crfm.job import run_functional

    for functional in directives.functional.values():
        run = run_functional(spark, profile, directives, functional, full)
        if run.skipped:
            state = "up to date, nothing new"
        elif run.rebuilt_partials:
            state = f"partials rebuilt from silver, {run.new_events:,} events read"
        elif run.new_events:
            state = f"updated with {run.new_events:,} new silver events"
            if (recomputed := run.recomputed.get("")) is not None:  # the others' rows were shifted, not recomputed
                state += f", {recomputed:,} recomputed"
        else:
            state = f"recomputed for version {functional.directive.version} of the directive"
        print(f"functional {functional.directive.id}: {run.customers:,} customers ({state}) -> {run.table}")
        for name, table in run.breakdowns.items():
            print(f"  {name} -> {table}")


def cmd_functional(args, profile: Profile) -> int:
    directives, checked = _checking_all(profile)
    with _single_run(profile, "functional"):
        _functional(_spark(profile, "crfm-functional", checked), profile, directives, args.full)
    return 0


def _strategic(spark, profile: Profile, directives) -> list:
    from pipelines.crsm.job import run_strategic

    runs = []
    for strategic in directives.strategic.values():
        run = run_strategic(spark, profile, directives, strategic)
        state = " (up to date, nothing new)" if run.skipped else ""
        print(f"strategic {strategic.directive.id} (functional version {run.functional_version}){state} -> {run.table}")
        if strategic.directive.purchase_model is not None and run.fit is None:
            print(f"  purchase model: not fitted on this version, so KPIs on its outputs have no value: {run.unfitted or 'see the log of the run that computed it'}")
        if run.fit is not None:
            f = run.fit
            print(f"  purchase model: BG/NBD on {f['customers']:,} customers r={f['r']:.3f} alpha={f['alpha']:.3f} "
                  f"a={f['a']:.3f} b={f['b']:.3f}; Gamma-Gamma on {f['repeat_buyers']:,} repeat buyers "
                  f"p={f['p']:.2f} q={f['q']:.2f} gamma={f['gamma']:.2f}")  # fmt: skip
            if f["holdout_units"] is not None:
                print(f"  holdout ({f['holdout_units']:g} time units): {f['holdout_predicted']:,.0f} purchases predicted, "
                      f"{f['holdout_actual']:,.0f} actual ({f['holdout_predicted'] / max(f['holdout_actual'], 1):.3f})")  # fmt: skip
        for k in run.kpis:
            value = "n/a" if k["value"] is None else f"{k['value']:,.3f}"
            mark = "on target" if k["on_target"] else "OFF TARGET"
            print(f"  {k['kpi']:<28} {value:>12} {k['unit']:<6} target {k['target_op']} {k['target_value']:<8g} {mark}")
        if run.validity:
            print("  validity (V1 volume, V2 velocity, V3 variety, V4 variability, V5 veracity):")
            by_kpi: dict[str, list] = {}
            for c in run.validity:
                by_kpi.setdefault(c["kpi"], []).append(c)
            for kpi, checks in by_kpi.items():
                verdicts = "  ".join(f"{c['v']} {c['verdict']}" + ("" if c["deviation"] is None else f" {c['deviation']:.3f}") for c in checks)
                ci = next((c for c in checks if c["v"] == "V4" and c["ci_low"] is not None), None)
                interval = f"  95% CI [{ci['ci_low']:,.3f}, {ci['ci_high']:,.3f}]" if ci else ""
                print(f"    {kpi:<28} {verdicts}{interval}")
        runs.append(run)
    return runs


def cmd_strategic(args, profile: Profile) -> int:
    directives, checked = _checking_all(profile)
    with _single_run(profile, "strategic"):
        _strategic(_spark(profile, "crsm-strategic", checked), profile, directives)
    return 0


def cmd_train(args, profile: Profile) -> int:
    from pipelines.crom.sentiment_model import read_labelled, train_sentiment

    output = Path(args.output).resolve() if args.output else profile.sentiment_model
    spark = _spark(profile, "crm-train-sentiment")
    labelled = read_labelled(spark, Path(args.labels), args.text_column, args.label_column).cache()
    counts = {r["label"]: r["count"] for r in labelled.groupBy("label").count().collect()}
    print(f"training the sentiment model on {sum(counts.values()):,} texts ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))})")
    started = time.monotonic()
    model = train_sentiment(labelled, **({"iterations": args.iterations} if args.iterations else {}))
    model.write().overwrite().save(str(output))
    print(f"trained in {time.monotonic() - started:.0f}s -> {output}; select it with `datafy: text: model: trained`")
    return 0


def cmd_docs(args, profile: Profile) -> int:
    from pipelines.crom.docs import build_data_docs

    operational = _check_all(profile).only("operational")
    out_dir = Path(args.out) if args.out else None
    index = build_data_docs(_spark(profile, "crom-docs"), profile, operational, out_dir=out_dir, last_batches=args.batches)
    print(f"Data Docs: {index}")
    return 0


def cmd_status(args, profile: Profile) -> int:
    from pipelines import status
    from pipelines.topics import end_offsets

    states = status.tables(profile.lakehouse)
    if not states:
        print(f"no Delta tables under {profile.lakehouse} yet")
    for t in states:
        if t.error:
            print(f"{t.name:<48} unreadable without Spark: {t.error}")
        else:
            print(f"{t.name:<48} {t.rows:>12,} rows  version {t.version:>4}  {t.operation:<8} {t.committed_at:%Y-%m-%d %H:%M:%S} UTC")
    topics = [src.topic for src in _check_all(profile).only("operational").directive.sources.values()]
    committed = status.committed_offsets(Path(profile.checkpoint_path("crom_ingest")))
    try:
        behind = status.lag(end_offsets(profile.kafka, topics), committed)
    except CrmError as exc:
        print(f"ingest lag: unknown ({exc})")
        return 0
    print("ingest lag (records not read yet): " + ", ".join(f"{topic} {n:,}" for topic, n in sorted(behind.items())))
    return 0


def cmd_tables(args, profile: Profile) -> int:
    from pipelines.catalog import catalog
    from pipelines.tables import lakehouse_tables

    out = Path(args.out)
    if not lakehouse_tables(profile.lakehouse):
        raise CrmError(f"no Delta tables under {profile.lakehouse} yet; run `crm demo` (or the jobs) first")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(catalog(profile.lakehouse, _check_all(profile)))
    print(f"table catalogue: {out}")
    return 0


def _report(spark, profile: Profile, directives, out: str | None) -> None:
    from pipelines.crsm.report import build_report

    for strategic in directives.strategic.values():
        folder = Path(out) / strategic.directive.id.split(".", 1)[1] if out else None
        print(f"report {strategic.directive.id}: {build_report(spark, profile, directives, strategic, folder)}")


def cmd_report(args, profile: Profile) -> int:
    directives = _check_all(profile)
    _report(_spark(profile, "crsm-report"), profile, directives, args.out)
    return 0


def cmd_directives(args, profile: Profile) -> int:
    from pipelines.directives import MODEL_OUTPUTS

    directives = _check_all(profile)
    if args.action == "impact":
        from pipelines.directives import impact

        if not args.name:
            raise CrmError("crm directives impact needs the name of an expectation, a topic or a source")
        found = impact(directives, args.name)
        print(f"{found.what} protects {', '.join(found.parameters) or 'no parameter'}")
        for sid, kpi in found.kpis:
            print(f"  KPI at risk: {kpi} ({sid})")
        if not found.kpis:
            print("  no KPI reads those parameters")
        for fid, breakdown in found.breakdowns:
            print(f"  breakdown at risk: {breakdown} ({fid})")
        for sid, rule in found.rules:
            print(f"  recommendation rule at risk: {rule} ({sid})")
        return 0
    if args.action == "check":
        from pipelines.directive_checks import check_expressions

        checked = check_expressions(_spark(profile, "crm-directives-check"), directives)
        n = sum(len(getattr(directives, level)) for level in ("strategic", "functional", "operational"))
        print(f"{n} directives OK in {profile.directives}; {checked} expressions analysed against the tables they run on")
        return 0
    for s in directives.strategic.values():
        print(f"{s.directive.id} v{s.directive.version}  ({s.path.relative_to(profile.directives.parent)})")
        for kpi in s.directive.kpis:
            print(f"  KPI {kpi.name} [{kpi.strategic_variable}] target {kpi.target.op} {kpi.target.value:g}  uses {', '.join(kpi.uses)}")
        if s.directive.purchase_model is not None:
            roles = ", ".join(f"{role} {name}" for role, name in s.directive.purchase_model.parameters().items())
            print(f"  purchase model BG/NBD + Gamma-Gamma -> {', '.join(MODEL_OUTPUTS)}  from {roles}")
        for f in (f for f in directives.functional.values() if f.directive.serves == s.directive.id):
            as_of = f", as of {f.directive.as_of}" if f.directive.as_of else ""
            print(f"  <- {f.directive.id} v{f.directive.version}{as_of}  ({f.path.relative_to(profile.directives.parent)})")
            for p in f.directive.parameters:
                window = f", {p.window_days}d" if p.window_days else f", {p.holdout_days}d after as_of" if p.holdout_days else ""
                what = p.column or (f"{p.latest_per}s by their newest event" if p.latest_per else "*")
                print(f"       param {p.name} = {p.measure}({what}{window}) from {p.source}")
            for o in (o for o in directives.operational.values() if o.directive.serves == f.directive.id):
                print(f"       <- {o.directive.id} v{o.directive.version}  ({o.path.relative_to(profile.directives.parent)})")
                for src in o.directive.sources.values():
                    rules = ", ".join(r.name for r in src.expectations) or "no expectations"
                    print(f"            topic {src.topic} ({src.schema_}, {src.partitions} partitions): {rules}")
    return 0


def _every_job_held(profile: Profile, but: tuple[str, ...] = ()) -> ExitStack:
    """For commands that run or change what every job does: none of the jobs (`but` these) may run beside them."""
    locks = ExitStack()
    try:
        for job in (j for j in JOBS if j not in but):
            locks.enter_context(_single_run(profile, job))
    except BaseException:
        locks.close()
        raise
    return locks


def cmd_demo(args, profile: Profile) -> int:
    directives, checked = _checking_all(profile)
    with _every_job_held(profile):
        return _demo(args, profile, directives, checked)


def cmd_forget(args, profile: Profile) -> int:
    from pipelines.crom.logs import forget_in_templates
    from pipelines.erasure import customer_ids, forget, read_requests
    from pipelines.tables import CromTables

    directives = _check_all(profile)
    ids = customer_ids([*args.customer, *(read_requests(args.requests) if args.requests else [])])
    operational = directives.only("operational").directive
    crom = CromTables.of(profile, list(directives.schemas))
    # CROM may go on ingesting: the erasure's MERGEs retry when a batch commits under them. The
    # jobs that read silver may not run beside it, or they could write back what it erased.
    with _every_job_held(profile, but=("ingest",)):
        spark = _spark(profile, "crm-forget")
        done = forget(spark, profile.lakehouse, crom, ids)
        templates = {s: forget_in_templates(crom.log_templates_state(s), set(ids)) for s, src in operational.sources.items() if src.datafy.logs}
    for e in done.erased:
        print(f"  {e.table:<56} {e.deleted:>9,} rows deleted" + (f", {e.updated:,} rows lost an id from an array" if e.updated else ""))
    for source, n in templates.items():
        if n:
            print(f"  {'crom/_state/log_templates_' + source:<56} {n:>9,} templates lost an id")
    print(f"forgot {len(ids):,} customers in {len(done.erased)} tables and deleted the files every table ({done.vacuumed}) had removed")
    retention = ", ".join(f"{src.topic} {src.retention_hours} h" for src in operational.sources.values())
    print(f"Kafka keeps their raw events until each topic's retention ({retention}): a topic cannot delete single records")
    if done.with_values_in_log:
        print(f"these tables were written before their logs stopped keeping column statistics, so their Delta logs may still "
              f"name the customers until the log retention (delta.logRetentionDuration): {', '.join(done.with_values_in_log)}")  # fmt: skip
    return 0


def cmd_purge(args, profile: Profile) -> int:
    from datetime import datetime, timezone

    from pipelines.crfm.retention import purge_partials
    from pipelines.erasure import purge
    from pipelines.tables import CromTables

    directives = _check_all(profile)
    try:
        now = datetime.fromisoformat(args.as_of).replace(tzinfo=timezone.utc) if args.as_of else datetime.now(timezone.utc)
    except ValueError:
        raise CrmError(f"--as-of {args.as_of!r} is not a date (YYYY-MM-DD)") from None
    operational = directives.only("operational").directive
    with _every_job_held(profile):
        spark = _spark(profile, "crm-purge")
        erased = purge(spark, CromTables.of(profile, list(directives.schemas)), operational.sources, now)
        erased += purge_partials(spark, profile, directives, operational.sources, now)
    for e in erased:
        print(f"  {e.table:<56} {e.deleted:>9,} rows deleted")
    print(f"purged {sum(e.deleted for e in erased):,} rows older than each source's delta_retention_days, CROM rows and CRFM partials "
          f"(as of {now:%Y-%m-%d %H:%M} UTC)")  # fmt: skip
    return 0


def _demo(args, profile: Profile, directives, checked: Future) -> int:
    from pipelines import broker

    # A broker already answering at the bootstrap servers (CRM_KAFKA_BOOTSTRAP) is used as it is.
    started_here = broker.running_pid(profile) is None and not broker.answers(profile.kafka)
    if started_here:
        broker.start(profile)
        log.info("broker started on %s", profile.kafka.bootstrap_servers)
    else:
        log.info("using the broker at %s", profile.kafka.bootstrap_servers)
    spark = None
    try:
        checked.result()
        _sync_topics(profile, directives)
        if args.replay:
            _replay(profile, directives, args.replay, None, None)
            manifest = None
        else:
            manifest = _produce(profile, directives, args.events, args.seed, args.bad_fraction, None, "auto", _traffic(args))
        spark = _spark(profile, "crm-demo")
        _ingest(spark, profile, directives, until_caught_up=True)
        _resolve(spark, profile, directives)
        _functional(spark, profile, directives)
        _print_summary(spark, profile, directives, manifest)
        _strategic(spark, profile, directives)
        _report(spark, profile, directives, None)
        print(f"\nDelta tables under {profile.lakehouse} (crom/, crfm/, crsm/); read them with "
              f"spark.read.format('delta').load(path) or the `deltalake` package.")
    finally:
        if spark is not None:
            spark.stop()  # before the broker, so no Kafka client in Spark outlives it
        if started_here:
            broker.stop(profile)
            log.info("broker stopped")
    return 0


def _print_summary(spark, profile: Profile, directives, manifest) -> None:
    from pyspark.sql import functions as F

    from pipelines.tables import CromTables

    tables = CromTables.of(profile, list(directives.schemas))
    read = lambda path: spark.read.format("delta").load(path)  # noqa: E731
    if manifest is not None:
        print("\nThis run produced:")
        kinds = Counter()
        for (_, kind), n in manifest.by_source_kind.items():
            kinds[kind] += n
        print("  " + ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items())))
    print("\nLakehouse totals (all runs):" if manifest is None else "Lakehouse totals (all runs):")
    print(f"  bronze       {read(tables.bronze).count():>9,} records")
    for source, path in tables.silver.items():
        print(f"  silver_{source:<12}{read(path).count():>9,}")
    reasons = read(tables.quarantine).groupBy("reason_code").count().orderBy("reason_code").collect()
    print(f"  quarantine   {sum(r['count'] for r in reasons):>9,}  " + ", ".join(f"{r['reason_code']} {r['count']:,}" for r in reasons))
    print(f"  late         {read(tables.late).count():>9,}  (older than the watermark, kept in late_events)")
    audit = read(tables.batch_audit).agg(F.sum("duplicates"), F.sum("untrusted")).first()
    print(f"  duplicates   {audit[0] or 0:>9,}  (dropped, counted in batch_audit)")
    print(f"  untrusted    {audit[1] or 0:>9,}  (in silver with trust_level 'untrusted')")
    failed = read(tables.validation_results).where(~F.col("success")).select("rule").distinct().collect()
    print(f"  expectations failing in some batch: {', '.join(r['rule'] for r in failed) or 'none'}")
    print()


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from pipelines.replay import DATASETS  # light: no Spark, no Kafka

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--conf", default="local", help="profile in conf/ (default: local)")
    common.add_argument("--verbose", action="store_true", help="show Spark's, the JVM's and every library's output too (also CRM_DEBUG=1)")

    parser = argparse.ArgumentParser(prog="crm", description="Layered CRM ingestion: CROM -> CRFM -> CRSM on Kafka, Spark and Delta.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("setup", parents=[common], help="fetch the Kafka broker jars and Spark packages")
    p.set_defaults(func=cmd_setup)

    p = sub.add_parser("broker", parents=[common], help="run the embedded Kafka broker")
    p.add_argument("action", choices=["start", "stop", "status", "fetch"])
    p.add_argument("--port", type=int, help="client port (default from the profile); the controller uses port+1")
    p.add_argument("--data-dir", help="broker data folder (default from the profile)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("produce", parents=[common], help="write generated events to the source topics")
    p.add_argument("--events", type=int, required=True, help="how many events")
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.add_argument("--seed", type=int, default=42, help="same seed, same events (default 42)")
    p.add_argument("--bad-fraction", type=float, default=0.0, help="share of bad records, 0..1 (default 0)")
    p.add_argument("--start", default="0", help="index of the first event, or 'auto' to continue after what the topics hold")
    _traffic_arguments(p, FEED)
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser("replay", parents=[common], help="send a real public data set to the source topics")
    p.add_argument("dataset", choices=sorted(DATASETS))
    p.add_argument("--path", type=Path, help="the data set's folder (default: CRM_SAMPLE_DATA or ../shared/data, then the data set's name; cdnow for cdnow-sample)")
    p.add_argument("--limit", type=int, help="send only the first N records")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("topics", parents=[common], help="make the topics what the operational directive says: create, retention, partitions")
    p.add_argument("action", choices=["sync"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("ingest", parents=[common], help="run CROM: Kafka -> bronze, silver, quarantine")
    p.add_argument("--until-caught-up", action="store_true", help="process what is there, then exit (for cron/Airflow)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("resolve", parents=[common], help="run CROM's cross-batch step: silver -> identity map and web sessions")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("functional", parents=[common], help="run CRFM: silver -> functional parameters")
    p.add_argument("--full", action="store_true", help="recompute from all of silver instead of only its new events")
    p.set_defaults(func=cmd_functional)

    p = sub.add_parser("strategic", parents=[common], help="run CRSM: functional parameters -> KPIs against targets")
    p.set_defaults(func=cmd_strategic)

    p = sub.add_parser("directives", parents=[common], help="validate or show the directive chain, or what a rule or topic puts at risk")
    p.add_argument("action", choices=["check", "plan", "impact"])
    p.add_argument("name", nargs="?", help="impact: an expectation's name, a topic or a source")
    p.set_defaults(func=cmd_directives)

    p = sub.add_parser("train", parents=[common], help="train a model from labelled data")
    p.add_argument("model", choices=["sentiment"])
    p.add_argument("--labels", required=True, help="CSV with a header, one labelled text per row")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--label-column", default="label", help="column holding negative/neutral/positive (default: label)")
    p.add_argument("--output", help="model folder (default: <models>/sentiment from the profile)")
    p.add_argument("--iterations", type=int, help="optimiser iterations of the logistic regression (default 100)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("docs", parents=[common], help="build Great Expectations Data Docs from the CROM validation results")
    p.add_argument("--out", help="site folder (default: <lakehouse>/_data_docs/gx/uncommitted/data_docs/local_site)")
    p.add_argument("--batches", type=int, default=50, help="how many of the newest batches to show (default 50)")
    p.set_defaults(func=cmd_docs)
    p = sub.add_parser("status", parents=[common], help="tables (rows, version, last commit) and the ingest lag per topic")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("tables", parents=[common], help="write the catalogue of every Delta table and column (no Spark needed)")
    p.add_argument("--out", default="docs/tables.md", help="Markdown file (default docs/tables.md)")
    p.set_defaults(func=cmd_tables)
    p = sub.add_parser("report", parents=[common], help="HTML report of the strategic KPIs, their goals and V1-V5 validity")
    p.add_argument("--out", help="folder for the reports, one subfolder per strategic directive (default: <lakehouse>/_reports)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("forget", parents=[common], help="erase customers from every table of every layer, in one pass")
    p.add_argument("customer", nargs="*", help="customer ids, e.g. C000123")
    p.add_argument("--requests", type=Path, help="a file of erasure requests: one customer id per line, '#' starts a comment")
    p.set_defaults(func=cmd_forget)
    p = sub.add_parser("purge", parents=[common], help="delete CROM rows older than each source's delta_retention_days")
    p.add_argument("--as-of", help="the day retention counts back from (YYYY-MM-DD, UTC); default now")
    p.set_defaults(func=cmd_purge)

    p = sub.add_parser("demo", parents=[common], help="broker, events, CROM, CRFM, CRSM and a summary, end to end")
    p.add_argument("--events", type=int, default=100_000, help="events to produce (default 100000)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bad-fraction", type=float, default=0.02, help="share of bad records (default 0.02)")
    p.add_argument("--replay", choices=sorted(DATASETS), help="send this public data set instead of generated events")
    _traffic_arguments(p, SMALL_SHOP)
    p.set_defaults(func=cmd_demo)
    return parser


def _traffic_arguments(parser: argparse.ArgumentParser, default: Traffic) -> None:
    """The generated feed's scale; the defaults say which profile they are."""
    parser.add_argument("--customers", type=int, default=default.customers, help=f"customers the events come from (default {default.customers:,})")
    parser.add_argument(
        "--events-per-day", type=float, default=default.events_per_day,
        help=f"event time advances by a day every this many events (default {default.events_per_day:,.0f})",
    )  # fmt: skip


def _traffic(args) -> Traffic:
    try:
        return Traffic(args.customers, args.events_per_day)
    except ValueError as exc:
        raise CrmError(f"--customers/--events-per-day: {exc}") from None


def _validate_args(args) -> None:
    if getattr(args, "events", 1) is not None and getattr(args, "events", 1) < 0:
        raise CrmError("--events must be zero or more")
    if not 0.0 <= getattr(args, "bad_fraction", 0.0) <= 1.0:
        raise CrmError("--bad-fraction must be between 0 and 1")
    if getattr(args, "rate", None) is not None and args.rate <= 0:
        raise CrmError("--rate must be positive")
    if getattr(args, "iterations", None) is not None and args.iterations < 1:
        raise CrmError("--iterations must be at least 1")
    if getattr(args, "batches", 1) < 1:
        raise CrmError("--batches must be at least 1")
    start = getattr(args, "start", "0")
    if start != "auto" and not str(start).isdigit():
        raise CrmError("--start must be a non-negative integer or 'auto'")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _validate_args(args)
        profile = load_profile(args.conf)
    except CrmError as exc:
        print(f"crm: error: {exc}", file=sys.stderr)
        return 1
    verbose = console.verbose_requested(args.verbose)
    # Under spark-submit the JVM started first and owns the console; only Python's side is routed.
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    try:
        with console.command_output(profile.cache / "logs", args.command, verbose, native_to_log=not under_submit) as log_file:
            return _run(args, profile, log_file)
    except BrokenPipeError:  # the reader went away (`crm status | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the final flush cannot fail either
        return 0


def _run(args, profile: Profile, log_file: Path) -> int:
    """The command, with a one-line message for any failure."""
    try:
        return args.func(args, profile)
    except CrmError as exc:
        print(f"crm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("crm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise
    except Exception as exc:  # one line for the user; CRM_DEBUG=1 shows the traceback
        log.debug("failed", exc_info=True)
        if console.debug_requested():
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"crm: error: {type(exc).__name__}: {first} (traceback in {log_file})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
