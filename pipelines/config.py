"""Profiles in conf/: where the lakehouse, checkpoints and broker live, and how Spark starts.

A profile is a YAML file `conf/<name>.yaml`. Relative paths resolve against the repository
root; CRM_LAKEHOUSE, CRM_CHECKPOINTS, CRM_KAFKA_BOOTSTRAP, CRM_MAX_OFFSETS_PER_TRIGGER and
CRM_IDEMPOTENT_WRITES override the profile.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from pipelines.errors import CrmError, describe_validation_error


def _repo_root() -> Path:
    """The checkout holding conf/, directives/ and schemas/. Under spark-submit --py-files the
    package is imported from a zip; the jobs then run from the repository root (or CRM_HOME)."""
    if os.environ.get("CRM_HOME"):
        return Path(os.environ["CRM_HOME"]).resolve()
    package_parent = Path(__file__).resolve().parent.parent
    return package_parent if package_parent.is_dir() else Path.cwd().resolve()


REPO_ROOT = _repo_root()
CONF_DIR = REPO_ROOT / "conf"
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Strict):
    bootstrap_servers: str


class BrokerSettings(_Strict):
    port: int = 9092
    controller_port: int = 9093
    data_dir: str = ".broker"
    heap: str = "512m"
    start_timeout_s: float = 60.0


class SparkSettings(_Strict):
    master: str = "local[2]"
    packages: list[str]
    conf: dict[str, str] = {}


class IngestSettings(_Strict):
    max_offsets_per_trigger: int = 50_000
    trigger_interval: str = "5 seconds"
    starting_offsets: str = "earliest"
    # Skip a (table, batch) already written. Off only to demonstrate the duplicates a replay
    # makes without it; CRM_IDEMPOTENT_WRITES=0 turns it off.
    idempotent_writes: bool = True


class Profile(_Strict):
    name: str
    lakehouse: Path
    checkpoints: Path
    directives: Path
    schemas: Path
    cache: Path
    models: Path  # trained models (`crm train`)
    kafka: KafkaSettings
    broker: BrokerSettings
    spark: SparkSettings
    ingest: IngestSettings

    def table_path(self, layer: str, table: str) -> str:
        return str(self.lakehouse / layer / table)

    @property
    def sentiment_model(self) -> Path:
        return self.models / "sentiment"

    def checkpoint_path(self, job: str) -> str:
        return str(self.checkpoints / job)


def sample_data() -> Path:
    """The public data sets (tweets, access logs, Loghub, CDNOW): CRM_SAMPLE_DATA, else ../shared/data."""
    return Path(os.environ.get("CRM_SAMPLE_DATA") or REPO_ROOT.parent / "shared" / "data").resolve()


def _resolve(path: str | Path) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else REPO_ROOT / p).resolve()


def _merged(base: dict, override: dict) -> dict:
    """base with override's keys; mappings are merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _read_profile(name: str, seen: tuple[str, ...]) -> dict:
    """conf/<name>.yaml as a mapping, on top of the profile it `extends`, if any."""
    if not _PROFILE_NAME.match(name):
        raise CrmError(f"profile name {name!r} must be a plain name of a file in {CONF_DIR}")
    if name in seen:
        raise CrmError(f"profiles extend each other in a loop: {' -> '.join((*seen, name))}")
    path = CONF_DIR / f"{name}.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise CrmError(f"cannot read profile {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise CrmError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise CrmError(f"{path}: a profile must be a mapping")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise CrmError(f"{path}: extends: must name another profile in {CONF_DIR}")
    return _merged(_read_profile(parent, (*seen, name)), raw)


def load_profile(name: str = "local") -> Profile:
    """Read conf/<name>.yaml, apply environment overrides and resolve paths."""
    path = CONF_DIR / f"{name}.yaml"
    raw = _read_profile(name, ())

    env = os.environ
    raw.setdefault("kafka", {})
    for key, var in (("lakehouse", "CRM_LAKEHOUSE"), ("checkpoints", "CRM_CHECKPOINTS")):
        if env.get(var):
            raw[key] = env[var]
    if env.get("CRM_IDEMPOTENT_WRITES") in ("0", "false"):
        raw.setdefault("ingest", {})["idempotent_writes"] = False
    if env.get("CRM_MAX_OFFSETS_PER_TRIGGER"):
        raw.setdefault("ingest", {})["max_offsets_per_trigger"] = env["CRM_MAX_OFFSETS_PER_TRIGGER"]
    if env.get("CRM_KAFKA_BOOTSTRAP"):
        raw["kafka"]["bootstrap_servers"] = env["CRM_KAFKA_BOOTSTRAP"]
    if env.get("CRM_SPARK_MASTER"):
        raw.setdefault("spark", {})["master"] = env["CRM_SPARK_MASTER"]
    raw.setdefault("models", ".models")
    for key in ("lakehouse", "checkpoints", "directives", "schemas", "cache", "models"):
        if key in raw:
            raw[key] = _resolve(raw[key])
    if isinstance(raw.get("broker"), dict) and "data_dir" in raw["broker"]:
        raw["broker"]["data_dir"] = str(_resolve(raw["broker"]["data_dir"]))
    try:
        return Profile(name=name, **raw)
    except ValidationError as exc:
        raise CrmError(describe_validation_error(path, exc)) from exc
