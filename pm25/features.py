"""Features: the one code path from raw hourly readings to model input, used by training,
the stream processor and the backtest alike.

The pipeline has three pure, vectorised steps, each working on a batch of windows:

1. :func:`encode_reading` turns a Reading into a raw row of ``RAW_FIELDS`` (NaN = missing).
2. :func:`make_features` turns raw windows ``[B, W, len(RAW_FIELDS)]`` ending at given epoch hours
   into the named features ``[B, W, len(names)]``. It also says which windows are usable, the
   last observed PM2.5 and how many hours ago it was observed (the trailing gap).
3. :func:`scale` standardises the features with parameters fitted on training data only and
   shipped in the model bundle.

Features come in two kinds. The *legacy* ones (``log_pm25``, absolute weather, UTC calendar terms)
describe Beijing's absolute levels and clock. The *scale-free* ones carry over between stations,
pollution levels and time zones: PM2.5 in log space relative to the station's own recent history
(the window's mean and its newest level), a missingness mask and the hours since the last
observation, weather as changes and anomalies (dew-point depression, temperature anomaly against
the window, pressure tendency), wind as a vector. A bundle names the features it reads, so
:func:`make_features` computes only those.

Missing values: inside a window every raw column is carried forward from its last observation
(and backward for a gap at the start); a column never observed becomes 0 after scaling (its
training mean), so a missing weather field never stops a forecast. A window is usable when it has
a PM2.5 observation at most ``max_gap_hours`` before its end; gaps earlier in the window are
imputed and flagged by the mask, so a station that comes back after a long gap is forecast at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pm25.schema import WIND_DIRECTIONS, Reading

__all__ = [
    "FEATURES",
    "NB_FIELDS",
    "NETWORK_COLUMNS",
    "NETWORK_FEATURES",
    "OWN_FIELDS",
    "RAW_FIELDS",
    "WEATHER_FIELDS",
    "FeatureBatch",
    "encode_reading",
    "make_features",
    "network_features_alone",
    "postprocess",
    "scale",
    "scaled_without_network",
    "target_scale",
    "wind_degrees",
    "without_network",
]

F32 = npt.NDArray[np.float32]

#: The station's own raw columns per hour (wind direction as a unit vector, calm = 0,0).
OWN_FIELDS: tuple[str, ...] = (
    "pm25",
    "temperature_c",
    "dew_point_c",
    "pressure_hpa",
    "wind_speed_ms",
    "wind_east",
    "wind_north",
    "precipitation_mm",
)
#: What the station's network said about the hour (pm25.neighbours), filled when the network's
#: hour closes (stream_processor.engine); NaN for a station without neighbours.
NB_FIELDS: tuple[str, ...] = ("nb_rel", "nb_change1", "nb_change3", "nb_upwind_rel", "nb_upwind_change3", "nb_share")
#: Raw columns kept per hour in the station window: its own, then its network's.
RAW_FIELDS: tuple[str, ...] = OWN_FIELDS + NB_FIELDS
_PM, _T, _TD, _P, _WS, _WE, _WN, _RAIN = range(len(OWN_FIELDS))
_NB = len(OWN_FIELDS)

_WIND_VECTORS: dict[str | None, tuple[float, float]] = {
    name: (0.0, 0.0) if deg is None else (math.sin(math.radians(deg)), math.cos(math.radians(deg)))
    for name, deg in WIND_DIRECTIONS.items()
}
_NAN2 = (math.nan, math.nan)
#: The hours-since-observation feature is capped here (and divided by it).
_GAP_CAP = 48.0


def encode_reading(r: Reading) -> F32:
    """One reading -> one raw row (float32, NaN = missing; the network's columns NaN until the
    network's hour closes).

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
            *_NB_MISSING,
        ],
        dtype=np.float32,
    )


_NB_MISSING = (math.nan,) * len(NB_FIELDS)
#: The raw columns the station's network fills (the last axis of a window or a batch of them).
NETWORK_COLUMNS = slice(_NB, None)


#: The features the network's columns make (missing, and flagged, for a station alone).
NETWORK_FEATURES: tuple[str, ...] = (*NB_FIELDS, "nb_missing")


def network_features_alone(names: Sequence[str], mean: F32, std: F32, max_gap_hours: int) -> tuple[list[int], F32]:
    """The columns of the network's features in ``names`` and their scaled values in a window
    whose network columns are missing: what this feature code gives a lone station's window
    (computed by it, on a probe window), the same in every such window (checked here)."""
    cols = [j for j, name in enumerate(names) if name in NETWORK_FEATURES]
    probe = np.zeros((2, 3, len(RAW_FIELDS)), dtype=np.float32)
    probe[1] = 40.0  # two unlike windows: a value that depended on the window would show
    batch = make_features(without_network(probe), np.array([1000, 2000]), max_gap_hours, names)
    x = scale(batch.features, range(len(names)), mean, std)[:, :, cols]
    if not (x == x[:1, :1]).all():
        raise ValueError("a network feature of a window without its network depends on the window")
    return cols, x[0, 0].copy()


def scaled_without_network(x: F32, cols: Sequence[int], values: F32) -> F32:
    """Scaled graph input [B, W, F] as the same windows give with the network's columns missing
    (``cols``, ``values``: :func:`network_features_alone`), without computing the features again;
    a contract test compares the bytes with the features of :func:`without_network` windows."""
    out = x.copy()
    out[:, :, list(cols)] = values
    return out


def without_network(raw: F32) -> F32:
    """A copy of raw rows (one window or a batch) with the network's columns missing: the station
    as the model sees one alone (training hides them so in some windows; the adaptation weighs
    that forecast as an expert of its own)."""
    alone = raw.copy()
    alone[..., NETWORK_COLUMNS] = np.nan
    return alone


def wind_degrees(row: F32) -> float | None:
    """The wind direction (degrees the wind comes from) of a raw row; None when calm or missing."""
    east, north = float(row[_WE]), float(row[_WN])
    if math.isnan(east) or math.isnan(north) or (east == 0.0 and north == 0.0):
        return None
    return math.degrees(math.atan2(east, north)) % 360.0


def _nan(x: float | None) -> float:
    return math.nan if x is None else x


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Features of a batch of windows; rows where ``usable`` is False must not be forecast."""

    features: F32  # [B, W, len(names)]
    usable: npt.NDArray[np.bool_]  # [B]
    last_pm25: F32  # [B] last observed PM2.5 of the window (µg/m³), NaN where not usable
    gap_hours: npt.NDArray[np.int64]  # [B] hours from the last PM2.5 observation to the window's end
    level: F32  # [B] the window's typical PM2.5: exp of the mean observed log1p, minus 1 (µg/m³)
    mean_pm25: F32  # [B] the mean observed PM2.5 of the window (µg/m³; NaN when none)
    observations: npt.NDArray[np.int64]  # [B] the PM2.5 observations in the window (hours not NaN)
    observed: F32  # [B] the PM2.5 of the window's last hour as reported (NaN: not reported)


class _Ctx:
    """What the feature functions share for one batch of windows (computed once, on demand)."""

    def __init__(self, raw: F32, end_hours: npt.NDArray[np.int64]) -> None:
        self.raw = raw
        self.missing_pm = np.isnan(raw[:, :, _PM])
        self.filled = _fill(raw[:, :, :_NB])  # the network's columns are never filled
        self.pm = np.clip(self.filled[:, :, _PM], 0.0, None)
        self.log_pm = np.log1p(self.pm)
        w = raw.shape[1]
        self.hours = end_hours.astype(np.int64)[:, None] - np.arange(w - 1, -1, -1)[None, :]  # [B, W]
        self.since_obs = _since_last(self.missing_pm)  # [B, W]; w + 1 where never observed so far

    def col(self, i: int) -> F32:
        return self.filled[:, :, i]

    def log_pm_mean(self) -> F32:
        """Mean of the observed log PM2.5 of each window ([B, 1]; 0 where none is observed)."""
        obs = np.where(self.missing_pm, 0.0, self.log_pm)
        n = np.maximum((~self.missing_pm).sum(axis=1, keepdims=True), 1)
        return (obs.sum(axis=1, keepdims=True) / n).astype(np.float32)


def _since_last(missing: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Hours since the last observation at or before each step (0 when observed; ``step + 1``
    before the first observation)."""
    _b, w = missing.shape
    steps = np.arange(w)
    last_seen = np.maximum.accumulate(np.where(missing, -1, steps[None, :]), axis=1)
    return np.asarray(steps[None, :] - last_seen, dtype=np.int64)


def _diff(x: F32, lag: int) -> F32:
    """x[t] - x[t - lag] along axis 1 (0, no change, for the first ``lag`` hours)."""
    out = np.zeros_like(x)
    out[:, lag:] = x[:, lag:] - x[:, :-lag]
    return out


def _cycle(hours: npt.NDArray[np.int64], period: float, fn: Callable[[Any], Any]) -> F32:
    return np.asarray(fn((hours % period).astype(np.float32) * np.float32(2 * math.pi / period)), dtype=np.float32)


def _days(c: _Ctx) -> npt.NDArray[np.int64]:
    return c.hours // 24


#: Every feature :func:`make_features` can compute, by name; a bundle selects a subset.
_FEATURE_FNS: dict[str, Callable[[_Ctx], Any]] = {
    # legacy: absolute levels and the UTC clock (bundles trained on one site)
    "log_pm25": lambda c: c.log_pm,
    "pm25_imputed": lambda c: c.missing_pm,
    "temperature_c": lambda c: c.col(_T),
    "dew_point_c": lambda c: c.col(_TD),
    "pressure_hpa": lambda c: c.col(_P),
    "log_wind_speed": lambda c: np.log1p(np.clip(c.col(_WS), 0.0, None)),
    "wind_east": lambda c: c.col(_WE),
    "wind_north": lambda c: c.col(_WN),
    "log_precipitation": lambda c: np.log1p(np.clip(c.col(_RAIN), 0.0, None)),
    "hour_sin": lambda c: _cycle(c.hours, 24, np.sin),
    "hour_cos": lambda c: _cycle(c.hours, 24, np.cos),
    "dow_sin": lambda c: _cycle(_days(c) + 3, 7, np.sin),  # 1970-01-01 was a Thursday
    "dow_cos": lambda c: _cycle(_days(c) + 3, 7, np.cos),
    "doy_sin": lambda c: _cycle(_days(c), 365.2425, np.sin),
    "doy_cos": lambda c: _cycle(_days(c), 365.2425, np.cos),
    # scale-free: relative to the station's own recent history, changes and anomalies
    "log_pm25_rel_last": lambda c: c.log_pm - c.log_pm[:, -1:],
    "log_pm25_rel_mean": lambda c: c.log_pm - c.log_pm_mean(),
    "log_pm25_change_1h": lambda c: _diff(c.log_pm, 1),
    "hours_since_pm25": lambda c: np.minimum(c.since_obs, _GAP_CAP) / _GAP_CAP,
    "dew_point_depression": lambda c: np.clip(c.col(_T) - c.col(_TD), 0.0, None),
    # a filled column is NaN throughout or nowhere in a window, so a plain mean is the window's
    "temperature_anomaly": lambda c: c.col(_T) - c.col(_T).mean(axis=1, keepdims=True),
    "pressure_change_3h": lambda c: _diff(c.col(_P), 3),
    # which weather fields the station does not report (a filled column is missing throughout the
    # window or nowhere): the model tells "not measured" from "average" (imputed as the mean)
    "temperature_missing": lambda c: np.isnan(c.col(_T)),
    "dew_point_missing": lambda c: np.isnan(c.col(_TD)),
    "pressure_missing": lambda c: np.isnan(c.col(_P)),
    "wind_speed_missing": lambda c: np.isnan(c.col(_WS)),
    "wind_direction_missing": lambda c: np.isnan(c.col(_WE)),
    "precipitation_missing": lambda c: np.isnan(c.col(_RAIN)),
    # the network's (pm25.neighbours), as they were when each hour closed: not carried forward
    # (an hour the network did not report is missing, 0 after scaling, and flagged)
    **{name: (lambda i: lambda c: c.raw[:, :, i])(_NB + k) for k, name in enumerate(NB_FIELDS)},
    "nb_missing": lambda c: np.isnan(c.raw[:, :, _NB]),
}
#: The raw columns of each weather field (training hides whole fields to teach the missing case).
WEATHER_FIELDS: dict[str, tuple[int, ...]] = {
    "temperature_c": (_T,),
    "dew_point_c": (_TD,),
    "pressure_hpa": (_P,),
    "wind_speed_ms": (_WS,),
    "wind_direction": (_WE, _WN),
    "precipitation_mm": (_RAIN,),
}
FEATURES: tuple[str, ...] = tuple(_FEATURE_FNS)


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


def make_features(
    raw: F32, end_hours: npt.NDArray[np.int64], max_gap_hours: int, names: Sequence[str] = FEATURES
) -> FeatureBatch:
    """Raw windows ``[B, W, len(RAW_FIELDS)]`` whose last row is epoch hour ``end_hours[b]`` ->
    the features ``names`` (in that order).

    >>> raw = np.full((1, 4, len(RAW_FIELDS)), np.nan, dtype=np.float32)
    >>> raw[0, :2, 0] = [9.0, 19.0]
    >>> fb = make_features(raw, np.array([100]), max_gap_hours=2, names=["log_pm25_rel_last"])
    >>> bool(fb.usable[0]), float(fb.last_pm25[0]), int(fb.gap_hours[0])
    (True, 19.0, 2)
    """
    if raw.ndim != 3 or raw.shape[2] != len(RAW_FIELDS):
        raise ValueError(f"raw windows must be [B, W, {len(RAW_FIELDS)}], got {raw.shape}")
    unknown = [n for n in names if n not in _FEATURE_FNS]
    if unknown:
        raise ValueError(f"unknown features {unknown}")
    c = _Ctx(raw, end_hours)
    gap = c.since_obs[:, -1]
    usable = (gap <= max_gap_hours) & ~c.missing_pm.all(axis=1)
    with np.errstate(invalid="ignore"):
        cols = [np.asarray(_FEATURE_FNS[n](c), dtype=np.float32) for n in names]
    out = np.stack(cols, axis=2) if cols else np.zeros((*raw.shape[:2], 0), dtype=np.float32)
    last = np.where(usable, c.pm[:, -1], np.float32(np.nan)).astype(np.float32)
    level = np.expm1(c.log_pm_mean()[:, 0]).astype(np.float32)
    n_obs = (~c.missing_pm).sum(axis=1)
    total = np.where(c.missing_pm, 0.0, c.pm).sum(axis=1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_obs > 0, total / n_obs, np.nan).astype(np.float32)
    return FeatureBatch(
        features=out,
        usable=usable,
        last_pm25=last,
        gap_hours=gap,
        level=level,
        mean_pm25=mean,
        observations=n_obs,
        observed=raw[:, -1, _PM].copy(),
    )


def scale(features: F32, selected: Sequence[int], mean: F32, std: F32) -> F32:
    """Select feature columns and standardise; a column never observed becomes 0 (its mean)."""
    x = (features[:, :, list(selected)] - mean) / std
    return np.nan_to_num(x, nan=0.0).astype(np.float32, copy=False)


def target_scale(level: F32, spec_target: Mapping[str, Any]) -> npt.NDArray[np.float64]:
    """[B, 1] the unit of a ``level_delta`` target: the window's level plus an offset (µg/m³)."""
    return level[:, None].astype(np.float64) + float(spec_target.get("offset", 10.0))


def postprocess(
    model_out: F32,
    last_pm25: F32,
    spec_target: Mapping[str, Any],
    spec_intervals: Mapping[str, Any],
    level: F32 | None = None,
) -> tuple[F32, F32, F32]:
    """Model output -> (point, lo, hi) in µg/m³, as the bundle's spec says.

    ``target.kind`` is ``level_delta`` (output x (window level + offset) = change from the last
    PM2.5: a scale-free target, the same for a station at a quarter of Beijing's levels), ``delta``
    (output x scale = change from the last PM2.5; ``scale`` is a number or one per horizon) or
    ``log_delta`` (change of log1p PM2.5). The 80 % interval is the point forecast moved by the
    calibrated quantiles of log1p residuals per horizon (split conformal on validation data); the
    stream then adapts both per station (pm25.adapt).
    """
    kind = spec_target["kind"]
    last = last_pm25[:, None].astype(np.float64)
    scale_ = np.asarray(spec_target.get("scale", 1.0), dtype=np.float64)  # scalar or one per horizon
    out = model_out.astype(np.float64) * scale_
    if kind == "level_delta":
        if level is None:
            raise ValueError("a level_delta target needs the windows' level")
        point = last + out * target_scale(level, spec_target)
    elif kind == "log_delta":
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
