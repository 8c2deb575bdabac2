"""Readable one-line rendering of a forecast (used by ``pm25 forecasts`` and ``pm25 demo``)."""

from __future__ import annotations

from pm25.aqi import CATEGORIES
from pm25.schema import KEY_HORIZONS, Forecast

__all__ = ["format_forecast"]

_SHOWN = KEY_HORIZONS


def format_forecast(f: Forecast) -> str:
    """E.g. ``Dongsi       2013-03-02T05:00:00Z  +1h 85 [70-101]  ... worst Unhealthy at +6h  (mlp-...)``."""
    by_h = {h.h: h for h in f.horizons}
    parts = []
    for h in _SHOWN:
        if h in by_h:
            x = by_h[h]
            parts.append(f"+{h}h {x.pm25:.0f} [{x.pm25_lo:.0f}-{x.pm25_hi:.0f}]")
    worst = max(f.horizons, key=lambda x: (CATEGORIES.index(x.aqi_us_category), -x.h))
    return (
        f"{f.station_id:<13} {f.issued_at}  "
        + "  ".join(parts)
        + f"  worst: {worst.aqi_us_category} (AQI {worst.aqi_us}) at +{worst.h}h  [{f.model_version}]"
    )
