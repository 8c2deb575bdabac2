"""Baselines scored on exactly the same samples as the model: persistence (the next hours equal
the last reading), seasonal naive (the same hour one day earlier) and a gradient-boosting model
on lags, weather and calendar features (one regressor per reported horizon, fitted on the
training split only)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from pm25.features import FEATURES
from training.dataset import Samples, Series
from training.metrics import REPORT_HORIZONS

__all__ = ["GradientBoostingBaseline", "baseline_predictions"]

_LAGS = 24


def _gb_features(s: Samples) -> npt.NDArray[np.float32]:
    lags = s.x[:, -_LAGS:, FEATURES.index("log_pm25")]
    now = s.x[:, -1, :]
    now = now[:, ~np.isnan(now).all(axis=0)]  # drop features the dataset never has (precipitation)
    return np.concatenate([lags, now], axis=1)


class GradientBoostingBaseline:
    """sklearn HistGradientBoostingRegressor per reported horizon, on the last 24 h of log PM2.5
    and the newest hour's weather and calendar features."""

    def __init__(self, seed: int = 42) -> None:
        self.seed = seed
        self.models: dict[int, object] = {}

    def fit(self, train: Samples) -> GradientBoostingBaseline:
        from sklearn.ensemble import HistGradientBoostingRegressor

        x = _gb_features(train)
        for h in REPORT_HORIZONS:
            y = train.y[:, h - 1]
            ok = ~np.isnan(y)
            model = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=self.seed)
            self.models[h] = model.fit(x[ok], y[ok])
        return self

    def predict(self, s: Samples, horizons: int = 24) -> npt.NDArray[np.float32]:
        out = np.full((len(s.y), horizons), np.nan, dtype=np.float32)
        x = _gb_features(s)
        for h, model in self.models.items():
            out[:, h - 1] = np.clip(model.predict(x), 0.0, None)  # type: ignore[attr-defined]
        return out


def baseline_predictions(
    series: Series, s: Samples, gb: GradientBoostingBaseline | None = None, horizons: int = 24
) -> dict[str, npt.NDArray[np.float32]]:
    persistence = np.repeat(s.last_pm25[:, None], horizons, axis=1)
    pm = series.pm25.copy()
    # carry the last observation forward so both naive baselines are defined on every sample
    idx = np.where(~np.isnan(pm), np.arange(len(pm)), 0)
    np.maximum.accumulate(idx, out=idx)
    pm = pm[idx]
    h = np.arange(1, horizons + 1)
    seasonal = pm[s.end_index[:, None] + h[None, :] - 24]
    out = {"persistence": persistence.astype(np.float32), "seasonal_naive_24h": seasonal.astype(np.float32)}
    if gb is not None:
        out["gradient_boosting"] = gb.predict(s, horizons)
    return out
