"""Baselines scored on exactly the same samples as the model: persistence (the next hours equal
the last reading), seasonal naive (the same hour one day earlier) and a gradient-boosting
yardstick (one regressor per reported horizon, fitted on the training split only).

The yardstick reads what the model reads, on the same scale-free footing: the last 24 hours of
log PM2.5 relative to the newest level and the newest hour of every feature; it predicts the same
``level_delta`` target, so it is as free of Beijing's absolute levels as the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.features import postprocess
from training.dataset import Samples
from training.metrics import REPORT_HORIZONS

__all__ = ["GradientBoostingBaseline", "baseline_predictions"]

_LAGS = 24
Level = Callable[[Samples], npt.NDArray[np.float32]]


def _gb_features(s: Samples) -> npt.NDArray[np.float32]:
    lags = s.x[:, -_LAGS:, 0]  # log_pm25_rel_last (the first model feature)
    now = s.x[:, -1, :]
    return np.nan_to_num(np.concatenate([lags, now], axis=1), nan=0.0)


class GradientBoostingBaseline:
    """sklearn HistGradientBoostingRegressor per reported horizon."""

    def __init__(self, seed: int = 42, iterations: int = 200) -> None:
        self.seed = seed
        self.iterations = iterations
        self.models: dict[int, object] = {}

    def fit(
        self, train: Samples, target: npt.NDArray[np.float32], spec_target: dict[str, Any], level: Level
    ) -> GradientBoostingBaseline:
        from sklearn.ensemble import HistGradientBoostingRegressor

        self.spec_target, self.level = spec_target, level
        x = _gb_features(train)
        for h in REPORT_HORIZONS:
            y = target[:, h - 1]
            ok = ~np.isnan(y)
            model = HistGradientBoostingRegressor(max_iter=self.iterations, learning_rate=0.05, random_state=self.seed)
            self.models[h] = model.fit(x[ok], y[ok])
        return self

    def predict(self, s: Samples, horizons: int = 24) -> npt.NDArray[np.float32]:
        out = np.full((len(s.y), horizons), np.nan, dtype=np.float32)
        x = _gb_features(s)
        for h, model in self.models.items():
            out[:, h - 1] = model.predict(x)  # type: ignore[attr-defined]
        zero = {"log_residual_lo": [0.0] * horizons, "log_residual_hi": [0.0] * horizons}
        point, _, _ = postprocess(out, s.last_pm25, self.spec_target, zero, self.level(s))
        point[:, [h - 1 for h in range(1, horizons + 1) if h not in self.models]] = np.nan
        return point


def baseline_predictions(
    s: Samples, gb: GradientBoostingBaseline | None = None, *_: Any, horizons: int = 24
) -> dict[str, npt.NDArray[np.float32]]:
    persistence = np.repeat(s.last_pm25[:, None], horizons, axis=1)
    out = {"persistence": persistence.astype(np.float32), "seasonal_naive_24h": s.seasonal.astype(np.float32)}
    if gb is not None:
        out["gradient_boosting"] = gb.predict(s, horizons)
    return out
