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
