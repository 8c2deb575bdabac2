from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pm25.embedded import free_port
from pm25.kafka import ensure_topics, make_consumer, make_producer
from pm25.schema import Reading, reading_to_json
from pm25.settings import Settings
from pm25_ops.processes import WorkerProcess

pytestmark = pytest.mark.broker


def worker_env(servers: str, embedded: bool, run_id: str) -> dict[str, str]:
    """A test application's settings: its own app id, topics and web port on the given broker."""
    return {
        "PM25_BOOTSTRAP_SERVERS": servers,
        "PM25_EMBEDDED_BROKER": "1" if embedded else "0",
        "PM25_APP_ID": f"pm25-test-{run_id}",
        "PM25_READINGS_TOPIC": f"readings-{run_id}",
        "PM25_FORECASTS_TOPIC": f"forecasts-{run_id}",
        "PM25_DLQ_TOPIC": f"dlq-{run_id}",
        "PM25_SCORES_TOPIC": f"scores-{run_id}",
        "PM25_STATIONS_TOPIC": f"stations-{run_id}",
        "PM25_WEB_PORT": str(free_port()),
    }


@pytest.fixture
def settings_env(broker, run_id, tmp_path) -> dict[str, str]:
    servers, embedded = broker
    return worker_env(servers, embedded, run_id)


@pytest.fixture
def settings(settings_env) -> Settings:
    s = Settings.from_env(settings_env)
    ensure_topics(s)
    return s


@pytest.fixture
def start_worker(settings_env, settings, tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**extra_env: str) -> WorkerProcess:
        env = dict(settings_env) | extra_env
        w = WorkerProcess(env, tmp_path / f"worker-{len(started)}.log").start()
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


def send_raw(settings: Settings, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = make_producer(settings)
    for key, value in messages:
        producer.send(settings.readings_topic, key=key, value=value)
    producer.flush()
    producer.close()


def send_readings(settings: Settings, readings: list[Reading]) -> None:
    send_raw(settings, [(r.station_id.encode(), reading_to_json(r)) for r in readings])


def collect(settings: Settings, topic: str, until: Callable[[list], bool], timeout: float = 90.0) -> list:
    """All messages of ``topic`` from the beginning until ``until(messages)`` or timeout."""
    consumer = make_consumer(settings, topic, group_id=None, consumer_timeout_ms=300)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            out.extend(consumer)
    finally:
        consumer.close()
    return out


def repo_path() -> Path:
    return Path(__file__).resolve().parents[2]
