"""Decides how a local Apache Kafka broker (KRaft, single node, 127.0.0.1) is fetched, started and stopped.

Used when KAFKA_BOOTSTRAP_SERVERS names no cluster: the jars come from Maven Central through
deploy/kafka/pom.xml, the data lives in a git-ignored folder, and `up` returns only once an
admin call succeeds.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from streams.admin import KafkaUnavailable, wait_for_broker
from streams.settings import REPO_ROOT, Settings

KAFKA_DIR = REPO_ROOT / "deploy" / "kafka"
LIBS = KAFKA_DIR / "target" / "libs"


class BrokerError(RuntimeError):
    """The local broker could not be fetched, started or stopped; the message says why."""


@dataclass(frozen=True)
class LocalBroker:
    port: int = 9092  # the controller listens on port + 1
    data_dir: Path = REPO_ROOT / ".engage" / "kafka"
    # (user name, password) pairs: when given, a SASL_PLAINTEXT listener (mechanism PLAIN) on port + 2
    # takes them, so clients' authentication settings can be tried without a cluster of one's own
    sasl_users: tuple[tuple[str, str], ...] = ()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str | None:
        return f"127.0.0.1:{self.port + 2}" if self.sasl_users else None

    def properties(self, template: str) -> str:
        """The broker's server.properties, from the template."""
        sasl_listener, sasl_config = "", ""
        if self.sasl_users:
            sasl_listener = f",SASL_PLAINTEXT://{self.sasl_bootstrap}"
            users = " ".join(f'user_{name}="{password}"' for name, password in self.sasl_users)
            sasl_config = ("sasl.enabled.mechanisms=PLAIN\n"
                           "listener.name.sasl_plaintext.plain.sasl.jaas.config="
                           f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};\n")
        return template.format(port=self.port, controller_port=self.port + 1, log_dirs=self.data_dir / "logs",
                               sasl_listener=sasl_listener, sasl_config=sasl_config)

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None


def fetch_jars() -> None:
    """Download the broker jars once (mvn dependency:copy-dependencies)."""
    if LIBS.is_dir() and any(LIBS.glob("kafka_2.13-*.jar")):
        return
    if shutil.which("mvn") is None:
        raise BrokerError("Maven (mvn) is needed to fetch the Kafka broker, or set KAFKA_BOOTSTRAP_SERVERS")
    proc = subprocess.run(["mvn", "-q", "-B", "-f", str(KAFKA_DIR / "pom.xml"), "dependency:copy-dependencies"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BrokerError(f"mvn could not fetch the Kafka jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def _java(*args: str, log: Path | None = None) -> list[str]:
    cmd = ["java", "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true",
           f"-Dlog4j.configuration=file:{KAFKA_DIR / 'log4j.properties'}",
           f"-Dkafka.log.file={log or '/dev/null'}", "-cp", f"{LIBS}/*", *args]
    return cmd


def up(broker: LocalBroker, timeout_s: float = 90.0) -> bool:
    """Start the broker unless it runs already; returns True when this call started it."""
    if broker.pid() is not None:
        wait_for_broker(Settings(bootstrap_servers=broker.bootstrap), timeout_s)
        return False
    if shutil.which("java") is None:
        raise BrokerError("Java 17 is needed to run the local Kafka broker, or set KAFKA_BOOTSTRAP_SERVERS")
    fetch_jars()
    broker.data_dir.mkdir(parents=True, exist_ok=True)
    logs = broker.data_dir / "logs"
    props = broker.data_dir / "server.properties"
    props.write_text(broker.properties((KAFKA_DIR / "server.properties.template").read_text()))
    if not (logs / "meta.properties").exists():
        fmt = subprocess.run(_java("kafka.tools.StorageTool", "format", "--ignore-formatted", "-t", str(uuid.uuid4()),
                                   "-c", str(props)), capture_output=True, text=True)
        if fmt.returncode != 0:
            raise BrokerError(f"formatting the KRaft storage failed: {fmt.stderr[-1500:] or fmt.stdout[-1500:]}")
    out = open(broker.data_dir / "broker.out", "ab")
    # own session: a Ctrl-C in the terminal reaches the orchestrator, which stops the broker in order
    proc = subprocess.Popen(_java("kafka.Kafka", str(props), log=broker.log_file), stdout=out, stderr=out,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    broker.pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            broker.pid_file.unlink(missing_ok=True)
            raise BrokerError(f"the broker exited with code {proc.returncode}; see {broker.log_file}")
        try:
            wait_for_broker(Settings(bootstrap_servers=broker.bootstrap), timeout_s=5)
            return True
        except KafkaUnavailable:
            continue
    down(broker)
    raise BrokerError(f"the broker did not answer on {broker.bootstrap} within {timeout_s:.0f}s; see {broker.log_file}")


def down(broker: LocalBroker, timeout_s: float = 30.0) -> bool:
    """Stop the broker cleanly (SIGTERM, then SIGKILL after timeout_s); returns True if one was running."""
    pid = broker.pid()
    if pid is None:
        broker.pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        _reap(pid)
        time.sleep(0.2)
    else:
        os.kill(pid, signal.SIGKILL)
        _reap(pid)
    broker.pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
