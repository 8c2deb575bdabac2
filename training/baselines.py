"""Baselines scored on exactly the same samples as the model: persistence (the next hours equal
the last reading) and seasonal naive (the same hour one day earlier)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from training.dataset import Samples, Series

__all__ = ["baseline_predictions"]


def baseline_predictions(series: Series, s: Samples, horizons: int = 24) -> dict[str, npt.NDArray[np.float32]]:
    persistence = np.repeat(s.last_pm25[:, None], horizons, axis=1)
    pm = series.pm25.copy()
    # carry the last observation forward so both baselines are defined on every sample
    idx = np.where(~np.isnan(pm), np.arange(len(pm)), 0)
    np.maximum.accumulate(idx, out=idx)
    pm = pm[idx]
    h = np.arange(1, horizons + 1)
    seasonal = pm[s.end_index[:, None] + h[None, :] - 24]
    return {"persistence": persistence.astype(np.float32), "seasonal_naive_24h": seasonal.astype(np.float32)}
