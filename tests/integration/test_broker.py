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
