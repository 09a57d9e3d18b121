"""The embedded broker: clear failures, and stop that works after a crash."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from pipelines import broker
from pipelines.errors import CrmError
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_second_start_and_busy_port_fail_clearly(kafka, base_profile, tmp_path):
    profile, data_dir = kafka
    port = int(profile.kafka.bootstrap_servers.rsplit(":", 1)[1])
    with pytest.raises(CrmError, match=r"broker already running \(pid \d+\); log: .*broker.log"):
        broker.start(base_profile, port=port, data_dir=data_dir)
    with pytest.raises(CrmError, match=rf"port 127.0.0.1:{port} is already in use"):
        broker.start(base_profile, port=port, controller_port=free_port(), data_dir=tmp_path / "other")


def test_missing_java_fails_clearly(base_profile, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    with pytest.raises(CrmError, match=r"`java` is not on PATH"):
        broker.start(base_profile, port=free_port(), controller_port=free_port(), data_dir=tmp_path / "b")


def test_broker_dying_on_start_names_its_log(base_profile, tmp_path):
    # A listener bound by someone else after our port check makes Kafka exit while starting.
    port, controller = free_port(), free_port()
    data_dir = tmp_path / "dies"
    data_dir.mkdir()
    (data_dir / "kraft").mkdir()
    (data_dir / "kraft" / "meta.properties").write_text("garbage=1\n")  # storage that is not Kafka's
    with pytest.raises(CrmError, match=r"broker exited with code \d+ while starting; log: .*dies/broker.log"):
        broker.start(base_profile, port=port, controller_port=controller, data_dir=data_dir)


def test_stop_after_crash_cleans_up(base_profile, tmp_path):
    port, controller = free_port(), free_port()
    data_dir = tmp_path / "crash"
    pid = broker.start(base_profile, port=port, controller_port=controller, data_dir=data_dir)
    os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, 0)  # reap it, as a supervisor would
    except ChildProcessError:
        pass  # already reaped by subprocess bookkeeping
    assert broker.stop(base_profile, data_dir) is False  # nothing left to stop
    assert not (data_dir / "broker.pid").exists()
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", port))


def test_topics_follow_the_directive_retention_and_partitions(own_topics):
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType

    from pipelines.topics import sync_topics

    profile, directives = own_topics  # the shipped settings: created by the fixture
    sources = directives.only("operational").directive.sources
    assert sync_topics(profile.kafka, sources) == []  # already as the directive says
    web, log = sources["web"], sources["log"]
    changed = {
        "web": web.model_copy(update={"retention_hours": 24, "partitions": web.partitions + 1}),
        "new": log.model_copy(update={"topic": f"{log.topic}.new"}),
    }
    lines = sync_topics(profile.kafka, {**sources, **changed})
    assert f"{web.topic}: retention {web.retention_hours} h -> 24 h" in lines
    assert f"{web.topic}: partitions {web.partitions} -> {web.partitions + 1}" in lines
    assert f"{log.topic}.new: created" in lines and len(lines) == 3
    admin = KafkaAdminClient(bootstrap_servers=profile.kafka.bootstrap_servers)
    try:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, web.topic, configs={"retention.ms": None})], config_filter="all")
        assert configs["topic"][web.topic]["retention.ms"]["value"] == str(24 * 3_600_000)
        assert {t["name"]: len(t["partitions"]) for t in admin.describe_topics([web.topic])} == {web.topic: web.partitions + 1}
    finally:
        admin.close()
    shrunk = sync_topics(profile.kafka, {"web": changed["web"].model_copy(update={"partitions": 1})})
    assert shrunk == [f"{web.topic}: keeps {web.partitions + 1} partitions (the directive says 1; a topic cannot lose partitions)"]
