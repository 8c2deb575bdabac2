"""Fault tests that need Apache Kafka itself: the broker killed and restarted on its data, and
consumer-group churn. Each prints its counts (see the session summary)."""

from __future__ import annotations

import threading
import time

import pytest

from pm25.apache_kafka import ApacheKafka
from pm25.embedded import free_port
from pm25.kafka import ensure_topics
from pm25.schema import forecast_from_json
from pm25.settings import Settings
from pm25_ops.processes import WorkerProcess, metric_value
from producer.replay import load_source
from tests.integration.conftest import collect, worker_env
from tests.integration.test_faults import _paced_send, by_key, expected_forecasts

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STATIONS = {"Dongsi", "Wanliu", "Huairou", "Gucheng", "Tiantan", "Shunyi"}


def _env(servers: str, run_id: str) -> dict[str, str]:
    return worker_env(servers, False, run_id)


def _defences(*workers: WorkerProcess) -> str:
    """How often the worker's defences against the consumer library fired (README: which of them
    still fire on Apache Kafka)."""
    seeks = replayed = 0.0
    for w in workers:
        try:
            text = w.metrics()
        except OSError:
            continue
        seeks += metric_value(text, "pm25_input_seeks_total")
        replayed += metric_value(text, "pm25_readings_replayed_total")
    return f"offset-guard/tail seeks {seeks:.0f}, replayed readings recognised {replayed:.0f}"


def _wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def test_broker_killed_and_restarted_on_its_data_the_worker_recovers_by_itself(tmp_path, run_id, report_counts):
    kafka = ApacheKafka(free_port(), tmp_path / "kafka-data", partitions=4).start()
    try:
        env = _env(kafka.bootstrap_servers, run_id)
        settings = Settings.from_env(env)
        ensure_topics(settings)
        readings = list(load_source("multisite", [], stations=STATIONS, hours=480))
        expected = expected_forecasts(settings, readings)
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        worker.wait_ready()
        half = len(readings) // 2
        _paced_send(settings, readings[:half], 1500.0)
        collect(settings, settings.forecasts_topic, lambda m: len(m) >= half // 3, timeout=120)
        kafka.kill()  # SIGKILL mid-stream
        lost_seen = _wait_for(lambda: worker.ready_status() == 503, timeout=20)  # the worker says so
        kafka.start()  # same port, same data folder
        sender = threading.Thread(target=_paced_send, args=(settings, readings[half:], 1500.0))
        sender.start()
        sender.join()
        msgs = collect(
            settings,
            settings.forecasts_topic,
            lambda m: expected.keys() <= by_key(m)[0].keys(),
            timeout=240,
        )
        latest, seen = by_key(msgs)
        report_counts(
            f"readings {len(readings)}, forecasts expected {len(expected)}, received {len(msgs)} "
            f"(duplicates {sum(n - 1 for n in seen.values())}); broker SIGKILLed after {half} readings and "
            f"restarted; /ready answered 503 while it was down: {lost_seen}; {_defences(worker)}; worker alive {worker.proc is not None and worker.proc.poll() is None}"
        )
        assert worker.proc is not None and worker.proc.poll() is None  # it recovered by itself
        assert lost_seen, "/ready kept answering 200 while the broker was down"
        assert _wait_for(lambda: worker.ready_status() == 200, timeout=60)  # and ready again after
        assert "broker unreachable" in worker.log_path.read_text(errors="replace")
        assert expected.keys() <= latest.keys()
        assert latest == expected
        worker.stop()
    finally:
        kafka.close()


def test_consumer_group_churn_keeps_every_forecast_byte_identical(broker, tmp_path, run_id, report_counts):
    servers, embedded = broker
    assert not embedded
    env = _env(servers, run_id)
    settings = Settings.from_env(env)
    ensure_topics(settings)
    readings = list(load_source("multisite", [], stations=STATIONS, hours=720))
    expected = expected_forecasts(settings, readings)
    first = WorkerProcess(env, tmp_path / "w1.log").start()
    first.wait_ready()
    sender = threading.Thread(target=_paced_send, args=(settings, readings, 400.0))
    sender.start()
    time.sleep(2.5)
    second = WorkerProcess(env | {"PM25_WEB_PORT": str(free_port())}, tmp_path / "w2.log").start()  # joins
    time.sleep(3.0)
    first.stop()  # SIGTERM
    time.sleep(1.0)
    second.stop(kill=True)  # SIGKILL
    third = WorkerProcess(env | {"PM25_WEB_PORT": str(free_port())}, tmp_path / "w3.log").start()
    third.wait_ready()
    sender.join()
    msgs = collect(settings, settings.forecasts_topic, lambda m: expected.keys() <= by_key(m)[0].keys(), timeout=240)
    latest, seen = by_key(msgs)
    report_counts(
        f"readings {len(readings)}, forecasts expected {len(expected)}, received {len(msgs)} "
        f"(duplicates {sum(n - 1 for n in seen.values())}); a worker joined, one left (SIGTERM), one was "
        f"killed (SIGKILL) and restarted; {_defences(third)}"
    )
    assert expected.keys() <= latest.keys()
    assert latest == expected
    by_forecast: dict = {}
    for m in msgs:
        f = forecast_from_json(m.value)
        by_forecast.setdefault((f.station_id, f.issued_at), set()).add(m.value)
    assert all(len(v) == 1 for v in by_forecast.values())  # every duplicate byte-identical
    third.stop()
