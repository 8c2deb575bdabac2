import math

import numpy as np
import orjson
import pytest

from pm25.aqi import us_aqi
from pm25.schema import (
    MAX_MESSAGE_BYTES,
    Forecast,
    HorizonForecast,
    InvalidReading,
    encode_forecasts,
    forecast_from_json,
    forecast_to_json,
    hour_to_iso,
    iso_to_hour,
    parse_reading,
    reading_to_json,
)

GOOD = {
    "station_id": "Dongsi",
    "timestamp": "2013-03-01T00:00:00Z",
    "pm25": 12.0,
    "temperature_c": -1.5,
    "dew_point_c": -18.0,
    "pressure_hpa": 1023.0,
    "wind_speed_ms": 4.4,
    "wind_direction": "NNW",
    "precipitation_mm": 0.0,
}


def enc(d: object) -> bytes:
    return orjson.dumps(d)


def test_valid_reading_round_trips():
    r = parse_reading(enc(GOOD))
    assert r.station_id == "Dongsi" and r.pm25 == 12.0 and r.wind_direction == "NNW"
    assert parse_reading(reading_to_json(r)) == r


def test_offsets_are_converted_to_utc():
    local = parse_reading(enc(GOOD | {"timestamp": "2013-03-01T08:00:00+08:00"}))
    assert local.hour == parse_reading(enc(GOOD)).hour
    assert local.timestamp == "2013-03-01T00:00:00Z"


def test_null_pm25_and_missing_weather_are_allowed():
    r = parse_reading(enc({"station_id": "a", "timestamp": "2020-01-01T00:00:00Z", "pm25": None}))
    assert r.pm25 is None and r.temperature_c is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "not_an_object"),
        (enc({"timestamp": "2013-03-01T00:00:00Z"}), "missing_field"),
        (enc(GOOD | {"station_id": ""}), "bad_station_id"),
        (enc(GOOD | {"station_id": 7}), "bad_station_id"),
        (enc(GOOD | {"timestamp": "2013-03-01T00:00:00"}), "naive_timestamp"),
        (enc(GOOD | {"timestamp": "yesterday"}), "bad_timestamp"),
        (enc(GOOD | {"timestamp": "2013-03-01T00:30:00Z"}), "not_on_hour"),
        (enc(GOOD | {"pm25": "12"}), "bad_type"),
        (enc(GOOD | {"pm25": True}), "bad_type"),
        (enc(GOOD | {"pm25": -1}), "out_of_range"),
        (enc(GOOD | {"pm25": 1e9}), "out_of_range"),
        (enc(GOOD | {"pressure_hpa": 10}), "out_of_range"),
        (b'{"station_id":"a","timestamp":"2013-03-01T00:00:00Z","pm25":NaN}', "bad_json"),
        (enc(GOOD | {"wind_direction": "UP"}), "bad_wind_direction"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
        (None, "empty"),
    ],
)
def test_invalid_messages_have_a_reason(raw, reason):
    with pytest.raises(InvalidReading) as exc:
        parse_reading(raw)
    assert exc.value.reason == reason


def test_future_timestamp_rejected_with_injected_clock():
    now = iso_to_hour("2013-03-01T00:00:00Z")
    with pytest.raises(InvalidReading) as exc:
        parse_reading(enc(GOOD | {"timestamp": "2013-03-01T05:00:00Z"}), now_hour=now)
    assert exc.value.reason == "future_timestamp"
    assert parse_reading(enc(GOOD), now_hour=now).hour == now


def test_infinite_value_rejected():
    from pm25.schema import reading_from_mapping

    with pytest.raises(InvalidReading) as exc:
        reading_from_mapping(GOOD | {"temperature_c": math.inf})
    assert exc.value.reason == "not_finite"


def _reference(sid: str, issued: int, version: str, horizons: tuple[int, ...], p, lo, hi) -> bytes:
    """The message as the contract defines it: the dataclass, with the scalar AQI function."""
    rows = []
    for h, pv, lv, hv in zip(horizons, p, lo, hi, strict=True):
        aqi, category = us_aqi(pv)
        rows.append(HorizonForecast(h, hour_to_iso(issued + h), pv, lv, hv, aqi, category))
    return forecast_to_json(Forecast(sid, hour_to_iso(issued), version, tuple(rows)))


def _check_batch(sids, hours, version, horizons, point, lo, hi) -> None:
    expected = [
        _reference(sids[i], hours[i], version, horizons, point[i].tolist(), lo[i].tolist(), hi[i].tolist())
        for i in range(len(sids))
    ]
    assert encode_forecasts(sids, hours, version, horizons, point, lo, hi) == expected


@pytest.mark.parametrize("version", ["v1", "ensemble-20261126T192412Z", 'odd "%b %s %%" \\ version'])
def test_batch_encoding_equals_dataclass_serialisation(version):
    rng = np.random.default_rng(7)
    horizons = tuple(range(1, 25))
    n = 300
    sids = [
        ["Dongsi", "Aotizhongxin", 'a,b "quoted" \\ %s', "Wanshouxigong-é", "[x],[y]", "s" * 64][i % 6]
        for i in range(n)
    ]
    hours = (378360 + rng.integers(0, 9000, n)).tolist()
    scale = rng.choice([1.0, 10.0, 100.0, 999.9], size=(n, 1))  # clean air to the top of the tables
    point = np.round(rng.uniform(0, 1, (n, len(horizons))) * scale, 1)
    point[0] = 0.0
    point[1] = 999.9
    point[2, 3] = 325.4  # AQI breakpoints
    point[3, :4] = [9.0, 9.1, 35.4, 35.5]
    lo = np.round(point * 0.6, 1)
    hi = np.round(point * 1.4 + 0.05, 1)
    _check_batch(sids, hours, version, horizons, point, lo, hi)


def test_values_outside_the_tables_take_the_plain_path_in_place():
    horizons = (1, 3, 6)
    point = np.array([[10.1, 20.2, 30.3], [1000.0, 5.0, 5.0], [12.3, 4.5, 6.7], [0.0, 1234.5, 2.0], [3.0, 2.0, 1.0]])
    lo = np.round(point * 0.5, 1)
    lo[2, 0] = -0.0  # "-0.0" in JSON: not the table's "0.0"
    lo[4, 1] = -1.5
    hi = np.round(point * 1.5, 1)
    _check_batch(["a", "b", "c", "d", "e"], [378360, 378361, 378360, 378362, 378360], "v1", horizons, point, lo, hi)


def test_batch_encoding_of_nothing_is_empty():
    empty = np.empty((0, 1))
    assert encode_forecasts([], [], "v1", (1,), empty, empty, empty) == []


def test_forecast_serialisation_is_deterministic_and_round_trips():
    f = Forecast(
        "s", "2013-03-01T00:00:00Z", "v1", (HorizonForecast(1, "2013-03-01T01:00:00Z", 10.0, 8.0, 12.5, 42, "Good"),)
    )
    assert forecast_to_json(f) == forecast_to_json(forecast_from_json(forecast_to_json(f)))
    assert forecast_from_json(forecast_to_json(f)) == f
