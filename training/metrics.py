"""Skill metrics per horizon on the pairs whose target exists.

>>> import numpy as np
>>> m = horizon_metrics(np.array([[1.0], [3.0]]), np.array([[1.0], [1.0]]))
>>> m["rmse"], m["mae"]
([1.4142], [1.0])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.schema import KEY_HORIZONS

__all__ = ["REPORT_HORIZONS", "coverage", "horizon_metrics", "json_safe"]

#: The horizons reported in tables (all 24 are stored in the bundle).
REPORT_HORIZONS = KEY_HORIZONS


def horizon_metrics(actual: npt.NDArray[np.floating], pred: npt.NDArray[np.floating]) -> dict[str, list[float]]:
    """RMSE, MAE, R² and pair count for each column (horizon); NaN actuals are dropped."""
    out: dict[str, list[float]] = {"rmse": [], "mae": [], "r2": [], "n": []}
    for h in range(actual.shape[1]):
        ok = ~np.isnan(actual[:, h]) & ~np.isnan(pred[:, h])
        a = actual[ok, h].astype(np.float64)
        p = pred[ok, h].astype(np.float64)
        err = p - a
        sst = float(((a - a.mean()) ** 2).sum()) if len(a) else 0.0
        out["rmse"].append(round(float(np.sqrt(np.mean(err**2))), 4) if len(a) else float("nan"))
        out["mae"].append(round(float(np.mean(np.abs(err))), 4) if len(a) else float("nan"))
        out["r2"].append(round(1.0 - float((err**2).sum()) / sst, 4) if sst > 0 else float("nan"))
        out["n"].append(int(ok.sum()))
    return out


def coverage(
    actual: npt.NDArray[np.floating], lo: npt.NDArray[np.floating], hi: npt.NDArray[np.floating]
) -> list[float]:
    """Share of existing actuals inside [lo, hi], per horizon."""
    out = []
    for h in range(actual.shape[1]):
        ok = ~np.isnan(actual[:, h])
        inside = (actual[ok, h] >= lo[ok, h]) & (actual[ok, h] <= hi[ok, h])
        out.append(round(float(inside.mean()), 4) if ok.any() else float("nan"))
    return out


def json_safe(value: Any) -> Any:
    """NaN and infinities (a horizon a baseline does not forecast) become null: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
