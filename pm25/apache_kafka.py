"""Apache Kafka from Maven Central: a single-node KRaft broker (combined broker and controller) on
127.0.0.1, for `pm25 kafka`, the test session and the benchmarks, without Docker.

The jars are resolved once by Maven from the checked-in ``broker/pom.xml`` into a cache folder git
ignores (``.cache/kafka/<version>/lib``, or ``PM25_KAFKA_CACHE``); the storage is formatted on the
first start of a data folder, which then persists across restarts. Against this broker every
embedded-broker workaround (pm25.embedded) stays off: it is the broker users run.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["ApacheKafka", "KafkaUnavailable", "kafka_version", "resolve_jars"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
POM = REPO / "broker" / "pom.xml"
#: The broker's heap: Kafka's scripts default to 1 GB; a single test broker needs far less.
HEAP = ("-Xms128m", "-Xmx512m")
READY_LINE = "Kafka Server started"


class KafkaUnavailable(RuntimeError):
    """Apache Kafka cannot be resolved or started here (no java or mvn, a failed start, ...)."""


def kafka_version(pom: Path = POM) -> str:
    """The Apache Kafka version the pom pins (read when needed: an image without the source
    checkout's ``broker/`` folder still runs every other command)."""
    try:
        text = pom.read_text()
    except OSError as err:
        raise KafkaUnavailable(f"{pom} not found: `pm25 kafka` runs from a source checkout") from err
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", text)
    if match is None:
        raise KafkaUnavailable(f"{pom}: no <kafka.version> property")
    return match.group(1)


def _cache_root() -> Path:
    return Path(os.environ.get("PM25_KAFKA_CACHE") or REPO / ".cache" / "kafka")


def resolve_jars(quiet: bool = False) -> Path:
    """The folder of Apache Kafka's runtime jars, resolved by Maven the first time."""
    version = kafka_version()
    lib = _cache_root() / version / "lib"
    if (lib / f"kafka_2.13-{version}.jar").is_file():
        return lib
    java, mvn = shutil.which("java"), shutil.which("mvn")
    if java is None or mvn is None:
        missing = " and ".join(n for n, p in (("java", java), ("mvn", mvn)) if p is None)
        raise KafkaUnavailable(f"Apache Kafka needs Java 17+ and Maven on the PATH; {missing} not found")
    if not quiet:
        log.info("resolving Apache Kafka %s from Maven Central into %s (once)", version, lib)
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise KafkaUnavailable(f"mvn could not resolve Apache Kafka {version}: {(proc.stdout + proc.stderr)[-800:]}")
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    return lib


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LOG4J2_PROPERTIES = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = warn
"""


def _cluster_id() -> str:
    """16 random bytes, URL-safe base64 without padding, not starting with "-" (the storage tool
    would read such an id as an option: seen as a failed format about once in 64 starts)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


class ApacheKafka:
    """One Apache Kafka process: ``start()``, ``stop()`` (controlled shutdown), ``kill()`` (SIGKILL),
    and ``start()`` again on the same data folder."""

    def __init__(self, port: int | None = None, data_dir: Path | None = None, *, partitions: int = 1) -> None:
        self.port = port or _free_port()
        self._tmp = None if data_dir is not None else tempfile.TemporaryDirectory(prefix="pm25-kafka-")
        self.data_dir = Path(data_dir) if data_dir is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.controller_port = _free_port()
        self.partitions = partitions
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = "unknown"  # read from the pom when the broker starts

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def _properties(self) -> Path:
        logs = self.data_dir / "logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(logs),
            "num.partitions": str(self.partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.cleaner.dedupe.buffer.size": "1048577",
            "auto.create.topics.enable": "true",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, lib: Path, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaUnavailable("Apache Kafka needs Java 17+ on the PATH; java not found")
        log_config = self.data_dir / "log4j2.properties"
        log_config.write_text(_LOG4J2_PROPERTIES)
        return [java, *HEAP, f"-Dlog4j2.configurationFile={log_config}", "-cp", f"{lib}/*", *args]

    def _format(self, lib: Path, props: Path) -> None:
        if (self.data_dir / "logs" / "meta.properties").is_file():
            return  # formatted before: the data persists
        cluster_id = _cluster_id()
        cmd = self._java(lib, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)  # noqa: S603
        if proc.returncode != 0:
            raise KafkaUnavailable(f"formatting the KRaft storage failed: {(proc.stdout + proc.stderr)[-800:]}")

    def start(self, timeout: float = 90.0) -> ApacheKafka:
        lib = resolve_jars()
        self.version = kafka_version()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise KafkaUnavailable(f"port {self.port} is already in use")
        props = self._properties()
        self._format(lib, props)
        start_size = self.log_path.stat().st_size if self.log_path.exists() else 0
        out = open(self.log_path, "ab")  # noqa: SIM115 - the broker's stdout for its whole life
        self.proc = subprocess.Popen(  # noqa: S603
            self._java(lib, "kafka.Kafka", str(props)), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise KafkaUnavailable(f"Apache Kafka exited with {self.proc.returncode}: {self.tail()}")
            with open(self.log_path, "rb") as fh:
                fh.seek(start_size)
                text = fh.read().decode(errors="replace")
            if READY_LINE in text and self._answers():
                log.info("Apache Kafka %s ready on %s", self.version, self.bootstrap_servers)
                return self
            time.sleep(0.2)
        self.kill()
        raise KafkaUnavailable(f"Apache Kafka did not start within {timeout:.0f} s: {self.tail()}")

    def _answers(self) -> bool:
        """A client's metadata request returns this broker."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000, reconnect_backoff_max_ms=500
            )
        except KafkaError:
            return False
        try:
            return bool(admin.describe_cluster().get("brokers"))
        except KafkaError:
            return False
        finally:
            admin.close()

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """Controlled shutdown (SIGTERM), SIGKILL after ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (the data folder stays for a restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def rss_bytes(self) -> int:
        """The broker process's resident memory (Linux), 0 when unknown."""
        if self.proc is None:
            return 0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return 0
        return 0

    def __enter__(self) -> ApacheKafka:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()
