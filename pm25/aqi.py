"""US EPA Air Quality Index for PM2.5 (breakpoints of the 2024 revision, 24-hour PM2.5).

>>> us_aqi(9.0), us_aqi(9.1), us_aqi(35.4), us_aqi(35.5)
((50, 'Good'), (51, 'Moderate'), (100, 'Moderate'), (101, 'Unhealthy for Sensitive Groups'))
>>> us_aqi(500.0)
(500, 'Hazardous')
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["CATEGORIES", "us_aqi", "us_aqi_array"]

# (C_lo, C_hi, I_lo, I_hi, category), concentrations in µg/m³ truncated to 0.1.
_BREAKPOINTS: tuple[tuple[float, float, int, int, str], ...] = (
    (0.0, 9.0, 0, 50, "Good"),
    (9.1, 35.4, 51, 100, "Moderate"),
    (35.5, 55.4, 101, 150, "Unhealthy for Sensitive Groups"),
    (55.5, 125.4, 151, 200, "Unhealthy"),
    (125.5, 225.4, 201, 300, "Very Unhealthy"),
    (225.5, 325.4, 301, 500, "Hazardous"),
)

#: Category names in increasing order of severity.
CATEGORIES: tuple[str, ...] = tuple(b[4] for b in _BREAKPOINTS)


def us_aqi(pm25: float) -> tuple[int, str]:
    """AQI value and category for a PM2.5 concentration. Above 325.4 µg/m³ the index is
    reported as 500 (the top of the scale), category Hazardous."""
    c = math.floor(max(pm25, 0.0) * 10.0 + 1e-9) / 10.0
    for c_lo, c_hi, i_lo, i_hi, name in _BREAKPOINTS:
        if c <= c_hi:
            return round((i_hi - i_lo) / (c_hi - c_lo) * (c - c_lo) + i_lo), name
    return 500, CATEGORIES[-1]


_C_LO = np.array([b[0] for b in _BREAKPOINTS])
_C_HI = np.array([b[1] for b in _BREAKPOINTS])
_I_LO = np.array([b[2] for b in _BREAKPOINTS], dtype=np.float64)
_I_HI = np.array([b[3] for b in _BREAKPOINTS], dtype=np.float64)


def us_aqi_array(pm25: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Vectorised :func:`us_aqi`: (AQI values, indices into CATEGORIES), same results element-wise.

    >>> aqi, cat = us_aqi_array(np.array([9.0, 35.5, 999.0]))
    >>> aqi.tolist(), [CATEGORIES[i] for i in cat]
    ([50, 101, 500], ['Good', 'Unhealthy for Sensitive Groups', 'Hazardous'])
    """
    c = np.floor(np.maximum(pm25, 0.0) * 10.0 + 1e-9) / 10.0
    idx = np.searchsorted(_C_HI, c, side="left")
    top = idx >= len(_BREAKPOINTS)
    j = np.minimum(idx, len(_BREAKPOINTS) - 1)
    value = (_I_HI[j] - _I_LO[j]) / (_C_HI[j] - _C_LO[j]) * (c - _C_LO[j]) + _I_LO[j]
    aqi = np.where(top, 500, np.rint(value)).astype(np.int64)
    return aqi, j.astype(np.int64)
