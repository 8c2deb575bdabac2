import math

import numpy as np
import pytest

from pm25.features import FEATURES, RAW_FIELDS, encode_reading, make_features, postprocess
from pm25.schema import Reading

W = 12


def raw_window(pm: list[float | None]) -> np.ndarray:
    raw = np.full((1, len(pm), len(RAW_FIELDS)), np.nan, dtype=np.float32)
    raw[0, :, 0] = [np.nan if v is None else v for v in pm]
    raw[0, :, 1] = 5.0
    return raw


def test_encode_reading_wind_vector_and_missing():
    row = encode_reading(Reading("s", 0, pm25=None, wind_direction="E", wind_speed_ms=2.0))
    assert math.isnan(row[0])
    assert row[5] == pytest.approx(1.0) and row[6] == pytest.approx(0.0, abs=1e-6)
    calm = encode_reading(Reading("s", 0, wind_direction="calm"))
    assert calm[5] == 0.0 and calm[6] == 0.0
    unknown = encode_reading(Reading("s", 0))
    assert math.isnan(unknown[5])


def test_short_gap_is_imputed_by_carrying_forward():
    pm = [10.0] * 6 + [None, None] + [20.0] * 3 + [None]
    names = ["log_pm25", "pm25_imputed", "hours_since_pm25"]
    fb = make_features(raw_window(pm), np.array([1000]), max_gap_hours=3, names=names)
    assert fb.usable[0]
    assert fb.features[0, 6, 0] == pytest.approx(math.log1p(10.0))  # filled from hour 5
    assert fb.features[0, 6, 1] == 1.0  # imputed flag
    assert fb.features[0, 7, 2] == pytest.approx(2 / 48)  # two hours since the last observation
    assert fb.last_pm25[0] == pytest.approx(20.0)  # last hour missing -> last observation
    assert fb.gap_hours[0] == 1


def test_leading_gap_is_back_filled():
    pm = [None, None] + [30.0] * (W - 2)
    fb = make_features(raw_window(pm), np.array([1000]), max_gap_hours=3)
    assert fb.usable[0] and fb.features[0, 0, FEATURES.index("log_pm25")] == pytest.approx(math.log1p(30.0))


def test_only_a_trailing_gap_longer_than_the_limit_makes_a_window_unusable():
    back = [10.0] * 4 + [None] * 5 + [10.0] * 3  # a 5-hour gap inside: the station is back, forecast it
    assert make_features(raw_window(back), np.array([1000]), max_gap_hours=1).usable[0]
    trailing = [10.0] * 7 + [None] * 5  # the last 5 hours missing
    assert not make_features(raw_window(trailing), np.array([1000]), max_gap_hours=4).usable[0]
    fb = make_features(raw_window(trailing), np.array([1000]), max_gap_hours=5)
    assert fb.usable[0] and fb.gap_hours[0] == 5 and fb.last_pm25[0] == pytest.approx(10.0)
    assert not make_features(raw_window([None] * W), np.array([1000]), max_gap_hours=99).usable[0]


def test_missing_weather_never_stops_a_forecast():
    raw = raw_window([12.0] * W)
    raw[0, :, 1:] = np.nan  # no weather at all
    fb = make_features(raw, np.array([1000]), max_gap_hours=3)
    assert fb.usable[0]
    weather = [FEATURES.index(n) for n in ("temperature_anomaly", "dew_point_depression", "temperature_c")]
    assert np.isnan(fb.features[0][:, weather]).all()  # left to the scaler: NaN becomes the training mean
    assert not np.isnan(fb.features[0][:, FEATURES.index("log_pm25_rel_last")]).any()


def test_scale_free_features_do_not_depend_on_the_level():
    pm = [10.0, 12.0, 15.0, None, 20.0, 18.0, 16.0, 15.0, 14.0, 15.0, 16.0, 17.0]
    names = ["log_pm25_rel_last", "log_pm25_rel_mean", "pm25_imputed", "hours_since_pm25"]
    low = make_features(raw_window([None if v is None else v for v in pm]), np.array([1000]), 3, names)
    high = make_features(raw_window([None if v is None else v * 4 + 3 for v in pm]), np.array([1000]), 3, names)
    # log1p(4x + 3) = log(4) + log1p(x): a station at four times the level looks the same
    np.testing.assert_allclose(low.features, high.features, atol=1e-5)
    assert high.level[0] == pytest.approx(4 * low.level[0] + 3, rel=1e-5)


def test_calendar_features_follow_event_time():
    fb = make_features(raw_window([1.0] * W), np.array([24 * 1000 + 6]), max_gap_hours=1, names=["hour_sin"])
    assert fb.features[0, -1, 0] == pytest.approx(1.0)  # 06:00 UTC -> sin(pi/2)


def test_batch_rows_are_independent():
    a = raw_window([10.0] * W)
    b = raw_window([None] * 3 + [50.0] * (W - 3))
    both = make_features(np.concatenate([a, b]), np.array([500, 900]), 3)
    one = make_features(b, np.array([900]), 3)
    np.testing.assert_array_equal(both.features[1], one.features[0])


def test_postprocess_level_delta_is_in_units_of_the_window_level():
    spec_i = {"log_residual_lo": [0.0], "log_residual_hi": [0.0]}
    point, _, _ = postprocess(
        np.array([[0.5]], dtype=np.float32),
        np.array([40.0], dtype=np.float32),
        {"kind": "level_delta", "offset": 10.0},
        spec_i,
        np.array([30.0], dtype=np.float32),
    )
    assert point[0, 0] == pytest.approx(40.0 + 0.5 * (30.0 + 10.0))


def test_postprocess_delta_and_intervals():
    spec_i = {"log_residual_lo": [-0.5, -0.5], "log_residual_hi": [0.5, 0.5]}
    point, lo, hi = postprocess(
        np.array([[0.1, -1.0]], dtype=np.float32),
        np.array([50.0], dtype=np.float32),
        {"kind": "delta", "scale": 100.0},
        spec_i,
    )
    assert point[0, 0] == pytest.approx(60.0) and point[0, 1] == 0.0  # clipped at zero
    assert lo[0, 0] < point[0, 0] < hi[0, 0]
    assert lo[0, 1] == 0.0 and hi[0, 1] >= 0.0
