from __future__ import annotations

import contextlib
import os
import signal
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
        "PM25_STATION_READINGS_TOPIC": f"readings-by-station-{run_id}",
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


def forecast_mismatch(got: dict, expected: dict, *workers: WorkerProcess) -> str:
    """Empty when ``got`` equals ``expected`` (final forecast bytes by key); otherwise a short
    account of the keys missing, extra and different (the first few each) and the workers' log
    tails, instead of pytest's diff of hundreds of forecast bodies."""
    missing = sorted(expected.keys() - got.keys())
    extra = sorted(got.keys() - expected.keys())
    differ = sorted(k for k in expected.keys() & got.keys() if got[k] != expected[k])
    if not (missing or extra or differ):
        return ""
    lines = [f"missing {len(missing)}: {missing[:8]}", f"extra {len(extra)}: {extra[:8]}"]
    lines.append(f"different {len(differ)}: {differ[:8]}")
    for key in differ[:2]:
        lines += [f"{key} got:      {got[key][:400]!r}", f"{key} expected: {expected[key][:400]!r}"]
    for n, w in enumerate(workers):
        if w.proc is not None and w.proc.poll() is None:  # alive: its counters, tasks and consumer
            with contextlib.suppress(OSError):
                counters = [x for x in w.metrics().splitlines() if x.startswith("pm25_") and "_bucket" not in x]
                lines += [f"--- worker {n} counters ---", *counters]
            os.kill(w.proc.pid, signal.SIGUSR1)
            time.sleep(1.0)
        lines += [f"--- worker {n} log: what happened ---", w.events(), f"--- worker {n} log tail ---", w.tail(60)]
    return "\n".join(lines)
