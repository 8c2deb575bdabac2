"""Features: the one code path from raw hourly readings to model input, used by training,
the stream processor and the backtest alike.

The pipeline has three pure, vectorised steps, each working on a batch of windows:

1. :func:`encode_reading` turns a Reading into a raw row of ``RAW_FIELDS`` (NaN = missing).
2. :func:`make_features` turns raw windows ``[B, W, len(RAW_FIELDS)]`` ending at given epoch hours
   into features ``[B, W, len(FEATURES)]``: imputation of bounded gaps, log transforms, wind
   vector, calendar terms. It also says which windows are usable and the last (imputed) PM2.5.
3. :func:`scale` standardises the selected features with parameters fitted on training data
   only and shipped in the model bundle.

The imputation rule: inside a window, missing values are carried forward from the last
observation (and backward for a gap at the start of the window); a window whose longest run of
missing PM2.5 is longer than ``max_gap_hours`` is not usable, and the station's forecasts are
suspended until it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.schema import WIND_DIRECTIONS, Reading

__all__ = [
    "FEATURES",
    "RAW_FIELDS",
    "FeatureBatch",
    "encode_reading",
    "make_features",
    "postprocess",
    "scale",
]

F32 = npt.NDArray[np.float32]

#: Raw columns kept per hour in the station window (wind direction as a unit vector, calm = 0,0).
RAW_FIELDS: tuple[str, ...] = (
    "pm25",
    "temperature_c",
    "dew_point_c",
    "pressure_hpa",
    "wind_speed_ms",
    "wind_east",
    "wind_north",
    "precipitation_mm",
)

#: Every feature :func:`make_features` computes; a bundle selects a subset by name.
FEATURES: tuple[str, ...] = (
    "log_pm25",
    "pm25_imputed",
    "temperature_c",
    "dew_point_c",
    "pressure_hpa",
    "log_wind_speed",
    "wind_east",
    "wind_north",
    "log_precipitation",
    "hour_sin",
    "hour_cos",
    "dow_sin",
    "dow_cos",
    "doy_sin",
    "doy_cos",
)

_WIND_VECTORS: dict[str | None, tuple[float, float]] = {
    name: (0.0, 0.0) if deg is None else (math.sin(math.radians(deg)), math.cos(math.radians(deg)))
    for name, deg in WIND_DIRECTIONS.items()
}
_NAN2 = (math.nan, math.nan)


def encode_reading(r: Reading) -> F32:
    """One reading -> one raw row (float32, NaN = missing).

    >>> encode_reading(Reading("s", 0, pm25=10.0, wind_direction="calm"))[[0, 5, 6]].tolist()
    [10.0, 0.0, 0.0]
    """
    east, north = _WIND_VECTORS.get(r.wind_direction, _NAN2)
    return np.array(
        [
            _nan(r.pm25),
            _nan(r.temperature_c),
            _nan(r.dew_point_c),
            _nan(r.pressure_hpa),
            _nan(r.wind_speed_ms),
            east,
            north,
            _nan(r.precipitation_mm),
        ],
        dtype=np.float32,
    )


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Features of a batch of windows; rows where ``usable`` is False must not be forecast."""

    features: F32  # [B, W, len(FEATURES)]
    usable: npt.NDArray[np.bool_]  # [B]
    last_pm25: F32  # [B] last PM2.5 of the window after imputation (µg/m³)


def _longest_missing_run(missing: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Longest run of True along axis 1 of a [B, W] mask: at each step, the distance to the last
    False at or before it (-1 before the start), maximised over the window."""
    _b, w = missing.shape
    steps = np.arange(w)
    last_seen = np.maximum.accumulate(np.where(missing, -1, steps[None, :]), axis=1)
    return np.asarray((steps[None, :] - last_seen).max(axis=1), dtype=np.int64)


def _fill(x: F32) -> F32:
    """Carry the last observation forward along axis 1, then the first one backward.

    Columns with no observation at all stay NaN.
    """
    _b, w, _c = x.shape
    valid = ~np.isnan(x)
    idx = np.where(valid, np.arange(w)[None, :, None], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    out = np.take_along_axis(x, idx, axis=1)
    first = np.argmax(valid, axis=1)  # [B, C], 0 when no observation
    first_vals = np.take_along_axis(x, first[:, None, :], axis=1)  # [B, 1, C]
    return np.where(np.isnan(out), first_vals, out).astype(np.float32, copy=False)


def make_features(raw: F32, end_hours: npt.NDArray[np.int64], max_gap_hours: int) -> FeatureBatch:
    """Raw windows ``[B, W, len(RAW_FIELDS)]`` whose last row is epoch hour ``end_hours[b]``."""
    if raw.ndim != 3 or raw.shape[2] != len(RAW_FIELDS):
        raise ValueError(f"raw windows must be [B, W, {len(RAW_FIELDS)}], got {raw.shape}")
    _b, w, _ = raw.shape
    missing_pm = np.isnan(raw[:, :, 0])
    usable = (_longest_missing_run(missing_pm) <= max_gap_hours) & ~missing_pm.all(axis=1)
    filled = _fill(raw)
    hours = end_hours.astype(np.int64)[:, None] - np.arange(w - 1, -1, -1)[None, :]  # [B, W]
    hod = (hours % 24).astype(np.float32) * np.float32(2 * math.pi / 24)
    days = hours // 24
    dow = ((days + 3) % 7).astype(np.float32) * np.float32(2 * math.pi / 7)  # 1970-01-01 = Thu
    doy = (days % 365.2425).astype(np.float32) * np.float32(2 * math.pi / 365.2425)
    pm = np.clip(filled[:, :, 0], 0.0, None)
    out = np.stack(
        [
            np.log1p(pm),
            missing_pm.astype(np.float32),
            filled[:, :, 1],
            filled[:, :, 2],
            filled[:, :, 3],
            np.log1p(np.clip(filled[:, :, 4], 0.0, None)),
            filled[:, :, 5],
            filled[:, :, 6],
            np.log1p(np.clip(filled[:, :, 7], 0.0, None)),
            np.sin(hod),
            np.cos(hod),
            np.sin(dow),
            np.cos(dow),
            np.sin(doy),
            np.cos(doy),
        ],
        axis=2,
    ).astype(np.float32, copy=False)
    last = np.where(usable, pm[:, -1], np.float32(np.nan)).astype(np.float32)
    return FeatureBatch(features=out, usable=usable, last_pm25=last)


def scale(features: F32, selected: Sequence[int], mean: F32, std: F32) -> F32:
    """Select feature columns and standardise; a column never observed becomes 0 (its mean)."""
    x = (features[:, :, list(selected)] - mean) / std
    return np.nan_to_num(x, nan=0.0).astype(np.float32, copy=False)


def postprocess(
    model_out: F32, last_pm25: F32, spec_target: Mapping[str, Any], spec_intervals: Mapping[str, Any]
) -> tuple[F32, F32, F32]:
    """Model output -> (point, lo, hi) in µg/m³, as the bundle's spec says.

    ``target.kind`` is ``delta`` (output x scale = change from the last PM2.5; ``scale`` is a number
    or one per horizon, so every horizon weighs the same in the training loss) or ``log_delta``
    (change of log1p PM2.5). The 80 % interval is the point forecast moved by the calibrated
    quantiles of log1p residuals per horizon (split conformal on validation data).
    """
    kind = spec_target["kind"]
    last = last_pm25[:, None].astype(np.float64)
    scale_ = np.asarray(spec_target.get("scale", 1.0), dtype=np.float64)  # scalar or one per horizon
    out = model_out.astype(np.float64) * scale_
    if kind == "log_delta":
        point = np.expm1(np.log1p(last) + out)
    elif kind == "delta":
        point = last + out
    else:
        raise ValueError(f"unknown target kind {kind!r}")
    point = np.clip(point, 0.0, None)
    base = np.log1p(point)
    lo = np.expm1(base + np.asarray(spec_intervals["log_residual_lo"], dtype=np.float64)[None, :])
    hi = np.expm1(base + np.asarray(spec_intervals["log_residual_hi"], dtype=np.float64)[None, :])
    return (
        point.astype(np.float32),
        np.clip(lo, 0.0, point).astype(np.float32),
        np.maximum(hi, point).astype(np.float32),
    )
