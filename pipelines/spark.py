"""One way to get a SparkSession with Delta and the Kafka source, from a profile."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

import pyarrow as pa
from pyspark.sql import DataFrame, Row, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from pipelines.config import Profile
from pipelines.console import debug_requested
from pipelines.files import replace_atomically

log = logging.getLogger(__name__)


def session_builder(profile: Profile, app_name: str) -> SparkSession.Builder:
    """A builder with Delta, the Kafka source and the profile's Spark settings.

    Jars come from Maven Central through Ivy and are cached under the profile's cache folder;
    once a start has resolved them, later starts put the same jars on the classpath without
    asking Ivy again (`remember_resolved_jars`). Under spark-submit the caller's --packages and
    --master win over these defaults.
    """
    builder = (
        SparkSession.builder.appName(app_name)
        .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
        .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog")
        .config("spark.sql.warehouse.dir", str(profile.lakehouse / "_warehouse"))
    )
    jars = None if _lists_no_jars(profile) else resolved_jars(profile)
    if jars:
        log.debug("Spark packages: the %d jars listed in %s, without Ivy", len(jars), resolved_jars_file(profile))
        builder = builder.config("spark.jars", ",".join(jars))
    else:
        builder = builder.config("spark.jars.packages", ",".join(profile.spark.packages)).config("spark.jars.ivy", str(profile.cache / "ivy"))
    if not _under_spark_submit():
        builder = builder.master(profile.spark.master)
        # Python workers (mapInPandas) must run this interpreter, whose venv has our
        # packages; PySpark's default is whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in profile.spark.conf.items():
        builder = builder.config(key, value)
    if debug_requested():
        builder = builder.config("spark.python.sql.dataFrameDebugging.enabled", "true")
    return builder


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands its gateway port to Python.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _lists_no_jars(profile: Profile) -> bool:
    """Under spark-submit the caller chose the jars; jars named in the profile's own conf are
    merged with the packages' by Ivy's path only."""
    return _under_spark_submit() or "spark.jars" in profile.spark.conf


def resolved_jars_file(profile: Profile) -> Path:
    """Where the jars Ivy resolved for exactly the profile's packages are listed."""
    packages = hashlib.sha256(",".join(sorted(profile.spark.packages)).encode()).hexdigest()[:16]
    return profile.cache / "ivy" / f"resolved-jars-{packages}.txt"


def resolved_jars(profile: Profile) -> list[str] | None:
    """The jars an earlier start resolved for the profile's packages, if each is still on disk."""
    try:
        jars = resolved_jars_file(profile).read_text().splitlines()
    except FileNotFoundError:
        return None
    return jars if jars and all(Path(j).is_file() for j in jars) else None


def remember_resolved_jars(spark: SparkSession, profile: Profile) -> None:
    """List the jars Ivy resolved for this session's packages, for `session_builder`'s next start."""
    if _lists_no_jars(profile) or resolved_jars(profile):
        return
    uris = [j for j in spark.sparkContext.getConf().get("spark.jars", "").split(",") if j]
    jars = [urlparse(u).path if u.startswith("file:") else u for u in uris]
    if jars and all(Path(j).is_file() for j in jars):
        try:
            replace_atomically(resolved_jars_file(profile), "\n".join(jars).encode())
        except OSError:  # another start wrote the same list at the same moment: it is there
            pass


def get_spark(profile: Profile, app_name: str) -> SparkSession:
    """Return the active session, or start one from the profile."""
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    spark = keep_jars_off_python_path(session_builder(profile, app_name).getOrCreate())
    remember_resolved_jars(spark, profile)
    spark.sparkContext.setLogLevel("WARN")
    return spark


def keep_jars_off_python_path(spark: SparkSession) -> SparkSession:
    """Take the Maven jars (`spark.jars.packages`) off the Python path of the driver and workers.

    For a Python application, spark-submit puts every resolved jar on the Python path as if it
    held Python code, and each Python task calls `importlib.invalidate_caches()`, which re-reads
    every jar there: about 0.2 s a task. The jars hold only JVM code; the JVM's classpath keeps them.
    """
    context = spark.sparkContext
    context._python_includes = [p for p in context._python_includes if not p.lower().endswith(".jar")]
    sys.path[:] = [p for p in sys.path if not p.lower().endswith(".jar")]
    return spark


def with_constants(frame: DataFrame, constants: DataFrame) -> DataFrame:
    """`frame` plus the columns of `constants`, a one-row frame of values that change from one
    run of the same query to the next (a micro-batch's id, its watermarks).

    Spark writes a literal's value into the Java source it generates, so literals that change
    every micro-batch made Spark compile the batch's classes anew (about 40 in a CROM batch).
    Joined as data, the source stays the same and the compiled classes are reused.
    """
    return frame.crossJoin(F.broadcast(constants))


def local_frame(spark: SparkSession, rows: Iterable[tuple | dict], schema: T.StructType) -> DataFrame:
    """A few rows from Python as a frame that holds them in its plan (a local relation).

    `createDataFrame` over Python objects builds an RDD of pickled rows instead, and every query
    that reads it runs a job to unpickle them (0.4 s, against 0.03 s for the same row through
    Arrow). Naive datetimes are local time, as PySpark reads them.
    """
    names = schema.fieldNames()
    as_dicts = [r.asDict() if isinstance(r, Row) else r if isinstance(r, dict) else dict(zip(names, r)) for r in rows]
    table = pa.Table.from_pylist([{k: _aware(v) for k, v in r.items()} for r in as_dicts], schema=to_arrow_schema(schema))
    return spark.createDataFrame(table, schema)


def _aware(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone() if value.tzinfo is None else value
    if isinstance(value, dict):
        return {k: _aware(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_aware(v) for v in value]
    return value
