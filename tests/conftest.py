"""Shared fixtures. Integration tests run against a real broker: the embedded Tansu broker by
default, or the Kafka named by PM25_TEST_BOOTSTRAP_SERVERS (the CI job with an Apache Kafka
service container sets it)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_store import default_store, load_production
from pm25.embedded import EmbeddedBroker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def broker() -> Iterator[tuple[str, bool]]:
    """(bootstrap servers, embedded?)"""
    external = os.environ.get("PM25_TEST_BOOTSTRAP_SERVERS")
    if external:
        yield external, False
        return
    b = EmbeddedBroker().start()
    try:
        yield b.bootstrap_servers, True
    finally:
        b.stop()


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
