"""`pm25 bench`: inference and end-to-end figures anyone can rerun, with a JSON report and a plot.

1. Inference: the production bundle in onnxruntime at batch 1 and batched, and the same model in
   Keras ``predict`` (from the bundle's ``model.keras``), in one run.
2. End to end on the embedded broker, one worker process: 45 warm-up hours of many stations
   preloaded (they fill the windows; not timed); once the worker has forecast them, the timed hours
   are offered as fast as the producer goes -> readings/s from the first timed reading in to the
   last timed forecast out (every expected forecast counted; three runs, median and range
   reported); then readings offered at a fixed rate -> reading-to-forecast latency (Kafka
   timestamps of reading and forecast, same clock).
3. The same run through the naive worker (``benchmarks.naive_worker``), same bench.
4. Scale-out: the same run through two worker processes in one consumer group.
5. Worker peak RSS (VmHWM) and cold start (process spawn to first forecast).
6. On Apache Kafka, the repartition stage (``pm25 route``): the readings keyed by station routed
   to the readings topic keyed by network (readings/s and the router's CPU per reading, from a
   backlog), and the latency run again with the readings keyed by station through the router.

Latency on the embedded broker is bounded by its fetch behaviour (a waiting fetch is answered when
Faust's 1.5 s fetch wait expires); it is reported as measured and is not Apache Kafka's latency.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pm25.embedded import EmbeddedBroker, free_port
from pm25.kafka import ensure_topics, make_consumer, make_producer, partition_counts, publish_stations
from pm25.schema import Reading, forecast_from_json, reading_to_json
from pm25.settings import Settings
from pm25.stations import Station
from pm25_ops.processes import RouterProcess, WorkerProcess
from producer.replay import network_keys, station_key

__all__ = ["BenchConfig", "run_bench"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    stations: int = 1000
    hours: int = 20
    latency_rate: float = 1000.0
    latency_seconds: float = 20.0
    inference_calls: int = 2000
    scale_out_workers: int = 2
    repeats: int = 5  # production throughput runs; the median is reported (the machine is noisy)
    keras_calls: int = 60
    apache_kafka: bool = True  # also run the production, naive and latency figures on Apache Kafka
    #: the stations form this many networks (station k in network k % networks, so a network's
    #: readings are spread over each hour's sends); 0: no station metadata, every station alone
    networks: int = 50


def _say(msg: str) -> None:
    log.info("%s", msg)


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def synthetic_stations(stations: int, networks: int) -> list[Station]:
    """Metadata of the synthetic stations: ``networks`` networks on a grid 2 degrees apart, each
    network's stations on a grid 0.05 degrees (about 5 km) apart around its centre."""
    if networks <= 0:
        return []
    out = []
    for k in range(stations):
        n, j = k % networks, k // networks
        lat = 30.0 + 2.0 * (n // 10) + 0.05 * (j // 5)
        lon = 100.0 + 2.0 * (n % 10) + 0.05 * (j % 5)
        out.append(Station(f"S{k:05d}", f"synthetic {k}", round(lat, 4), round(lon, 4), f"N{n:02d}"))
    return out


def synthetic_readings(stations: int, hours: int, offset_hours: int = 0) -> list[Reading]:
    """``stations`` stations x ``hours`` hours from the 12 real multi-site series: station k
    replays real station k % 12 from a different starting day, stamped with the common hour (a
    network's stations report the same hours); all stations report each hour."""
    from producer.replay import load_source

    per_source = -(-stations // 12)
    span = per_source * 24 + hours + offset_hours
    by_source: dict[str, list[Reading]] = {}
    for r in load_source("multisite", [], hours=span):
        by_source.setdefault(r.station_id, []).append(r)
    sources = sorted(by_source)
    out: list[Reading] = []
    for t in range(offset_hours, offset_hours + hours):
        hour = by_source[sources[0]][t].hour
        for k in range(stations):
            series = by_source[sources[k % 12]]
            r = series[(k // 12) * 24 + t]
            out.append(
                Reading(
                    f"S{k:05d}",
                    hour,
                    r.pm25,
                    r.temperature_c,
                    r.dew_point_c,
                    r.pressure_hpa,
                    r.wind_speed_ms,
                    r.wind_direction,
                    r.precipitation_mm,
                )
            )
    return out


def bench_inference(cfg: BenchConfig, settings: Settings) -> dict[str, Any]:
    from model_store import default_store, load_production
    from pm25.features import FEATURES, make_features, scale
    from stream_processor.inference import OnnxForecaster

    bundle = load_production(settings.model_store or default_store())
    model = OnnxForecaster(bundle)
    readings = synthetic_readings(600, model.window_hours)
    from pm25.features import RAW_FIELDS, encode_reading

    raw = np.zeros((600, model.window_hours, len(RAW_FIELDS)), dtype=np.float32)

    for i, r in enumerate(readings):
        raw[i % 600, i // 600] = encode_reading(r)
    ends = np.array([r.hour for r in readings[-600:]], dtype=np.int64)
    sel = [FEATURES.index(f) for f in bundle.spec["features"]]
    mean = np.asarray(bundle.spec["scaler"]["mean"], dtype=np.float32)
    std = np.asarray(bundle.spec["scaler"]["std"], dtype=np.float32)
    x = scale(make_features(raw, ends, model.max_gap_hours).features, sel, mean, std)

    def rate(fn: Any, rows: int, calls: int) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return rows * calls / (time.perf_counter() - t0)

    _say("inference: onnxruntime batch 1 and 512")
    x1, x512 = x[:1], x[:512]
    onnx1 = rate(lambda: model.run_graph(x1), 1, cfg.inference_calls)
    onnx_b = rate(lambda: model.run_graph(x512), 512, max(cfg.inference_calls // 20, 20))
    full_b = rate(lambda: model.predict(raw[:512], ends[:512]), 512, 50)
    out: dict[str, Any] = {
        "model_version": bundle.version,
        "onnx_rows_per_s_batch1": round(onnx1, 1),
        "onnx_rows_per_s_batched": round(onnx_b, 1),
        "batch_size": 512,
        "onnx_us_per_call_batch1": round(1e6 / onnx1, 1),
        "features_plus_onnx_rows_per_s_batched": round(full_b, 1),
    }
    keras_path = bundle.path / "model.keras"
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
    except ImportError:
        out["keras_rows_per_s_batch1"] = None
        out["keras_note"] = "TensorFlow is not installed (training extra)"
        return out
    if not keras_path.is_file():
        out["keras_rows_per_s_batch1"] = None
        out["keras_note"] = "bundle has no model.keras"
        return out
    _say("inference: Keras predict batch 1")
    from training.models import masked_mse

    kmodel = keras.models.load_model(
        keras_path, compile=False, safe_mode=True, custom_objects={"masked_mse": masked_mse}
    )
    keras1 = rate(lambda: kmodel.predict(x1, verbose=0), 1, cfg.keras_calls)
    diff = float(np.max(np.abs(np.asarray(kmodel.predict(x[:64], verbose=0)) - model.run_graph(x[:64])[0])))
    out.update(
        {
            "keras_rows_per_s_batch1": round(keras1, 1),
            "keras_ms_per_call_batch1": round(1e3 / keras1, 2),
            "onnx_vs_keras_batch1": round(onnx1 / keras1, 1),
            "onnx_keras_max_abs_diff": diff,
        }
    )
    return out


def _await_published(
    settings: Settings,
    topic: str,
    expected: int,
    timeout: float,
    quiet_s: float = 0.0,
    start: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Wait until ``topic`` holds at least ``expected`` messages and, with ``quiet_s``, until none
    was added for that long; returns each partition's end (its next offset: the sum is the count).
    ``start``: the ends a previous call returned (nothing before them is read again).

    Reading the forecasts as the worker writes them with a kafka-python consumer (it decodes each
    record in Python) took most of a core of this 2-core machine from the worker it measures (6.6 s
    of CPU in a 7.6 s timed phase, /proc, 2026-12-04). The records are counted by an aiokafka
    consumer instead (it decodes record batches in compiled code; about 0.3 s of CPU per timed phase)
    from where the previous count ended; the same on every broker (end offsets would be cheaper on
    Apache Kafka, but the embedded broker answers them wrongly). The span is taken from the
    forecasts' broker timestamps afterwards, so it does not depend on when they are read."""
    ends = asyncio.run(_count_published(settings, topic, expected, timeout, quiet_s, dict(start or {})))
    if sum(ends.values()) < expected:
        _say(f"  only {sum(ends.values())}/{expected} forecasts published within {timeout:.0f} s")
    return ends


async def _count_published(
    settings: Settings, topic: str, expected: int, timeout: float, quiet_s: float, ends: dict[int, int]
) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    partitions = partition_counts(settings, topic)[topic] or 0
    consumer = AIOKafkaConsumer(client_id="pm25-bench-count", **settings.aiokafka_reader())
    await consumer.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_report = 0.0
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        for tp in parts:
            if ends.get(tp.partition):
                consumer.seek(tp, ends[tp.partition])
        count, changed = -1, loop.time()
        while loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=20000)
            ends.update({tp.partition: records[-1].offset + 1 for tp, records in batches.items() if records})
            now = sum(ends.values())
            if now != count:
                count, changed = now, loop.time()
            if count >= expected and loop.time() - changed >= quiet_s:
                break
            if loop.time() - last_report > 5:
                _say(f"  {count}/{expected} forecasts published")
                last_report = loop.time()
    finally:
        await consumer.stop()
    return ends


def _consume_until(settings: Settings, topic: str, expected: int, timeout: float, distinct: bool = False) -> list[Any]:
    """Messages of ``topic`` from the beginning until ``expected`` of them arrived, or ``expected``
    distinct (station, issued_at) forecasts with ``distinct`` (several workers in one group may
    republish some after a rebalance)."""
    consumer = make_consumer(settings, topic, group_id=None, consumer_timeout_ms=500, max_poll_records=5000)
    out: list[Any] = []
    keys: set[tuple[str, str]] = set()
    deadline = time.monotonic() + timeout
    last_report = 0.0

    def count() -> int:
        return len(keys) if distinct else len(out)

    try:
        while count() < expected and time.monotonic() < deadline:
            for msg in consumer:
                out.append(msg)
                if distinct:
                    keys.add(_key(msg.value))
                if count() >= expected:
                    break
            if time.monotonic() - last_report > 5:
                _say(f"  {count()}/{expected} {'distinct ' if distinct else ''}forecasts")
                last_report = time.monotonic()
    finally:
        consumer.close()
    return out


@dataclass(frozen=True)
class Workload:
    """Warm-up hours (fill every station's window; not timed), then the timed hours."""

    warm: list[Reading]
    timed: list[Reading]
    warm_expected: int  # forecasts the warm-up hours give (offline backtest)
    expected: int  # forecasts of both (offline backtest)
    #: the final forecast of each station and hour in the offline backtest (sha256 of its bytes)
    final_sha256: dict[tuple[str, str], bytes] = field(default_factory=dict)

    @property
    def timed_keys(self) -> set[tuple[str, str]]:
        return {(r.station_id, r.timestamp) for r in self.timed}


#: Record batches of the load generator (per input partition; below the 1 MB request limit).
OFFER_BATCH_BYTES = 256 * 1024


def _offer(settings: Settings, readings: list[Reading], key: Callable[[Reading], bytes] = station_key) -> float:
    """Produce ``readings`` as fast as the producer goes; returns the wall time of the first send.

    The load generator shares the machine's two cores with the worker and the broker, so it is kept
    as cheap as possible: the messages are serialised and partitioned (the default murmur2
    partitioner of the Kafka clients) before the clock starts, then appended to aiokafka's record
    batch builders (compiled code; up to OFFER_BATCH_BYTES per batch and partition) and sent. A
    kafka-python producer spent about 1.2 s of a core on 20 000 readings (measured with /proc): the
    first two seconds of a six-second run, time the worker could not use; this one spends about
    0.3 s. ``key``: each message's key (the station id by default)."""
    messages = [(key(r), reading_to_json(r)) for r in readings]
    return asyncio.run(_produce(settings, messages))


async def _produce(settings: Settings, messages: list[tuple[bytes, bytes]]) -> float:
    from aiokafka import AIOKafkaProducer

    from stream_processor.processor import key_partition
    from stream_processor.sending import BatchSender

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        max_batch_size=OFFER_BATCH_BYTES,
        client_id="pm25-bench-load",
        **settings.aiokafka_security(),
    )
    await producer.start()
    try:
        topic = settings.readings_topic
        partitions = sorted(await producer.partitions_for(topic))
        routed = [(partitions[key_partition(key, len(partitions))], key, value) for key, value in messages]
        started = time.time()
        sender = BatchSender(producer)
        for partition, key, value in routed:
            sender.add(topic, partition, key, value)
        await asyncio.gather(*await sender.submit())
    finally:
        await producer.stop()
    return started


def _timed_phase(
    settings: Settings,
    load: Workload,
    distinct: bool,
    key: Callable[[Reading], bytes] = station_key,
    pids: Sequence[int] = (),
) -> dict[str, Any]:
    """With the worker(s) running: wait until the warm-up backlog is forecast, then offer the timed
    readings as fast as possible. Readings/s = timed readings / (first timed reading in -> last
    timed forecast out; each forecast counted at its first publication, Kafka timestamps, one
    clock). The worker is idle when the timed readings start, so nothing but them is measured.
    The final forecasts (the last message of each station and hour) are compared with the
    backtest's by sha256."""
    topic = settings.forecasts_topic
    # several workers may republish forecasts after a rebalance: then wait until none are added
    quiet = 2.0 if distinct else 0.0
    warm = _await_published(settings, topic, load.warm_expected, timeout=600, quiet_s=quiet)
    # CPU of the worker process(es) and of this one (load generator and waits) while the timed
    # readings go through: the worker's per reading says how much of the figure is the code and
    # how much the machine's speed; this process's, that the bench leaves the cores to the worker
    cpu_before = [_cpu_s(p) for p in pids], _cpu_s(os.getpid())
    first_in = _offer(settings, load.timed, key)
    _await_published(settings, topic, load.expected, timeout=1200, quiet_s=quiet, start=warm)
    worker_cpu = sum(_cpu_s(p) - b for p, b in zip(pids, cpu_before[0], strict=True))
    bench_cpu = _cpu_s(os.getpid()) - cpu_before[1]
    msgs = _consume_until(settings, topic, load.expected, timeout=600, distinct=distinct)
    first_out: dict[tuple[str, str], float] = {}
    for m in msgs:
        first_out.setdefault(_key(m.value), m.timestamp / 1000.0)
    keys = load.timed_keys
    timed = [t for k, t in first_out.items() if k in keys]
    span = max(timed) - first_in if timed else float("nan")
    final = {_key(m.value): hashlib.sha256(m.value).digest() for m in msgs}  # the last one wins
    exact = {
        "final_forecasts_compared": len(load.final_sha256),
        "final_forecasts_differing_from_backtest": sum(final.get(k) != v for k, v in load.final_sha256.items()),
    }
    return {
        **exact,
        "timed_readings": len(load.timed),
        "forecasts_expected": load.expected,
        "distinct_forecasts_received" if distinct else "forecasts_received": len(first_out) if distinct else len(msgs),
        "timed_forecasts": len(timed),
        "seconds_first_reading_in_to_last_forecast_out": round(span, 2),
        "readings_per_s": round(len(load.timed) / span, 1) if span > 0 else None,
        "worker_cpu_s_timed_phase": round(worker_cpu, 2) if pids else None,
        "worker_cpu_us_per_timed_reading": round(worker_cpu / len(load.timed) * 1e6, 1) if pids else None,
        "bench_cpu_s_timed_phase": round(bench_cpu, 2),
    }


def _scale_out_run(
    env: dict[str, str],
    settings: Settings,
    load: Workload,
    workdir: Path,
    workers: int,
    key: Callable[[Reading], bytes] = station_key,
) -> dict[str, Any]:
    """The throughput run with ``workers`` worker processes in one consumer group (the input topic's
    partitions are shared between them): how the deployment scales out on this machine. Several
    workers may republish some forecasts after a rebalance: distinct forecasts are counted. With
    networks, the readings are keyed by network (``key``) so that the workers share whole networks."""
    _offer(settings, load.warm, key)
    procs = [
        WorkerProcess({**env, "PM25_WEB_PORT": str(free_port())}, workdir / f"scale-{i}.log").start()
        for i in range(workers)
    ]
    try:
        pids = [w.proc.pid for w in procs if w.proc is not None]
        result = _timed_phase(settings, load, distinct=True, key=key, pids=pids)
        rss = [_peak_rss_mb(pid) for pid in pids]
    finally:
        for w in procs:
            w.stop()
    return {"workers": workers, **result, "peak_rss_mb_per_worker": rss}


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None and not math.isnan(r[key])]
    return round(statistics.median(values), 1) if values else None


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far; NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _spawn(env: dict[str, str], log: Path, naive: bool) -> tuple[subprocess.Popen[bytes], Any]:
    if naive:
        fh = open(log, "wb")  # noqa: SIM115 - closed by _stop
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.naive_worker"],
            env={**os.environ, **env},
            cwd=log.parent,  # Faust's data folder ({app id}-data) goes beside the log, as for the worker
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        return proc, fh
    worker = WorkerProcess(env, log).start()
    assert worker.proc is not None
    return worker.proc, worker


def _stop(proc: subprocess.Popen[bytes], handle: Any) -> None:
    if isinstance(handle, WorkerProcess):
        handle.stop()
        return
    proc.terminate()
    proc.wait(timeout=30)
    handle.close()


def _throughput_run(env: dict[str, str], settings: Settings, load: Workload, log: Path, naive: bool) -> dict[str, Any]:
    """One worker process on a fresh readings topic: the warm-up hours preloaded, then the timed
    hours offered as fast as possible once it has caught up (see :func:`_timed_phase`)."""
    _offer(settings, load.warm)
    proc, handle = _spawn(env, log, naive)
    try:
        result = _timed_phase(settings, load, distinct=False, pids=[proc.pid])
        rss = _peak_rss_mb(proc.pid)
    finally:
        _stop(proc, handle)
    return {**result, "peak_rss_mb": rss}


def _key(value: bytes) -> tuple[str, str]:
    f = forecast_from_json(value)
    return f.station_id, f.issued_at


def _restart(env: dict[str, str], settings: Settings, next_hour: list[Reading], log: Path) -> dict[str, Any]:
    """Restart: a new worker process recovers every station's state from the changelog, then
    forecasts one new hour; seconds from process spawn to /ready and to that hour's first forecast."""
    producer = make_producer(settings)
    for r in next_hour:
        producer.send(settings.readings_topic, key=r.station_id.encode(), value=reading_to_json(r))
    producer.flush()
    producer.close()
    target = (next_hour[0].station_id, next_hour[0].timestamp)
    consumer = make_consumer(settings, settings.forecasts_topic, group_id=None, consumer_timeout_ms=200)
    spawn = time.time()
    worker = WorkerProcess(env, log).start()
    first = None
    try:
        ready_s = round(worker.wait_ready(timeout=300), 2)
        deadline = time.monotonic() + 120
        while first is None and time.monotonic() < deadline:
            for msg in consumer:  # earlier forecasts are skipped
                if _key(msg.value) == target:
                    first = msg.timestamp / 1000.0
                    break
    finally:
        worker.stop()
        consumer.close()
    return {"restart_to_ready_s": ready_s, "restart_to_forecast_s": round(first - spawn, 2) if first else None}


def _cold_start(env: dict[str, str], log: Path) -> dict[str, Any]:
    """A new deployment: a fresh worker (no state) on a topic holding 46 hours of 12 stations;
    seconds from process spawn to /ready and to its first forecast."""
    settings = Settings.from_env({**os.environ, **env})
    ensure_topics(settings)
    producer = make_producer(settings)
    for r in synthetic_readings(12, 46):
        producer.send(settings.readings_topic, key=r.station_id.encode(), value=reading_to_json(r))
    producer.flush()
    producer.close()
    consumer = make_consumer(settings, settings.forecasts_topic, group_id=None, consumer_timeout_ms=100)
    spawn = time.time()
    worker = WorkerProcess(env, log).start()
    first = None
    try:
        ready_s = round(worker.wait_ready(), 2)
        deadline = time.monotonic() + 60
        while first is None and time.monotonic() < deadline:
            for msg in consumer:
                first = msg.timestamp / 1000.0
                break
    finally:
        worker.stop()
        consumer.close()
    return {"spawn_to_ready_s": ready_s, "cold_start_s": round(first - spawn, 2) if first else None}


def run_bench(cfg: BenchConfig, out_path: Path) -> dict[str, Any]:
    """Every figure of the module docstring, on the embedded broker and on Apache Kafka."""
    from stream_processor.backtest import make_engine

    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "config": cfg.__dict__,
    }
    base = Settings.from_env()
    report["inference"] = bench_inference(cfg, base)
    _say(json.dumps(report["inference"]))
    stations = synthetic_stations(cfg.stations, cfg.networks)
    load, next_hour = _workload(cfg, make_engine(base, stations))
    workdir = Path(tempfile.mkdtemp(prefix="pm25-bench-"))
    broker = EmbeddedBroker().start()
    try:
        target = _Target(broker.bootstrap_servers, True, "embedded", stations=stations)
        report["e2e"] = _suite(cfg, target, load, next_hour, workdir)
        report["e2e"]["broker"] = "embedded Tansu 0.6 (latency bounded by its fetch wait; not Apache Kafka figures)"
    finally:
        broker.stop()
    if cfg.apache_kafka:
        from pm25.apache_kafka import ApacheKafka

        kafka = ApacheKafka(partitions=Settings().partitions).start()
        try:
            target = _Target(kafka.bootstrap_servers, False, "apache", kafka=kafka, stations=stations)
            report["apache_kafka"] = _suite(cfg, target, load, next_hour, workdir, full=False)
            report["apache_kafka"]["broker_version"] = f"Apache Kafka {kafka.version} (KRaft, one node, 512 MB heap)"
        finally:
            kafka.close()
    report["worker_peak_rss_mb"] = report["e2e"]["production"]["peak_rss_mb"]
    report["cold_start_s"] = report["e2e"]["cold_start"]["cold_start_s"]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out_path.with_suffix(".png"))
    return report


@dataclass
class _Target:
    """The broker a suite runs on."""

    bootstrap_servers: str
    embedded: bool
    tag: str
    kafka: Any = None  # the ApacheKafka process (for its RSS)
    stations: list[Station] = field(default_factory=list)  # the metadata (networks) every app gets

    def env(self, tag: str, readings_topic: str) -> dict[str, str]:
        tag = f"{self.tag}-{tag}"
        return {
            "PM25_STATIONS_TOPIC": f"stations-{tag}",
            "PM25_STATION_READINGS_TOPIC": f"{self.tag}-by-station-{readings_topic}",
            "PM25_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "PM25_EMBEDDED_BROKER": "1" if self.embedded else "0",
            "PM25_APP_ID": f"bench-{tag}",
            "PM25_READINGS_TOPIC": f"{self.tag}-{readings_topic}",
            "PM25_FORECASTS_TOPIC": f"forecasts-{tag}",
            "PM25_DLQ_TOPIC": f"dlq-{tag}",
            "PM25_SCORES_TOPIC": f"scores-{tag}",
            "PM25_WEB_PORT": str(free_port()),
        }

    def app(self, tag: str, networks: bool = True) -> tuple[dict[str, str], Settings]:
        """A fresh application with its own topics (created) and, with ``networks``, the station
        metadata published, for one throughput run."""
        env = self.env(tag, f"readings-{tag}")
        settings = Settings.from_env({**os.environ, **env})
        ensure_topics(settings)
        if networks and self.stations:
            publish_stations(settings, self.stations)
        return env, settings


def _workload(cfg: BenchConfig, engine: Any) -> tuple[Workload, list[Reading]]:
    """Warm-up hours (preloaded, not timed) and the timed hours, with the expected counts."""
    from stream_processor.engine import run_offline

    warm_hours = 45
    readings = synthetic_readings(cfg.stations, warm_hours + cfg.hours + 1)
    next_hour = readings[-cfg.stations :]
    readings = readings[: -cfg.stations]
    warm, timed = readings[: cfg.stations * warm_hours], readings[cfg.stations * warm_hours :]
    _say(
        f"end to end: {cfg.stations} stations, {warm_hours} warm-up hours then {cfg.hours} timed hours "
        f"({len(timed)} timed readings); offline backtest for the expected counts"
    )
    final: dict[tuple[str, str], bytes] = {}
    n = 0
    for f in run_offline(engine, readings, batch_size=512):
        final[(f.station_id, f.issued_at)] = hashlib.sha256(f.value).digest()
        n += 1
    load = Workload(
        warm=warm,
        timed=timed,
        warm_expected=sum(1 for _ in run_offline(engine, warm, batch_size=512)),
        expected=n,
        final_sha256=final,
    )
    return load, next_hour


def _suite(
    cfg: BenchConfig, target: _Target, load: Workload, next_hour: list[Reading], workdir: Path, full: bool = True
) -> dict[str, Any]:
    """Production worker (``cfg.repeats`` runs, median), naive worker, latency at a fixed rate; with
    ``full`` also scale-out, restart and cold start."""
    out: dict[str, Any] = {}
    prod_apps = [target.app(f"prod{i}") for i in range(cfg.repeats)]
    prod_runs = []
    for i, (env_i, settings_i) in enumerate(prod_apps):
        _say(f"[{target.tag}] production worker, run {i + 1} of {cfg.repeats}: timed readings as fast as possible")
        prod_runs.append(_throughput_run(env_i, settings_i, load, workdir / f"{target.tag}-prod-{i}.log", naive=False))
        _say(json.dumps(prod_runs[-1]))
    rates = [r["readings_per_s"] for r in prod_runs if r["readings_per_s"]]
    prod = {
        "readings_per_s": round(statistics.median(rates), 1) if rates else None,
        "readings_per_s_min": min(rates, default=None),
        "readings_per_s_max": max(rates, default=None),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in prod_runs if r["peak_rss_mb"]), default=None),
        # the worker's CPU per timed reading (all its threads): what the code costs on this machine
        "worker_cpu_us_per_reading": _median_of(prod_runs, "worker_cpu_us_per_timed_reading"),
        "runs": prod_runs,
    }
    env_b, settings_b = target.app("naive")
    _say(f"[{target.tag}] naive worker, same readings")
    naive = _throughput_run(env_b, settings_b, load, workdir / f"{target.tag}-naive.log", naive=True)
    _say(json.dumps(naive))
    out.update(
        readings_per_s=prod["readings_per_s"],
        readings_per_s_naive=naive["readings_per_s"],
        speedup_vs_naive=round(prod["readings_per_s"] / naive["readings_per_s"], 2)
        if prod["readings_per_s"] and naive["readings_per_s"]
        else None,
        production=prod,
        naive=naive,
        worker_peak_rss_mb=prod["peak_rss_mb"],
    )
    if full:
        _say(f"[{target.tag}] scale-out: {cfg.scale_out_workers} worker processes in one group, same readings")
        env_c, settings_c = target.app("scale")
        by_network = network_keys({s.station_id: s.network for s in target.stations})  # whole networks per worker
        out["scale_out"] = _scale_out_run(env_c, settings_c, load, workdir, cfg.scale_out_workers, by_network)
        _say(json.dumps(out["scale_out"]))
        _say(f"[{target.tag}] restart of the production worker (state recovered from the changelog), one new hour")
        env_a, settings_a = prod_apps[0]
        out["restart"] = _restart(env_a, settings_a, next_hour, workdir / f"{target.tag}-restart.log")
        _say(json.dumps(out["restart"]))
        _say(f"[{target.tag}] cold start: a fresh worker, 12 stations x 46 hours waiting")
        out["cold_start"] = _cold_start(target.env("cold", "readings-cold"), workdir / f"{target.tag}-cold.log")
        _say(json.dumps(out["cold_start"]))
    _say(f"[{target.tag}] latency: {cfg.latency_rate:.0f} readings/s for {cfg.latency_seconds:.0f} s")
    networks = synthetic_stations(int(cfg.latency_rate), cfg.networks)
    latency = _latency_run(
        cfg, target.env("latency", "readings-latency"), workdir / f"{target.tag}-latency.log", networks
    )
    _say(json.dumps(latency))
    out["latency_ms"] = latency["latency_ms"]
    out["latency"] = latency
    if networks:  # what waiting for a network's hour costs: the same run with every station alone
        _say(f"[{target.tag}] latency, every station alone (no metadata): the cost of the networks")
        alone = _latency_run(cfg, target.env("latency-alone", "readings-latency-alone"), workdir / "alone.log", [])
        _say(json.dumps(alone))
        out["latency_alone_ms"] = alone["latency_ms"]
        out["latency_alone"] = alone
    if target.kafka is not None and networks:
        _router_figures(cfg, target, load, workdir, networks, out)
    if target.kafka is not None:
        out["broker_rss_mb"] = round(target.kafka.rss_bytes() / 2**20, 1)
    return out


def _router_figures(
    cfg: BenchConfig, target: _Target, load: Workload, workdir: Path, networks: list[Station], out: dict[str, Any]
) -> None:
    """The repartition stage: its throughput from a backlog, and the latency through it."""
    _say(f"[{target.tag}] router: the readings keyed by station, a backlog, routed keyed by network")
    out["router"] = _route_run(target, load, workdir / f"{target.tag}-router.log")
    _say(json.dumps(out["router"]))
    _say(f"[{target.tag}] latency, readings keyed by station through the router")
    routed = _latency_run(
        cfg, target.env("latency-routed", "readings-latency-routed"), workdir / "routed.log", networks, routed=True
    )
    _say(json.dumps(routed))
    out["latency_routed_ms"] = routed["latency_ms"]
    out["latency_routed"] = routed


def _route_run(target: _Target, load: Workload, log: Path) -> dict[str, Any]:
    """The router alone: the bench's readings (warm-up and timed hours) keyed by station, written
    to the station-keyed topic before it starts, forwarded keyed by network. Readings/s from the
    first routed reading to the last (the readings topic's end offsets, looked at every 0.1 s) and
    the router's CPU per reading."""
    env, settings = target.app("route")
    ensure_topics(settings, routed=True)
    readings = load.warm + load.timed
    _offer(replace(settings, readings_topic=settings.station_readings_topic), readings)
    consumer = make_consumer(settings, group_id=None)
    router = RouterProcess(env, log).start()
    assert router.proc is not None
    try:
        from kafka.structs import TopicPartition

        tps = [TopicPartition(settings.readings_topic, p) for p in range(settings.partitions)]
        first = done = None
        deadline = time.monotonic() + 300
        while done is None and time.monotonic() < deadline:
            routed = sum(consumer.end_offsets(tps).values())
            now = time.monotonic()
            if routed and first is None:
                first = now
            if routed >= len(readings):
                done = now
            time.sleep(0.1)
        cpu = _cpu_s(router.proc.pid)
        rss = _peak_rss_mb(router.proc.pid)
    finally:
        router.stop()
        consumer.close()
    rate = len(readings) / (done - first) if first is not None and done is not None and done > first else None
    return {
        "readings": len(readings),
        "readings_per_s": round(rate, 1) if rate else None,
        "router_cpu_us_per_reading": round(cpu * 1e6 / len(readings), 1),
        "router_peak_rss_mb": rss,
    }


def _latency_run(
    cfg: BenchConfig, env: dict[str, str], log: Path, stations: list[Station], routed: bool = False
) -> dict[str, Any]:
    """Readings offered at a fixed rate, one hour of every station per second; with ``stations``
    (their networks) a forecast waits for the last member of its network to report the hour; with
    ``routed`` the readings go to the station-keyed topic and through the router (``pm25 route``)."""
    from stream_processor.backtest import make_engine
    from stream_processor.engine import run_offline

    settings = Settings.from_env({**os.environ, **env})
    ensure_topics(settings, routed=routed)
    if stations:
        publish_stations(settings, stations)
    topic = settings.station_readings_topic if routed else settings.readings_topic
    router = RouterProcess(env, log.with_name(log.stem + "-router.log")).start() if routed else None
    worker = WorkerProcess(env, log).start()
    try:
        worker.wait_ready()
        count = max(1, int(cfg.latency_rate))  # one reading per station per second of offered load
        seconds = int(cfg.latency_seconds)
        readings = synthetic_readings(count, seconds + 45)
        # fill every station's window first (not timed), then one hour per second at the fixed rate
        warm, timed = readings[: count * 45], readings[count * 45 :]
        expected = sum(1 for _ in run_offline(make_engine(settings, stations), readings, batch_size=512))
        expected_warm = sum(1 for _ in run_offline(make_engine(settings, stations), warm, batch_size=512))
        producer = make_producer(settings)
        for r in warm:
            producer.send(topic, key=r.station_id.encode(), value=reading_to_json(r))
        producer.flush()
        # wait until the worker has caught up with the warm-up backlog, so the timed readings
        # meet an idle worker and the latency is not the backlog's
        _await_published(settings, settings.forecasts_topic, expected_warm, timeout=300)
        sent_at: dict[tuple[str, int], float] = {}
        # the load generator must not pause: its cyclic garbage collector, scanning the workload's
        # objects, held this process (and the producer's sending thread) up to 150 ms at a time,
        # which counted as the worker's latency
        gc.collect()
        gc.freeze()
        gc.disable()
        t0 = time.monotonic()
        for i, r in enumerate(timed):
            due = t0 + i / cfg.latency_rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(topic, key=r.station_id.encode(), value=reading_to_json(r))
            sent_at[(r.station_id, r.hour)] = time.time()
        producer.flush()
        offered = len(timed) / (time.monotonic() - t0)
        gc.enable()
        gc.unfreeze()
        producer.close()
        msgs = _consume_until(settings, settings.forecasts_topic, expected, timeout=120)
    finally:
        worker.stop()
        if router is not None:
            router.stop()
    return _latency_summary(msgs, sent_at, stations, offered, len(timed))


def _latency_summary(
    msgs: list[Any], sent_at: dict[tuple[str, int], float], stations: list[Station], offered: float, timed: int
) -> dict[str, Any]:
    """The latencies of a run: each forecast's broker timestamp against its reading's send time."""
    from pm25.schema import iso_to_hour

    lat = []
    waited: list[float] = []  # ms: the wait for the network's last reading of the hour ...
    after: list[float] = []  # ... and the rest of the latency
    waits = network_waits(sent_at, {s.station_id: s.network for s in stations})
    by_second: dict[int, list[float]] = {}  # second of the run the reading was sent in -> latencies
    t_first = min(sent_at.values(), default=0.0)
    for m in msgs:
        f = forecast_from_json(m.value)
        key = (f.station_id, iso_to_hour(f.issued_at))
        if key in sent_at:
            lat.append(m.timestamp / 1000.0 - sent_at[key])
            by_second.setdefault(int(sent_at[key] - t_first), []).append(lat[-1] * 1000)
            if key in waits:
                waited.append(waits[key] * 1000)
                after.append((lat[-1] - waits[key]) * 1000)
    out: dict[str, Any] = {
        "offered_readings_per_s": round(offered, 1),
        "timed_readings": timed,
        "forecasts_matched": len(lat),
        "latency_ms": percentiles([x * 1000 for x in lat]),
        # per second of the run: the median and the highest latency of the readings sent in it
        "timeline_ms": [[s, round(statistics.median(v), 1), round(max(v), 1)] for s, v in sorted(by_second.items())],
    }
    if waited:
        # the latency with networks in two parts: until the network's last reading of the hour was
        # sent (no forecast of the hour can come earlier), and from then to the forecast
        out["network_wait_ms"] = percentiles(waited)
        out["after_network_ms"] = percentiles(after)
    return out


def network_waits(
    sent_at: Mapping[tuple[str, int], float], network_of: Mapping[str, str]
) -> dict[tuple[str, int], float]:
    """For each (station, hour) sent at ``sent_at`` whose station has a network: how long after it
    (s) the network's last reading of that hour was sent. A network's hour closes once every member
    has reported it, so none of its forecasts can come earlier.

    >>> network_waits({("a", 1): 10.0, ("b", 1): 10.5, ("c", 1): 10.25, ("a", 2): 11.0}, {"a": "n", "b": "n"})
    {('a', 1): 0.5, ('b', 1): 0.0, ('a', 2): 0.0}
    """
    last: dict[tuple[str, int], float] = {}
    for (sid, hour), t in sent_at.items():
        net = network_of.get(sid)
        if net is not None and t > last.get((net, hour), -math.inf):
            last[(net, hour)] = t
    return {(sid, hour): last[(network_of[sid], hour)] - t for (sid, hour), t in sent_at.items() if sid in network_of}


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 (nearest rank from below) and mean, rounded to 0.1; None when empty.

    >>> percentiles([float(x) for x in range(1, 101)])
    {'p50': 51.0, 'p95': 96.0, 'p99': 100.0, 'mean': 50.5}
    """
    ordered = sorted(values)

    def pct(p: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 1) if ordered else None

    return {
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "mean": round(statistics.fmean(ordered), 1) if ordered else None,
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    inf, e2e = report["inference"], report["e2e"]
    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    names = ["ONNX b=1", "ONNX b=512"] + (["Keras b=1"] if inf.get("keras_rows_per_s_batch1") else [])
    vals = [inf["onnx_rows_per_s_batch1"], inf["onnx_rows_per_s_batched"]] + (
        [inf["keras_rows_per_s_batch1"]] if inf.get("keras_rows_per_s_batch1") else []
    )
    ax[0].bar(names, vals, color=["tab:blue", "tab:blue", "tab:gray"][: len(vals)])
    ax[0].set_yscale("log")
    ax[0].set(title="Inference rows/s (log scale)")
    kafka = report.get("apache_kafka") or {}
    scale = e2e.get("scale_out", {})
    names = ["embedded\nproduction", "embedded\nnaive", f"embedded\n{scale.get('workers', 2)} workers"]
    values = [e2e["readings_per_s"] or 0, e2e["readings_per_s_naive"] or 0, scale.get("readings_per_s") or 0]
    colors = ["tab:green", "tab:gray", "tab:olive"]
    if kafka:
        names += ["Kafka\nproduction", "Kafka\nnaive"]
        values += [kafka["readings_per_s"] or 0, kafka["readings_per_s_naive"] or 0]
        colors += ["tab:blue", "tab:gray"]
    ax[1].bar(names, values, color=colors)
    ax[1].axhline(3000, color="k", ls="--", lw=0.8, label="target 3000/s")
    ax[1].set(title="End-to-end readings/s, one worker")
    ax[1].legend()
    ax[1].tick_params(axis="x", labelsize=7)
    groups = [("embedded", e2e.get("latency_ms")), ("Apache Kafka", kafka.get("latency_ms"))]
    groups.append(("Kafka, keyed by station\nthrough pm25 route", kafka.get("latency_routed_ms")))
    groups = [(name, lat) for name, lat in groups if lat]
    width = 0.8 / max(len(groups), 1)
    for k, (name, lat) in enumerate(groups):
        xs = np.arange(3) + (k - (len(groups) - 1) / 2) * width
        ax[2].bar(xs, [lat["p50"] or 0, lat["p95"] or 0, lat["p99"] or 0], width, label=name)
    ax[2].set_xticks(np.arange(3), ["p50", "p95", "p99"])
    ax[2].axhline(100, color="k", ls="--", lw=0.8)
    ax[2].set(title=f"Reading-to-forecast latency (ms) at {e2e['latency']['offered_readings_per_s']:.0f}/s")
    ax[2].legend(fontsize=7)
    for name, suite in (("embedded", e2e), ("Apache Kafka", kafka)):
        timeline = (suite.get("latency") or {}).get("timeline_ms") or []
        if timeline:
            t = [row[0] for row in timeline]
            (line,) = ax[3].plot(t, [row[1] for row in timeline], label=f"{name} median")
            ax[3].plot(t, [row[2] for row in timeline], ls=":", color=line.get_color(), label=f"{name} highest")
    ax[3].axhline(100, color="k", ls="--", lw=0.8)
    ax[3].set(title="Latency per second of the run (ms)", xlabel="second", yscale="log")
    ax[3].legend(fontsize=7)
    fig.suptitle(
        f"pm25 bench {report['date']} - {report['machine']['cores']} cores, {report['machine']['cpu_model']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
