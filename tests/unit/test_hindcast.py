import math

import orjson
import pytest

from stream_processor.hindcast import HindcastScorer

H = list(range(1, 25))


def record(s: HindcastScorer, station: str, issued: int, value: float, persistence: float) -> None:
    s.record(station, issued, H, [value] * 24, persistence)


def test_scores_model_and_persistence_on_the_same_pairs():
    s = HindcastScorer()
    record(s, "a", 101, 50.0, persistence=40.0)  # forecasts 50 for 102..125
    body = orjson.loads(s.observe("a", 102, 55.0))
    assert body["scored_horizons"] == [1]
    h1 = body["skill"][0]
    assert h1["n"] == 1 and h1["rmse"] == pytest.approx(5.0) and h1["persistence_rmse"] == pytest.approx(15.0)
    assert s.observe("a", 104, 50.0) is None  # scored, published only every third hour
    assert s.total[3].n == 1 and s.total[3].mse == 0.0


def test_pairs_are_scored_once_and_missing_actuals_skipped():
    s = HindcastScorer()
    record(s, "a", 101, 50.0, persistence=50.0)
    assert s.observe("a", 102, None) is None
    assert s.observe("a", 102, 60.0) is not None
    assert s.observe("a", 102, 60.0) is None  # replayed reading
    assert s.total[1].n == 1
    assert s.observe("unknown", 101, 1.0) is None


def test_rolling_rmse_converges():
    s = HindcastScorer()
    for t in range(300):
        record(s, "a", t, 10.0, persistence=0.0)
        s.observe("a", t + 1, 12.0 if t % 2 else 8.0)
    assert math.sqrt(s.total[1].mse) == pytest.approx(2.0)
    assert math.sqrt(s.total[1].p_mse) == pytest.approx(10.0, rel=0.05)


def test_a_replayed_forecast_is_not_scored_again_and_old_issues_age_out():
    s = HindcastScorer()
    record(s, "a", 101, 50.0, persistence=50.0)
    assert s.observe("a", 102, 53.0) is not None and s.total[1].n == 1
    record(s, "a", 101, 50.0, persistence=50.0)  # the same forecast again (a replay)
    assert s.observe("a", 102, 53.0) is None and s.total[1].n == 1
    record(s, "a", 101 + 48, 70.0, persistence=70.0)  # 48 h later: the slot of 101 is reused
    s.observe("a", 101 + 6, 1.0)
    assert s.total[6].n == 0  # 101's forecast is gone
    record(s, "a", 101, 50.0, persistence=50.0)  # a re-issue older than the slot's is ignored
    s.observe("a", 101 + 12, 1.0)
    assert s.total[12].n == 0
