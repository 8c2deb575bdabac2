"""Shared fixtures. Integration tests run against a real broker: Apache Kafka (KRaft, from Maven
Central, started once by the test session: pm25.apache_kafka), or the Kafka named by
PM25_TEST_BOOTSTRAP_SERVERS. A test parametrised with ``broker`` = "embedded" (indirectly) runs on
the embedded Tansu broker instead, which keeps its own coverage (end to end, kill -9)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import default_store, load_production
from pm25.apache_kafka import ApacheKafka
from pm25.embedded import EmbeddedBroker

REPO = Path(__file__).resolve().parent.parent
_SESSION: dict[str, ApacheKafka] = {}


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start Apache Kafka once when any selected test needs a broker, and say so in the header."""
    if os.environ.get("PM25_TEST_BOOTSTRAP_SERVERS") or session.config.option.collectonly:
        return
    if not any(item.get_closest_marker("broker") for item in session.items):
        return
    kafka = _SESSION["kafka"] = ApacheKafka(partitions=4).start()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"broker: Apache Kafka {kafka.version} ({kafka.bootstrap_servers})")


def pytest_sessionfinish(session: pytest.Session) -> None:
    kafka = _SESSION.pop("kafka", None)
    if kafka is not None:
        kafka.close()


def apache_kafka() -> ApacheKafka:
    """The session's Apache Kafka (started in pytest_collection_finish)."""
    if "kafka" not in _SESSION:  # e.g. a test selected by a plugin after collection
        _SESSION["kafka"] = ApacheKafka(partitions=4).start()
    return _SESSION["kafka"]


@pytest.fixture(scope="session")
def broker(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool]]:
    """(bootstrap servers, embedded?). Apache Kafka unless parametrised indirectly with "embedded"."""
    kind = getattr(request, "param", "apache")
    external = os.environ.get("PM25_TEST_BOOTSTRAP_SERVERS")
    if kind == "embedded":
        b = EmbeddedBroker().start()
        try:
            yield b.bootstrap_servers, True
        finally:
            b.stop()
    elif external:
        yield external, False
    else:
        yield apache_kafka().bootstrap_servers, False


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def production_bundle():
    return load_production(default_store())


_COUNTS: list[str] = []


@pytest.fixture
def report_counts(request):
    """Record a line of counts; all of them are printed in the test run's summary."""

    def add(text: str) -> None:
        _COUNTS.append(f"{request.node.name}: {text}")
        print(text)

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if _COUNTS:
        terminalreporter.section("counts reported by the integration and fault tests")
        for line in _COUNTS:
            terminalreporter.write_line(line)
