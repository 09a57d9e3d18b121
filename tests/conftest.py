"""Shared fixtures: one Spark session for the whole run, a throwaway lakehouse per test,
and the project's own Kafka broker on a free 127.0.0.1 port for integration tests."""

from __future__ import annotations

import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from pipelines.config import Profile, load_profile
from pipelines.directives import DirectiveSet, load_directives


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_profile() -> Profile:
    return load_profile("local")


def profile_in(base_profile: Profile, folder: Path) -> Profile:
    """The local profile with its lakehouse and checkpoints in `folder`."""
    return base_profile.model_copy(update={"lakehouse": folder / "lakehouse", "checkpoints": folder / "checkpoints"})


@pytest.fixture
def profile(base_profile: Profile, tmp_path: Path) -> Profile:
    """The local profile with its lakehouse and checkpoints in a temporary folder."""
    return profile_in(base_profile, tmp_path)


@pytest.fixture(scope="session")
def directives(base_profile: Profile) -> DirectiveSet:
    return load_directives(base_profile.directives, base_profile.schemas)


# The test session runs queries through Spark's interpreted operators instead of compiling each
# new query's Java code, which on tests' few rows costs more than it saves (a fifth of the unit
# tests' time). The results are the same; `crm` processes and `codegen` tests compile as
# production does.
INTERPRETED = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
COMPILED = {"spark.sql.codegen.wholeStage": "true", "spark.sql.codegen.factoryMode": "FALLBACK"}


@pytest.fixture(scope="session")
def spark(base_profile: Profile, tmp_path_factory):
    from pipelines.spark import keep_jars_off_python_path, session_builder

    warehouse = tmp_path_factory.mktemp("warehouse")
    session = (
        session_builder(base_profile, "crm-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.warehouse.dir", str(warehouse))
        .config("spark.driver.memory", "3g")
        .config(map=INTERPRETED)
        .getOrCreate()
    )
    keep_jars_off_python_path(session)
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture
def codegen(spark):
    """The test session compiling queries' code, as Spark's defaults and production do."""
    _set(spark, COMPILED)
    yield
    _set(spark, INTERPRETED)


def _set(spark, conf: dict[str, str]) -> None:
    for key, value in conf.items():
        spark.conf.set(key, value)


@pytest.fixture(scope="session")
def kafka(base_profile: Profile, tmp_path_factory):
    """A real broker for the session; yields a profile whose bootstrap servers point at it."""
    from pipelines import broker

    port = free_port()
    data_dir = tmp_path_factory.mktemp("broker")
    broker.start(base_profile, port=port, controller_port=free_port(), data_dir=data_dir)
    bootstrap = f"127.0.0.1:{port}"
    try:
        yield base_profile.model_copy(
            update={"kafka": base_profile.kafka.model_copy(update={"bootstrap_servers": bootstrap})}
        ), data_dir
    finally:
        broker.stop(base_profile, data_dir)


@pytest.fixture
def own_topics(kafka, profile, directives, request):
    """The session broker with topics of this test's own: (the profile pointing at it, the
    directives with every source's topic prefixed by the test's name). For tests that run
    CROM in this process; a `crm` subprocess reads the shipped directives (see own_broker)."""
    from pipelines.topics import ensure_topics
    from tests.helpers import with_topic_prefix

    kprofile, _ = kafka
    ours = with_topic_prefix(directives, re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:100])
    ensure_topics(kprofile.kafka, ours.only("operational").directive.sources)
    return profile.model_copy(update={"kafka": kprofile.kafka}), ours


@contextmanager
def broker_of_its_own(base_profile: Profile, profile: Profile, directives: DirectiveSet, data_dir: Path) -> Iterator[tuple[Profile, dict]]:
    """A broker with empty topics, and the profile pointing at it; yields (profile, the ports and
    data folder it may be restarted with)."""
    from pipelines import broker
    from pipelines.topics import ensure_topics

    ports = dict(port=free_port(), controller_port=free_port(), data_dir=data_dir)
    broker.start(base_profile, **ports)
    bootstrap = f"127.0.0.1:{ports['port']}"
    profile = profile.model_copy(update={"kafka": profile.kafka.model_copy(update={"bootstrap_servers": bootstrap})})
    ensure_topics(profile.kafka, directives.only("operational").directive.sources)
    try:
        yield profile, ports
    finally:
        broker.stop(base_profile, data_dir)


@pytest.fixture
def own_broker(base_profile, profile, directives, tmp_path):
    """A broker of this test's own (empty topics; it may be restarted), and the profile pointing at it."""
    with broker_of_its_own(base_profile, profile, directives, tmp_path / "broker") as found:
        yield found
