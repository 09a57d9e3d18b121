"""Profiles in conf/: where the lakehouse, checkpoints and broker live, and how Spark starts.

A profile is a YAML file `conf/<name>.yaml`. Relative paths resolve against the repository
root and must stay inside it; CRM_LAKEHOUSE, CRM_CHECKPOINTS, CRM_KAFKA_BOOTSTRAP,
CRM_KAFKA_USERNAME, CRM_KAFKA_PASSWORD, CRM_KAFKA_CAFILE, CRM_MAX_OFFSETS_PER_TRIGGER and
CRM_IDEMPOTENT_WRITES override the profile.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

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
    """Where the broker is and how to authenticate. The password is never in a profile: it is
    read from CRM_KAFKA_PASSWORD, and SecretStr keeps it out of reprs, logs and errors."""

    bootstrap_servers: str
    security_protocol: Literal["PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-256"
    username: str | None = None
    password: SecretStr | None = None
    ssl_cafile: Path | None = None  # the CA that signed the broker's certificate (PEM)

    def credentials(self) -> tuple[str, str, Path]:
        """Username, password and CA; checked when a connection is made, so that commands
        that need none (`crm broker stop`) run without them."""
        needed = {
            "a username (kafka.username, CRM_KAFKA_USERNAME)": self.username,
            "a password (CRM_KAFKA_PASSWORD)": self.password,
            "a CA certificate (kafka.ssl_cafile, CRM_KAFKA_CAFILE)": self.ssl_cafile,
        }
        missing = [what for what, value in needed.items() if not value]
        if missing:
            raise CrmError(f"Kafka over SASL_SSL needs {', '.join(missing)}")
        return self.username, self.password.get_secret_value(), self.ssl_cafile

    @property
    def secure(self) -> bool:
        return self.security_protocol == "SASL_SSL"

    def client_options(self) -> dict:
        """Keyword arguments for kafka-python's producer, consumer and admin clients."""
        options: dict = {"bootstrap_servers": self.bootstrap_servers}
        if self.secure:
            username, password, cafile = self.credentials()
            options.update(
                security_protocol="SASL_SSL",
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=username,
                sasl_plain_password=_Hidden(password),
                ssl_cafile=str(cafile),
            )
        return options

    def spark_options(self) -> dict[str, str]:
        """Options of Spark's Kafka source and sink. The JAAS line holds the password: Spark
        redacts it from plans and the event log (spark.sql.redaction.options.regex)."""
        options = {"kafka.bootstrap.servers": self.bootstrap_servers}
        if self.secure:
            username, password, cafile = self.credentials()
            options.update(
                {
                    "kafka.security.protocol": "SASL_SSL",
                    "kafka.sasl.mechanism": self.sasl_mechanism,
                    "kafka.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                    f'username="{_jaas_quoted(username)}" password="{_jaas_quoted(password)}";',
                    "kafka.ssl.truststore.type": "PEM",
                    "kafka.ssl.truststore.location": str(cafile),
                }
            )
        return options


class _Hidden(str):
    """A password kafka-python uses as the str it is, shown as stars: its admin client logs
    all of its settings at DEBUG."""

    def __repr__(self) -> str:
        return "'**********'"


def _jaas_quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


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


def inside(root: Path, path: Path, what: str) -> Path:
    """A file the project reads (a directive, schema, profile or rate table): `path`, relative
    to `root` unless absolute, resolved through '..' and symbolic links; refused if it then
    lies outside `root` (itself resolved), so a link cannot lead a directive out of its folder."""
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root.resolve()):
        shown = f"{path} -> {resolved}" if resolved != Path(os.path.normpath(root / path)) else str(path)
        raise CrmError(f"{what}: {shown} leads outside {root}; refused")
    return resolved


def _resolve(path: str | Path, setting: str, where: Path) -> Path:
    """A profile's folder: absolute as given, or relative to the repository root, where '..'
    may not lead out of it (a link may: placing the lakehouse on another disk is the operator's choice)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p.resolve()
    if not Path(os.path.normpath(REPO_ROOT / p)).is_relative_to(REPO_ROOT):
        raise CrmError(f"{where}: {setting} (give an absolute path to mean another place): {str(p)!r} leads outside {REPO_ROOT}; refused")
    return (REPO_ROOT / p).resolve()


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
    path = inside(CONF_DIR, Path(f"{name}.yaml"), "profile")
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
    if "password" in raw["kafka"]:
        raise CrmError(f"{path}: kafka.password: a password never goes in a profile; set CRM_KAFKA_PASSWORD")
    for key, var in (("bootstrap_servers", "CRM_KAFKA_BOOTSTRAP"), ("username", "CRM_KAFKA_USERNAME"), ("password", "CRM_KAFKA_PASSWORD"), ("ssl_cafile", "CRM_KAFKA_CAFILE")):
        if env.get(var):
            raw["kafka"][key] = env[var]
    if raw["kafka"].get("ssl_cafile"):
        raw["kafka"]["ssl_cafile"] = _resolve(raw["kafka"]["ssl_cafile"], "kafka.ssl_cafile", path)
    if env.get("CRM_SPARK_MASTER"):
        raw.setdefault("spark", {})["master"] = env["CRM_SPARK_MASTER"]
    raw.setdefault("models", ".models")
    for key in ("lakehouse", "checkpoints", "directives", "schemas", "cache", "models"):
        if key in raw:
            raw[key] = _resolve(raw[key], key, path)
    if isinstance(raw.get("broker"), dict) and "data_dir" in raw["broker"]:
        raw["broker"]["data_dir"] = str(_resolve(raw["broker"]["data_dir"], "broker.data_dir", path))
    try:
        return Profile(name=name, **raw)
    except ValidationError as exc:  # not chained: pydantic's message repeats the input, password and all
        raise CrmError(describe_validation_error(path, exc)) from None
