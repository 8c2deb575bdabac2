"""What the dashboard shows, built from the topics (readings, forecasts, scores, station metadata);
pure and bounded (tested without Kafka).

>>> from pm25.schema import Reading
>>> s = DashboardState()
>>> s.add_reading(Reading("Dongsi", 378360, pm25=42.0))
>>> s.stations()[0]["latest_reading"]["aqi_us_category"]
'Unhealthy for Sensitive Groups'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pm25.aqi import CATEGORIES, us_aqi
from pm25.neighbours import MAX_NEIGHBOUR_KM, bearing_deg
from pm25.schema import WIND_DIRECTIONS, Forecast, Reading, hour_to_iso, iso_to_hour
from pm25.stations import Station, nearest

__all__ = ["LEADS", "NEIGHBOURS_SHOWN", "DashboardState"]

#: Lead times of the past forecasts drawn against the actual readings on a station page.
LEADS = (1, 6, 24)
#: A station page lists this many of its nearest neighbours (same network).
NEIGHBOURS_SHOWN = 6
_COMPASS = [name for name in WIND_DIRECTIONS if name != "calm"]


def _compass(bearing: float) -> str:
    return _COMPASS[round(bearing / 22.5) % 16]


@dataclass
class _Station:
    readings: dict[int, float | None] = field(default_factory=dict)
    forecasts: dict[int, Forecast] = field(default_factory=dict)
    skill: list[dict[str, Any]] = field(default_factory=list)
    adaptation: dict[str, Any] = field(default_factory=dict)
    newest: int = 0


def _latest_reading(st: _Station) -> dict[str, Any] | None:
    """The station's newest PM2.5 reading with its AQI, or None before its first."""
    observed = [(h, v) for h, v in st.readings.items() if v is not None]
    if not observed:
        return None
    h, value = max(observed)
    aqi, cat = us_aqi(value)
    return {"timestamp": hour_to_iso(h), "pm25": value, "aqi_us": aqi, "aqi_us_category": cat}


class DashboardState:
    def __init__(self, history_hours: int = 72) -> None:
        self.history_hours = history_hours
        self._stations: dict[str, _Station] = {}
        self._meta: dict[str, Station] = {}  # station metadata (the compacted station topic)
        self.version = 0  # bumped on every change (the pages poll or listen for it)

    def _station(self, station_id: str, hour: int) -> _Station:
        st = self._stations.setdefault(station_id, _Station())
        if hour > st.newest:
            st.newest = hour
            horizon = hour - self.history_hours - 24
            st.readings = {h: v for h, v in st.readings.items() if h >= horizon}
            st.forecasts = {h: f for h, f in st.forecasts.items() if h >= horizon}
        self.version += 1
        return st

    def add_reading(self, r: Reading) -> None:
        self._station(r.station_id, r.hour).readings[r.hour] = r.pm25

    def add_forecast(self, f: Forecast) -> None:
        issued = iso_to_hour(f.issued_at)
        self._station(f.station_id, issued).forecasts[issued] = f

    def add_station(self, station: Station) -> None:
        """Station metadata: the newest record per station wins (as on the compacted topic)."""
        self._meta[station.station_id] = station
        self.version += 1

    def add_score(self, body: dict[str, Any]) -> None:
        st = self._station(str(body["station_id"]), iso_to_hour(body["target_time"]))
        st.skill = list(body.get("skill", []))
        if body.get("adaptation"):
            st.adaptation = dict(body["adaptation"])

    # -- views -------------------------------------------------------------------------------
    def stations(self) -> list[dict[str, Any]]:
        return [self._summary(sid, st) for sid, st in sorted(self._stations.items())]

    def station(self, station_id: str) -> dict[str, Any] | None:
        st = self._stations.get(station_id)
        if st is None:
            return None
        start = st.newest - self.history_hours + 1
        readings = [
            {"timestamp": hour_to_iso(h), "pm25": st.readings.get(h)}
            for h in range(start, st.newest + 1)
            if h in st.readings
        ]
        past: dict[str, list[dict[str, Any]]] = {}
        for lead in LEADS:
            points = []
            for issued, f in sorted(st.forecasts.items()):
                target = issued + lead
                if start <= target <= st.newest and lead <= len(f.horizons):
                    x = f.horizons[lead - 1]
                    points.append({"target_time": x.target_time, "pm25": x.pm25})
            past[str(lead)] = points
        summary = self._summary(station_id, st)
        return summary | {
            "readings": readings,
            "past_forecasts": past,
            "skill": st.skill,
            "adaptation": st.adaptation,
            "neighbours": self._neighbours(station_id),
        }

    def _neighbours(self, station_id: str) -> list[dict[str, Any]]:
        """The nearest stations of the same network that its forecasts look at (within
        pm25.neighbours.MAX_NEIGHBOUR_KM), with where they are and what they read now."""
        me = self._meta.get(station_id)
        if me is None:
            return []
        out = []
        for other, km in nearest(me, self._meta.values(), NEIGHBOURS_SHOWN):
            if km > MAX_NEIGHBOUR_KM:
                break  # nearest first: the rest are farther
            st = self._stations.get(other.station_id)
            out.append(
                {
                    "station_id": other.station_id,
                    "name": other.name,
                    "distance_km": round(km, 1),
                    "direction": _compass(bearing_deg(me, other)),
                    "latest_reading": _latest_reading(st) if st else None,
                }
            )
        return out

    def _summary(self, station_id: str, st: _Station) -> dict[str, Any]:
        latest_reading = _latest_reading(st)
        forecast = None
        worst = None
        if st.forecasts:
            f = st.forecasts[max(st.forecasts)]
            forecast = {
                "issued_at": f.issued_at,
                "model_version": f.model_version,
                "horizons": [
                    {
                        "h": x.h,
                        "target_time": x.target_time,
                        "pm25": x.pm25,
                        "pm25_lo": x.pm25_lo,
                        "pm25_hi": x.pm25_hi,
                        "aqi_us": x.aqi_us,
                        "aqi_us_category": x.aqi_us_category,
                    }
                    for x in f.horizons
                ],
            }
            w = max(f.horizons, key=lambda x: (CATEGORIES.index(x.aqi_us_category), -x.h))
            worst = {"aqi_us_category": w.aqi_us_category, "aqi_us": w.aqi_us, "h": w.h, "target_time": w.target_time}
        skill_1h = next((s for s in st.skill if s.get("h") == 1), None)
        meta = self._meta.get(station_id)
        return {
            "station_id": station_id,
            "location": None
            if meta is None
            else {"name": meta.name, "latitude": meta.latitude, "longitude": meta.longitude, "network": meta.network},
            "latest_reading": latest_reading,
            "forecast": forecast,
            "worst_next_24h": worst,
            "skill_1h": skill_1h,
        }
