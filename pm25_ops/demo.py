"""`pm25 demo` (run by `make demo`): the whole system on one machine, started and stopped here.

Starts the embedded broker and a worker process, replays the 12 Beijing multi-site stations for a
few simulated days, prints the forecasts as they arrive, checks them against the offline backtest
of the same readings (same code path, so the bytes must be equal), prints a summary and stops
everything it started. Exit status 0 only if every station got forecasts with 24 horizons and
every expected forecast arrived.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pm25.adapters import MULTISITE_STATIONS, RowError
from pm25.embedded import EmbeddedBroker, free_port
from pm25.schema import forecast_from_json
from pm25.settings import Settings
from pm25.viewer import format_forecast
from pm25_ops.processes import WorkerProcess, metric_value

__all__ = ["run_demo"]


def _hindcast(text: str) -> list[tuple[int, float, float]]:
    values: dict[tuple[int, str], float] = {}
    for line in text.splitlines():
        if line.startswith("pm25_hindcast_rmse{"):
            labels, value = line.rsplit(" ", 1)
            h = int(labels.split('horizon="')[1].split('"')[0])
            model = labels.split('model="')[1].split('"')[0]
            values[(h, model)] = float(value)
    hs = sorted({h for h, _ in values})
    return [(h, values.get((h, "forecast"), math.nan), values.get((h, "persistence"), math.nan)) for h in hs]


def _summary_and_wait(dash_port: int, web_port: int) -> None:
    print(
        f"\nkeeping everything running: dashboard http://127.0.0.1:{dash_port}/, "
        f"metrics http://127.0.0.1:{web_port}/metrics; Ctrl-C stops",
        flush=True,
    )
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass


def _start_broker(kind: str) -> tuple[Any, dict[str, str], str]:
    """The demo's broker: the embedded one (no Java) or Apache Kafka (pm25.apache_kafka)."""
    if kind == "kafka":
        from pm25.apache_kafka import ApacheKafka

        kafka = ApacheKafka(partitions=4).start()
        return (
            kafka,
            {"PM25_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "PM25_EMBEDDED_BROKER": "0"},
            (f"Apache Kafka {kafka.version} on {kafka.bootstrap_servers}"),
        )
    broker = EmbeddedBroker().start()
    return (
        broker,
        {"PM25_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "PM25_EMBEDDED_BROKER": "1"},
        (f"embedded broker on {broker.bootstrap_servers}"),
    )


def run_demo(
    hours: int = 96,
    speedup: float = 36000.0,
    timeout: float = 180.0,
    keep_open: bool = False,
    broker_kind: str = "embedded",
) -> int:
    """Broker, worker and dashboard up; the readings replayed; every forecast the offline backtest
    expects awaited; a summary; everything stopped. 0 if every expected forecast arrived."""
    from pm25.kafka import ensure_topics, publish_stations
    from pm25.stations import read_stations_csv
    from producer.replay import load_source
    from stream_processor.backtest import make_engine
    from stream_processor.engine import run_offline

    workdir = Path(tempfile.mkdtemp(prefix="pm25-demo-"))
    broker, broker_env, broker_text = _start_broker(broker_kind)
    web_port = free_port()
    env = {**broker_env, "PM25_WEB_PORT": str(web_port)}
    settings = Settings.from_env({**os.environ, **env})
    worker = WorkerProcess(env, workdir / "worker.log")
    dashboard, dash_log, dash_port = _start_dashboard(env, workdir)
    print(f"{broker_text}; worker log {worker.log_path}", flush=True)
    print(f"dashboard: http://127.0.0.1:{dash_port}/  (live during the replay)", flush=True)
    try:
        ensure_topics(settings)
        stations = list(read_stations_csv().values())
        publish_stations(settings, stations)  # the worker's networks; the station pages' neighbours
        # What the worker must publish: the same readings through the same code, offline (the
        # final forecast of each station and hour: re-issues replace earlier ones).
        invalid: list[RowError] = []
        readings = list(load_source("multisite", invalid, hours=hours))
        engine = make_engine(settings, stations)
        expected = {(f.station_id, f.issued_at): f.value for f in run_offline(engine, readings)}
        worker.start()
        ready_s = worker.wait_ready()
        print(f"worker ready in {ready_s:.1f} s; metrics at http://127.0.0.1:{web_port}/metrics", flush=True)
        received: dict[tuple[str, str], bytes] = {}
        report = _replay_and_wait(settings, readings, invalid, speedup, timeout, expected, received)
        metrics = worker.metrics()
        if keep_open:
            _summary_and_wait(dash_port, web_port)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=10)
        dash_log.close()
        worker.stop()
        broker.stop()
        if hasattr(broker, "close"):
            broker.close()
    return 0 if _print_summary(report, expected, received, metrics) else 1


def _start_dashboard(env: dict[str, str], workdir: Path) -> tuple[subprocess.Popen[bytes], Any, int]:
    port = free_port()
    log = open(workdir / "dashboard.log", "wb")  # noqa: SIM115 - closed by run_demo
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "pm25_ops.cli", "dashboard", "--port", str(port)],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, log, port


def _replay_and_wait(
    settings: Settings,
    readings: list[Any],
    invalid: list[RowError],
    speedup: float,
    timeout: float,
    expected: dict[tuple[str, str], bytes],
    received: dict[tuple[str, str], bytes],
) -> Any:
    """Replay the readings while printing every forecast as it arrives (into ``received``) until
    all expected ones are in or ``timeout`` passes; returns the replay report."""
    from pm25.kafka import make_consumer, make_producer
    from producer.replay import ReplayReport, replay

    done = threading.Event()

    def consume() -> None:
        consumer = make_consumer(settings, settings.forecasts_topic, group_id=None, consumer_timeout_ms=500)
        try:
            while not done.is_set():
                for msg in consumer:
                    f = forecast_from_json(msg.value)
                    received[(f.station_id, f.issued_at)] = msg.value
                    print(format_forecast(f), flush=True)
        finally:
            consumer.close()

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    report = ReplayReport(invalid=invalid)
    producer = make_producer(settings)
    replay(producer, settings.readings_topic, readings, report, speedup=speedup, progress=False)
    producer.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(expected) <= set(received):
        time.sleep(0.5)
    done.set()
    thread.join(timeout=10)
    return report


def _print_summary(
    report: Any, expected: dict[tuple[str, str], bytes], received: dict[tuple[str, str], bytes], metrics: str
) -> bool:
    stations = Counter(s for s, _ in received)
    horizons_ok = all(len(forecast_from_json(v).horizons) == 24 for v in received.values())
    missing = set(expected) - set(received)
    mismatched = [k for k in expected if k in received and received[k] != expected[k]]
    versions = sorted({forecast_from_json(v).model_version for v in received.values()})
    print("\n== demo summary ==")
    print(
        f"readings sent:        {report.sent} ({report.first_hour} .. {report.last_hour}), "
        f"invalid rows {len(report.invalid)}"
    )
    print(
        f"forecasts received:   {len(received)} (expected {len(expected)} from the offline backtest; "
        f"missing {len(missing)}, differing bytes {len(mismatched)})"
    )
    print(
        f"stations forecast:    {len(stations)} of {len(MULTISITE_STATIONS)}: "
        + ", ".join(f"{s} {n}" for s, n in sorted(stations.items()))
    )
    print(f"horizons per forecast: {'24 in every forecast' if horizons_ok else 'NOT 24 in every forecast'}")
    print(f"model version:        {', '.join(versions)}")
    print(
        f"worker metrics:       readings in {metric_value(metrics, 'pm25_readings_in_total'):.0f}, "
        f"forecasts out {metric_value(metrics, 'pm25_forecasts_out_total'):.0f}, "
        f"dead letters {metric_value(metrics, 'pm25_dead_letters_total'):.0f}"
    )
    skill = _hindcast(metrics)
    if skill:
        print(
            "live hindcast RMSE:   "
            + ", ".join(f"+{h}h {m:.1f} vs persistence {p:.1f}" for h, m, p in skill)
            + " (µg/m³, all stations)"
        )
    ok = len(stations) == len(MULTISITE_STATIONS) and horizons_ok and not missing and not mismatched
    print("demo: OK" if ok else "demo: FAILED")
    return ok
