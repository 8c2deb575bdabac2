"""Readings -> real broker -> Faust worker -> ONNX -> forecasts, compared with the backtest."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

from pm25.schema import forecast_from_json
from producer.replay import load_source
from stream_processor.backtest import make_engine
from stream_processor.engine import run_offline
from tests.integration.conftest import collect, send_readings

pytestmark = pytest.mark.broker

STATIONS = {"Dongsi", "Wanliu", "Huairou", "Gucheng"}


@pytest.mark.parametrize("broker", ["apache", "embedded"], indirect=True)
def test_worker_publishes_forecasts_equal_to_backtest(settings, start_worker, report_counts):
    readings = list(load_source("multisite", [], stations=STATIONS, hours=80))
    expected = {(f.station_id, f.issued_at): f.value for f in run_offline(make_engine(settings), readings)}
    assert len(expected) > 100

    worker = start_worker()
    send_readings(settings, readings)
    msgs = collect(settings, settings.forecasts_topic, lambda m: len(m) >= len(expected))

    got = {}
    for m in msgs:
        f = forecast_from_json(m.value)
        assert m.key == f.station_id.encode()  # keyed by station
        assert [h.h for h in f.horizons] == list(range(1, 25))
        got[(f.station_id, f.issued_at)] = m.value
    report_counts(f"readings sent {len(readings)}, forecasts expected {len(expected)}, received {len(msgs)}")
    assert {s for s, _ in got} == STATIONS
    assert got.keys() == expected.keys()
    assert got == expected  # the stream publishes byte for byte what the backtest computes
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.web_port}/metrics") as resp:
        text = resp.read().decode()
    assert f"pm25_readings_in_total {float(len(readings))}" in text
    assert 'pm25_hindcast_rmse{horizon="1",model="forecast"}' in text
    scores = collect(settings, settings.scores_topic, lambda m: len(m) > 50, timeout=30)
    body = orjson.loads(scores[-1].value)
    assert scores[-1].key.decode() == body["station_id"] in STATIONS
    assert [x["h"] for x in body["skill"]] == [1, 3, 6, 12, 24] and body["skill"][0]["n"] > 0
