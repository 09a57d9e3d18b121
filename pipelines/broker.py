"""The embedded Apache Kafka broker: KRaft, one node, on 127.0.0.1, from Maven Central jars.

`fetch_jars` runs Maven once to copy the broker's runtime jars into the cache folder.
`start` formats storage on first use, starts `kafka.Kafka` with its output in a log file,
records the pid, and returns only when the admin client gets cluster metadata back.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import CONF_DIR, Profile
from pipelines.errors import CrmError

POM = CONF_DIR / "broker" / "pom.xml"
LOG4J = CONF_DIR / "broker" / "log4j2.yaml"


@dataclass(frozen=True)
class BrokerPaths:
    data_dir: Path
    libs: Path

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def storage(self) -> Path:
        return self.data_dir / "kraft"


def paths(profile: Profile, data_dir: Path | None = None) -> BrokerPaths:
    return BrokerPaths(Path(data_dir or profile.broker.data_dir), profile.cache / "kafka-libs")


def fetch_jars(profile: Profile) -> Path:
    """Copy the broker's runtime jars from Maven Central into the cache (once)."""
    libs = paths(profile).libs
    marker = libs / ".complete"
    if marker.exists() and marker.read_text() == POM.read_text():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise CrmError("`mvn` is not on PATH; install Maven (apt-get install maven) to fetch the Kafka broker jars")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    cmd = [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={libs}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise CrmError(f"fetching Kafka jars with Maven failed: {tail[0]}")
    marker.write_text(POM.read_text())
    return libs


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _running_pid(p: BrokerPaths) -> int | None:
    """The broker's pid if the pid file names a live Kafka process, else None."""
    try:
        pid = int(p.pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if b"kafka.Kafka" in cmdline and str(p.properties).encode() in cmdline else None


def _write_properties(p: BrokerPaths, port: int, controller_port: int) -> None:
    p.properties.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={p.storage}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )


def _java() -> str:
    java = shutil.which("java", path=os.path.join(os.environ["JAVA_HOME"], "bin") if os.environ.get("JAVA_HOME") else None)
    java = java or shutil.which("java")
    if java is None:
        raise CrmError("`java` is not on PATH; the Kafka broker and Spark need Java 17")
    return java


def _cluster_id() -> str:
    """A random KRaft cluster id. Like Kafka's own, never one starting with '-': the storage
    tool would read it as an option and refuse to format (about 1 start in 64)."""
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22]
        if not candidate.startswith("-"):
            return candidate


def start(profile: Profile, port: int | None = None, controller_port: int | None = None, data_dir: Path | None = None) -> int:
    """Start the broker and wait until it answers metadata requests. Returns its pid."""
    p = paths(profile, data_dir)
    port = port or profile.broker.port
    controller_port = controller_port or (port + 1 if port != profile.broker.port else profile.broker.controller_port)
    pid = _running_pid(p)
    if pid is not None:
        raise CrmError(f"broker already running (pid {pid}); log: {p.log_file}")
    java = _java()
    for busy in (port, controller_port):
        if not _port_free(busy):
            raise CrmError(f"port 127.0.0.1:{busy} is already in use; choose another with --port")
    libs = fetch_jars(profile)
    p.data_dir.mkdir(parents=True, exist_ok=True)
    _write_properties(p, port, controller_port)
    classpath = f"{libs}/*"
    if not (p.storage / "meta.properties").exists():
        cluster_id = _cluster_id()
        fmt = subprocess.run(
            [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster_id, "-c", str(p.properties)],
            capture_output=True,
            text=True,
        )
        if fmt.returncode != 0:
            p.log_file.write_text(fmt.stdout + fmt.stderr)
            raise CrmError(f"formatting Kafka storage failed; log: {p.log_file}")
    with open(p.log_file, "ab") as log_handle:
        proc = subprocess.Popen(
            [java, f"-Xmx{profile.broker.heap}", f"-Dlog4j2.configurationFile={LOG4J}", "-cp", classpath, "kafka.Kafka", str(p.properties)],
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives the CLI; stopped by pid file
        )
    p.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + profile.broker.start_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            p.pid_file.unlink(missing_ok=True)
            raise CrmError(f"broker exited with code {proc.returncode} while starting; log: {p.log_file}")
        if _metadata_ok(f"127.0.0.1:{port}"):
            return proc.pid
        time.sleep(0.5)
    stop(profile, data_dir)
    raise CrmError(f"broker did not answer metadata within {profile.broker.start_timeout_s:.0f}s; log: {p.log_file}")


def _metadata_ok(bootstrap: str) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # Refused connections are the expected answer while the broker starts; kafka-python
    # logs each one as an error, so it is silenced for the probe only.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
        try:
            return bool(admin.describe_cluster().get("brokers"))
        finally:
            admin.close()
    except (KafkaError, OSError, ValueError):
        return False
    finally:
        kafka_log.setLevel(level)


def stop(profile: Profile, data_dir: Path | None = None, timeout_s: float = 30.0) -> bool:
    """Stop the broker named by the pid file; True if one was running. Cleans a stale pid file."""
    p = paths(profile, data_dir)
    pid = _running_pid(p)
    if pid is None:
        p.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _running_pid(p) is not None:
        time.sleep(0.2)
    if _running_pid(p) is not None:
        os.kill(pid, signal.SIGKILL)
    p.pid_file.unlink(missing_ok=True)
    return True


def running_pid(profile: Profile, data_dir: Path | None = None) -> int | None:
    """The broker's pid if it runs, without a metadata round trip."""
    return _running_pid(paths(profile, data_dir))


def status(profile: Profile, data_dir: Path | None = None) -> tuple[int | None, bool]:
    """(pid or None, whether the configured bootstrap servers answer metadata)."""
    p = paths(profile, data_dir)
    return _running_pid(p), _metadata_ok(profile.kafka.bootstrap_servers)
