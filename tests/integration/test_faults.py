"""Fault tests on a real broker (embedded Tansu unless PM25_TEST_BOOTSTRAP_SERVERS is set)."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import urllib.request
from collections import Counter

import pytest

from model_store import default_store, load_production, promote, write_bundle
from pm25.schema import forecast_from_json, reading_to_json
from pm25_ops.processes import metric_value
from producer.replay import load_source
from stream_processor.backtest import make_engine
from stream_processor.engine import run_offline
from tests.integration.badmessages import bad_messages
from tests.integration.conftest import collect, forecast_mismatch, send_raw, send_readings

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STATIONS = {"Dongsi", "Wanliu", "Huairou", "Gucheng", "Tiantan", "Shunyi"}


def network(settings) -> list:
    """Publish the six stations' metadata (one network) before the worker starts; returns it."""
    from pm25.kafka import ensure_topics, publish_stations
    from pm25.stations import read_stations_csv

    meta = [s for s in read_stations_csv().values() if s.station_id in STATIONS]
    ensure_topics(settings)
    publish_stations(settings, meta)
    return meta


def expected_forecasts(settings, readings, stations=()):
    """The final forecast of each station and hour that pm25 backtest gives (re-issues replace)."""
    engine = make_engine(settings, stations)
    return {(f.station_id, f.issued_at): f.value for f in run_offline(engine, readings)}


def by_key(msgs):
    """Latest forecast per (station, issued_at) in consumption order, and how often each came."""
    latest, seen = {}, Counter()
    for m in msgs:
        f = forecast_from_json(m.value)
        latest[(f.station_id, f.issued_at)] = m.value
        seen[(f.station_id, f.issued_at)] += 1
    return latest, seen


def _get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.status, resp.read().decode()


def test_bad_messages_go_to_dead_letters_and_valid_ones_are_forecast(settings, start_worker, report_counts):
    readings = list(load_source("multisite", [], stations=STATIONS, hours=72))
    expected = expected_forecasts(settings, readings, network(settings))  # the six stations: one network
    bad = bad_messages(10_000)
    rng = random.Random(3)
    # interleave: bad messages at random places, valid readings keep their order
    stream = [(r.station_id.encode(), reading_to_json(r)) for r in readings]
    for _, key, value in bad:
        stream.insert(rng.randrange(len(stream) + 1), (key, value))
    worker = start_worker()
    send_raw(settings, stream)

    dead = collect(settings, settings.dlq_topic, lambda m: len(m) >= len(bad), timeout=180)
    forecasts = collect(settings, settings.forecasts_topic, lambda m: len(m) >= len(expected), timeout=120)
    latest, _ = by_key(forecasts)
    reasons = Counter(dict(m.headers)["pm25.reason"].decode() for m in dead)
    report_counts(
        f"bad messages sent {len(bad)}, dead letters received {len(dead)}; valid readings {len(readings)}, "
        f"forecasts expected {len(expected)}, received {len(forecasts)}; reasons {dict(reasons)}"
    )
    assert reasons == Counter(reason for reason, _, _ in bad)  # every bad one, with its reason
    for m in dead[:200]:
        h = dict(m.headers)
        assert h["pm25.source.topic"].decode() == settings.readings_topic
        assert int(h["pm25.source.offset"]) >= 0 and int(h["pm25.source.partition"]) >= 0
    originals = {value for _, _, value in bad}
    assert all(m.value in originals for m in dead)  # original bytes, untouched
    assert not (why := forecast_mismatch(latest, expected, worker)), why
    assert _get(worker.web_port, "/health")[0] == 200


@pytest.mark.parametrize("broker", ["apache", "embedded"], indirect=True)
def test_kill_9_mid_replay_then_restart_loses_nothing(settings, start_worker, report_counts):
    readings = list(load_source("multisite", [], stations=STATIONS, hours=720))
    expected = expected_forecasts(settings, readings, network(settings))  # the six stations: one network
    worker = start_worker()
    # the replay is paced (about 800 readings/s) so the kill lands in the middle of it
    sender = threading.Thread(target=_paced_send, args=(settings, readings, 800.0))
    sender.start()
    killed_at = _first_forecasts(settings, 20, timeout=60)
    worker.stop(kill=True)  # SIGKILL mid-replay
    sender.join()
    assert killed_at < len(expected), "the worker finished before it was killed: not a mid-replay kill"
    restarted = start_worker()
    msgs = collect(
        settings,
        settings.forecasts_topic,
        lambda m: (
            {(forecast_from_json(x.value).station_id, forecast_from_json(x.value).issued_at) for x in m}
            >= expected.keys()
        ),
        timeout=180,
    )
    latest, seen = by_key(msgs)
    values: dict = {}
    for m in msgs:
        f = forecast_from_json(m.value)
        values.setdefault((f.station_id, f.issued_at), set()).add(m.value)
    duplicates = sum(n - 1 for n in seen.values())
    metrics = restarted.metrics()
    replayed = metric_value(metrics, "pm25_readings_replayed_total")
    report_counts(
        f"readings {len(readings)}, forecasts expected {len(expected)}, received {len(msgs)} "
        f"(killed after {killed_at}), duplicates {duplicates}, replayed readings recognised {replayed:.0f}, "
        f"consumer holes re-read {metric_value(metrics, 'pm25_input_seeks_total'):.0f}"
    )
    assert not (why := forecast_mismatch(latest, expected, restarted)), why  # (with the worker's diagnostics)
    # the restart really re-read input the killed worker had handled (else this proves nothing)
    assert replayed + duplicates > 0
    varied = sorted(k for k, v in values.items() if len(v) > 1)  # replayed duplicates are byte-identical
    assert not varied, f"{len(varied)} forecasts published with different bytes: {varied[:8]}\n{restarted.tail(80)}"


def test_model_promoted_mid_stream_swaps_and_tampered_one_is_refused(settings, start_worker, report_counts, tmp_path):
    store = tmp_path / "store"
    prod = load_production(default_store())
    shutil.copytree(prod.path, store / "bundles" / prod.version)
    promote(store, prod.version)
    worker = start_worker(PM25_MODEL_STORE=str(store))
    readings = list(load_source("multisite", [], stations=STATIONS, hours=180))
    third = len(readings) // 3
    parts = [readings[:third], readings[third : 2 * third], readings[2 * third :]]
    expected = expected_forecasts(settings, readings)

    def wait_for(n):
        return collect(settings, settings.forecasts_topic, lambda m: len(m) >= n, timeout=90)

    send_readings(settings, parts[0])
    keys0 = expected_forecasts(settings, parts[0]).keys()
    assert len(keys0) > 50
    wait_for(len(keys0))
    # promote a new bundle (same graph, new version)
    new_spec = dict(prod.spec) | {"version": prod.version + "-b"}
    alone = {prod.spec["alone_graph"]["file"]: prod.alone_onnx_bytes}  # the model_alone expert's graph
    write_bundle(store, new_spec, prod.onnx_bytes, alone)
    promote(store, new_spec["version"])
    _wait_metric(worker, 'pm25_model_swaps_total{result="swapped"} 1.0')
    send_readings(settings, parts[1])
    keys01 = expected_forecasts(settings, parts[0] + parts[1]).keys()
    wait_for(len(keys01))
    # promote a bundle, then tamper with it: refused, the previous one keeps serving
    bad_spec = dict(prod.spec) | {"version": prod.version + "-c"}
    bad_path = write_bundle(store, bad_spec, prod.onnx_bytes, alone)
    promote(store, bad_spec["version"])
    onnx = bad_path / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    _wait_metric(worker, 'pm25_model_swaps_total{result="refused"} 1.0')
    send_readings(settings, parts[2])
    msgs = wait_for(len(expected))
    version = {}
    for m in msgs:
        f = forecast_from_json(m.value)
        version[(f.station_id, f.issued_at)] = f.model_version
    report_counts(
        f"forecasts expected {len(expected)}, received {len(msgs)}; by version {dict(Counter(version.values()))}"
    )
    assert version.keys() == expected.keys()  # no reading left unforecast
    assert {version[k] for k in keys0} == {prod.version}
    assert {version[k] for k in version.keys() - keys0} == {new_spec["version"]}  # swapped; tampered never served
    status, health = _get(worker.web_port, "/health")
    assert json.loads(health)["model_version"] == new_spec["version"]


def _first_forecasts(settings, n: int, timeout: float) -> int:
    """Wait for the first ``n`` forecasts, reading one message at a time (so the caller acts right
    after them, not when the stream pauses); returns how many had arrived."""
    from pm25.kafka import make_consumer

    consumer = make_consumer(settings, settings.forecasts_topic, group_id=None, consumer_timeout_ms=300)
    seen = 0
    deadline = time.monotonic() + timeout
    try:
        while seen < n and time.monotonic() < deadline:
            for _ in consumer:
                seen += 1
                if seen >= n:
                    break
    finally:
        consumer.close()
    return seen


def _paced_send(settings, readings, rate: float, key=None) -> None:
    """Send at ``rate`` readings/s, keyed by station (or by ``key(reading)``)."""
    from pm25.kafka import make_producer

    producer = make_producer(settings)
    started = time.monotonic()
    for i, r in enumerate(readings):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        producer.send(settings.readings_topic, key=key(r) if key else r.station_id.encode(), value=reading_to_json(r))
    producer.flush()
    producer.close()


def _wait_metric(worker, line, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in worker.metrics():
            return
        time.sleep(0.3)
    raise AssertionError(f"metric {line!r} not seen; worker log:\n{worker.tail()}")


@pytest.mark.parametrize("networked", [False, True], ids=["alone", "network"])
def test_out_of_order_and_duplicates_give_the_clean_forecasts(settings, start_worker, report_counts, networked):
    """Alone, a station's readings may arrive within its 24 h lateness in any order (shuffled in
    blocks of 6 hours); in a network, within the network's bound (2 h: blocks of 2 hours)."""
    clean = list(load_source("multisite", [], stations=STATIONS, hours=96))
    stations = network(settings) if networked else ()
    expected = expected_forecasts(settings, clean, stations)  # pm25 backtest on the clean sequence
    rng = random.Random(11)
    messy = list(clean)
    block_hours = settings.network_lateness_hours if networked else 6
    for i in range(0, len(messy), block_hours * len(STATIONS)):
        block = messy[i : i + block_hours * len(STATIONS)]
        rng.shuffle(block)
        messy[i : i + block_hours * len(STATIONS)] = block
    # duplicate 20 % of the readings, each re-sent up to 12 hours after its first copy
    span = 12 * len(STATIONS)
    dups = rng.sample(range(len(clean)), len(clean) // 5)
    for i in sorted(dups, reverse=True):
        messy.insert(min(i + rng.randrange(1, span), len(messy)), messy[i])
    worker = start_worker()
    send_readings(settings, messy)

    def complete(m):
        latest, _ = by_key(m)
        return latest == expected

    msgs = collect(settings, settings.forecasts_topic, complete, timeout=120)
    latest, seen = by_key(msgs)
    report_counts(
        f"{'network' if networked else 'alone'}: clean readings {len(clean)}, messy sent {len(messy)} "
        f"({len(dups)} duplicates, shuffled in blocks of {block_hours} h), "
        f"forecasts expected {len(expected)}, messages received {len(msgs)}"
    )
    assert not (why := forecast_mismatch(latest, expected, worker)), why
