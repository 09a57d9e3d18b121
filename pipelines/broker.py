"""The embedded Apache Kafka broker: KRaft, one node, on 127.0.0.1, from Maven Central jars.

`fetch_jars` runs Maven once to copy the broker's runtime jars into the cache folder.
`start` formats storage on first use, starts `kafka.Kafka` with its output in a log file,
records the pid, and returns only when the admin client gets cluster metadata back.

When the profile's kafka.security_protocol is SASL_SSL, the client listener is SASL_SSL with
SCRAM: a CA the project generates (pipelines/tls.py) signs the broker's certificate, the
broker itself authenticates as `admin` (a random password kept in the data folder), and the
profile's user gets its SCRAM credential from CRM_KAFKA_PASSWORD at every start.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from pipelines.config import CONF_DIR, KafkaSettings, Profile
from pipelines.errors import CrmError
from pipelines.tls import BrokerTls, ensure_broker_tls, write_private

log = logging.getLogger(__name__)
ADMIN = "admin"  # the broker's own SCRAM user, for its inter-broker listener
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

    @property
    def admin_password_file(self) -> Path:
        return self.data_dir / "admin.password"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"


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
    log.info("fetching the Kafka broker jars from Maven Central into %s (first run only)", libs)
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
        raise CrmError(f"fetching Kafka jars with Maven failed: {tail[0]}")
    marker.write_text(POM.read_text())
    log.info("fetched %d broker jars in %.0fs", len(list(libs.glob("*.jar"))), time.monotonic() - started)
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


def _security_lines(p: BrokerPaths, kafka: KafkaSettings) -> list[str]:
    """The SASL_SSL listener's settings (the controller listener stays on loopback, plaintext)."""
    tls = ensure_broker_tls(p.tls_dir)
    keystore_password = tls.keystore_password()
    return [
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=SASL_SSL",
        f"sasl.enabled.mechanisms={kafka.sasl_mechanism}",
        f"sasl.mechanism.inter.broker.protocol={kafka.sasl_mechanism}",
        f"listener.name.sasl_ssl.{kafka.sasl_mechanism.lower()}.sasl.jaas.config="
        f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{ADMIN}" password="{_admin_password(p)}";',
        "ssl.keystore.type=PKCS12",
        f"ssl.keystore.location={tls.keystore}",
        f"ssl.keystore.password={keystore_password}",
        f"ssl.key.password={keystore_password}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={tls.ca}",
    ]


def _admin_password(p: BrokerPaths) -> str:
    """The broker's own SCRAM password, made on first use and kept readable by the owner only."""
    if not p.admin_password_file.exists():
        write_private(p.admin_password_file, secrets.token_urlsafe(24).encode())
    return p.admin_password_file.read_text().strip()


def _write_properties(p: BrokerPaths, port: int, controller_port: int, kafka: KafkaSettings) -> None:
    protocol = "SASL_SSL" if kafka.secure else "PLAINTEXT"
    listener_lines = (
        _security_lines(p, kafka)
        if kafka.secure
        else ["listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT", "inter.broker.listener.name=PLAINTEXT"]
    )
    write_private(
        p.properties,
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
                f"listeners={protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners={protocol}://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                *listener_lines,
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
        ).encode(),
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


def _format_storage(p: BrokerPaths, java: str, classpath: str, kafka: KafkaSettings) -> None:
    """Format KRaft storage; a secure broker's own SCRAM user must exist before it can serve."""
    scram = ["--add-scram", f"{kafka.sasl_mechanism}=[name={ADMIN},password={_admin_password(p)}]"] if kafka.secure else []
    command = [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id(), "-c", str(p.properties)]
    fmt = subprocess.run([*command, *scram], capture_output=True, text=True)
    if fmt.returncode != 0:
        output = fmt.stdout + fmt.stderr
        p.log_file.write_text(output.replace(_admin_password(p), "***") if kafka.secure else output)
        raise CrmError(f"formatting Kafka storage failed; log: {p.log_file}")


def start(profile: Profile, port: int | None = None, controller_port: int | None = None, data_dir: Path | None = None) -> int:
    """Start the broker and wait until it answers metadata requests. Returns its pid."""
    p = paths(profile, data_dir)
    port = port or profile.broker.port
    controller_port = controller_port or (port + 1 if port != profile.broker.port else profile.broker.controller_port)
    pid = _running_pid(p)
    if pid is not None:
        raise CrmError(f"broker already running (pid {pid}); log: {p.log_file}")
    if profile.kafka.secure:
        profile.kafka.credentials()  # the user's password is needed once the broker is up
    java = _java()
    for busy in (port, controller_port):
        if not _port_free(busy):
            raise CrmError(f"port 127.0.0.1:{busy} is already in use; choose another with --port")
    libs = fetch_jars(profile)
    p.data_dir.mkdir(parents=True, exist_ok=True)
    _write_properties(p, port, controller_port, profile.kafka)
    classpath = f"{libs}/*"
    if not (p.storage / "meta.properties").exists():
        _format_storage(p, java, classpath, profile.kafka)
    elif profile.kafka.secure and not p.admin_password_file.exists():
        raise CrmError(f"the broker storage in {p.data_dir} was formatted without SASL users; give the secure broker a data_dir of its own")
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
        if _metadata_ok(_own_client(p, profile.kafka, port)):
            if profile.kafka.secure:
                _set_user_credential(p, profile.kafka, port)
            return proc.pid
        time.sleep(0.5)
    stop(profile, data_dir)
    raise CrmError(f"broker did not answer metadata within {profile.broker.start_timeout_s:.0f}s; log: {p.log_file}")


def _own_client(p: BrokerPaths, kafka: KafkaSettings, port: int) -> KafkaSettings:
    """How the broker's starter connects: as `admin`, trusting the broker's own CA."""
    update: dict = {"bootstrap_servers": f"127.0.0.1:{port}"}
    if kafka.secure:
        update.update(username=ADMIN, password=SecretStr(_admin_password(p)), ssl_cafile=BrokerTls(p.tls_dir).ca)
    return kafka.model_copy(update=update)


def _set_user_credential(p: BrokerPaths, kafka: KafkaSettings, port: int) -> None:
    """Give the profile's user its SCRAM credential (CRM_KAFKA_PASSWORD), replacing any older one."""
    from kafka import KafkaAdminClient
    from kafka.admin import UserScramCredentialUpsertion

    admin = KafkaAdminClient(**_own_client(p, kafka, port).client_options(), request_timeout_ms=10_000)
    try:
        username, password, _ = kafka.credentials()
        upsert = UserScramCredentialUpsertion(username, kafka.sasl_mechanism, password, iterations=8192)
        error = admin.alter_user_scram_credentials([upsert]).get(username)
    finally:
        admin.close()
    if error:
        raise CrmError(f"setting the SCRAM credential of user {username!r} failed: {error}")


def _metadata_ok(kafka: KafkaSettings) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    # Refused connections are the expected answer while the broker starts; kafka-python
    # logs each one as an error, so it is silenced for the probe only.
    kafka_log = logging.getLogger("kafka")
    level = kafka_log.level
    kafka_log.setLevel(logging.CRITICAL)
    try:
        # kafka-python waits 30 s by default for a first connection: a dead broker, or none, would hold the probe that long.
        admin = KafkaAdminClient(**kafka.client_options(), request_timeout_ms=3000, bootstrap_timeout_ms=3000)
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
    return _running_pid(p), answers(profile.kafka)


def answers(kafka: KafkaSettings) -> bool:
    """Whether a broker at the bootstrap servers answers with cluster metadata."""
    return _metadata_ok(kafka)
