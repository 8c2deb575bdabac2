import math

import numpy as np
import orjson
import pytest

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


def _batch_of(forecasts: list[Forecast]) -> tuple[list[str], list[int], np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """encode_forecasts' arguments after the model version and horizons, from Forecasts."""
    shape = (len(forecasts), len(forecasts[0].horizons))
    amounts, aqi, category = np.zeros((*shape, 3)), np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.intp)
    names: list[str] = []
    for i, f in enumerate(forecasts):
        for j, h in enumerate(f.horizons):
            amounts[i, j] = (h.pm25, h.pm25_lo, h.pm25_hi)
            aqi[i, j] = h.aqi_us
            if h.aqi_us_category not in names:
                names.append(h.aqi_us_category)
            category[i, j] = names.index(h.aqi_us_category)
    return (
        [f.station_id for f in forecasts],
        [iso_to_hour(f.issued_at) for f in forecasts],
        amounts,
        aqi,
        category,
        names,
    )


def _encoded(version: str, horizons: tuple[int, ...], forecasts: list[Forecast]) -> list[bytes]:
    sids, hours, amounts, aqi, category, names = _batch_of(forecasts)
    return encode_forecasts(sids, hours, version, horizons, amounts, aqi, category, names)


def _forecast(sid: str, issued: int, version: str, horizons: tuple[int, ...], rows: list[tuple]) -> Forecast:
    return Forecast(
        sid,
        hour_to_iso(issued),
        version,
        tuple(HorizonForecast(h, hour_to_iso(issued + h), *row) for h, row in zip(horizons, rows, strict=True)),
    )


@pytest.mark.parametrize("version", ["v1", "ensemble-20261126T192412Z", 'odd "%b %s %%" \\ version'])
def test_batch_encoding_equals_dataclass_serialisation(version):
    from pm25.aqi import CATEGORIES

    rng = np.random.default_rng(7)
    horizons = (1, 3, 6, 12, 24)
    sids = ["Dongsi", "Aotizhongxin", 'a,b "quoted" \\ %s', "Wanshouxigong-é", "[x],[y]", "s" * 64]
    forecasts = []
    for n in range(60):
        pm = np.round(rng.uniform(0, 1000, len(horizons)) * rng.choice([0, 1e-3, 1, 1e3]), 1).tolist()
        rows = [
            (p, round(p * 0.6, 1), round(p * 1.4 + 0.05, 1), int(rng.integers(0, 501)), CATEGORIES[n % 6]) for p in pm
        ]
        forecasts.append(_forecast(sids[n % len(sids)], 378360 + int(rng.integers(0, 9000)), version, horizons, rows))
    forecasts.append(_forecast("zeros", 0, version, horizons, [(0.0, -0.0, 0.1, 0, "Good")] * len(horizons)))
    # values outside the text tables: not whole tenths, beyond 1999.9, negative, huge AQI, NaN
    odd = [(0.1 + 0.2, 2000.0, 1999.9, 1000, "Good"), (-1.5, 1e17, 123456.7, -3, "Hazardous")]
    odd += [(math.nan, 5e-324, 0.05, 999, "Good"), (1999.9, 0.0, 12.0, 2**40, "Good"), (7.0, 7.1, 7.2, 1, "Good")]
    forecasts.append(_forecast("odd", 378400, version, horizons, odd))
    assert _encoded(version, horizons, forecasts) == [forecast_to_json(f) for f in forecasts]


def test_batch_encoding_escapes_category_names():
    rows = [(10.1, 8.0, 12.5, 42, 'Good, "really" [sic] %s \\ é'), (0.0, 0.0, 0.3, 0, "Bad")]
    forecasts = [_forecast("s", 378360, "v1", (1, 2), rows), _forecast("t", 378361, "v1", (1, 2), rows[::-1])]
    assert _encoded("v1", (1, 2), forecasts) == [forecast_to_json(f) for f in forecasts]


def test_batch_encoding_of_nothing_is_empty():
    empty = np.empty((0, 1, 3))
    assert (
        encode_forecasts([], [], "v1", (1,), empty, np.empty((0, 1), dtype=int), np.empty((0, 1), dtype=int), []) == []
    )


def test_forecast_serialisation_is_deterministic_and_round_trips():
    f = Forecast(
        "s", "2013-03-01T00:00:00Z", "v1", (HorizonForecast(1, "2013-03-01T01:00:00Z", 10.0, 8.0, 12.5, 42, "Good"),)
    )
    assert forecast_to_json(f) == forecast_to_json(forecast_from_json(forecast_to_json(f)))
    assert forecast_from_json(forecast_to_json(f)) == f
