import math

import orjson
import pytest

from pm25.schema import Forecast, HorizonForecast, hour_to_iso
from stream_processor.hindcast import HindcastScorer


def forecast(station: str, issued: int, value: float) -> Forecast:
    return Forecast(
        station,
        hour_to_iso(issued),
        "v",
        tuple(HorizonForecast(h, hour_to_iso(issued + h), value, 0, 0, 0, "Good") for h in range(1, 25)),
    )


def test_scores_model_and_persistence_on_the_same_pairs():
    s = HindcastScorer()
    s.record(forecast("a", 100, 50.0), persistence=40.0)  # forecasts 50 for 101..124
    msg = s.observe("a", 101, 55.0)
    body = orjson.loads(msg)
    assert body["scored_horizons"] == [1]
    h1 = body["skill"][0]
    assert h1["n"] == 1 and h1["rmse"] == pytest.approx(5.0) and h1["persistence_rmse"] == pytest.approx(15.0)
    s.observe("a", 103, 50.0)
    assert s.total[3].n == 1 and s.total[3].mse == 0.0


def test_pairs_are_scored_once_and_missing_actuals_skipped():
    s = HindcastScorer()
    s.record(forecast("a", 100, 50.0), persistence=50.0)
    assert s.observe("a", 101, None) is None
    assert s.observe("a", 101, 60.0) is not None
    assert s.observe("a", 101, 60.0) is None  # replayed reading
    assert s.total[1].n == 1
    assert s.observe("unknown", 101, 1.0) is None


def test_rolling_rmse_converges():
    s = HindcastScorer()
    for t in range(300):
        s.record(forecast("a", t, 10.0), persistence=0.0)
        s.observe("a", t + 1, 12.0 if t % 2 else 8.0)
    assert math.sqrt(s.total[1].mse) == pytest.approx(2.0)
    assert math.sqrt(s.total[1].p_mse) == pytest.approx(10.0, rel=0.05)
