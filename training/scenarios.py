"""Stations unlike Beijing's, made from Beijing's: `pm25 evaluate --scenario NAME`.

Forecasts must hold at stations whose data the project does not have: another city, a coastal one
at a quarter of Beijing's levels, a network with some weather fields missing, a cheap sensor. Each
scenario here transforms the multi-site readings of the chosen year (deterministically: the noise
has a fixed seed) before they go, station by station, through the stream's code path, and the
issue's targets are checked on the result exactly as for the real data. They are proxies, not
other cities: what they change is what such a station would change for the forecaster.

* ``quarter``: PM2.5 at a quarter of the level (a cleaner, e.g. coastal, city);
* ``no-weather``: every weather field missing (a PM2.5-only sensor network);
* ``partial-weather``: dew point, pressure and wind direction missing (what cheap stations omit);
* ``time-zone``: event times shifted by 7 hours, so the daily cycle falls on other UTC hours
  (a city seven time zones away);
* ``cheap-sensor``: multiplicative noise (log-normal, sigma 0.25) and 5 % of readings lost;
* ``coastal``: all of the above at once;
* ``unrelated-network``: each station's series moved in time by its own whole number of weeks (1 to
  40, a checksum of its id; the year turned round, so the hours that leave one end come back at
  the other): with ``--network``, a network whose stations do not share air, the case where the
  neighbours of a station say nothing about its next hours (alone, each station is itself).
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable
from dataclasses import replace

from pm25.schema import Reading

__all__ = ["SCENARIOS", "apply_scenario", "shift_hours"]

_SHIFT_HOURS = 7


def _quarter(rs: list[Reading]) -> list[Reading]:
    return [r if r.pm25 is None else replace(r, pm25=round(r.pm25 / 4, 1)) for r in rs]


def _no_weather(rs: list[Reading]) -> list[Reading]:
    return [Reading(r.station_id, r.hour, pm25=r.pm25) for r in rs]


def _partial_weather(rs: list[Reading]) -> list[Reading]:
    return [replace(r, dew_point_c=None, pressure_hpa=None, wind_direction=None) for r in rs]


def _time_zone(rs: list[Reading]) -> list[Reading]:
    return [replace(r, hour=r.hour + _SHIFT_HOURS) for r in rs]


def _cheap_sensor(rs: list[Reading]) -> list[Reading]:
    if not rs:
        return rs
    rng = random.Random(zlib.crc32(rs[0].station_id.encode()))  # noqa: S311 - reproducible noise, not security
    out = []
    for r in rs:
        lost, noise = rng.random() < 0.05, math.exp(rng.gauss(0.0, 0.25))
        if lost:
            continue
        out.append(r if r.pm25 is None else replace(r, pm25=round(min(r.pm25 * noise, 2000.0), 1)))
    return out


def _unrelated(rs: list[Reading]) -> list[Reading]:
    if not rs:
        return rs
    first, span = rs[0].hour, rs[-1].hour + 1 - rs[0].hour
    weeks = 1 + zlib.crc32(rs[0].station_id.encode()) % 40
    moved = [replace(r, hour=first + (r.hour - first + weeks * 168) % span) for r in rs]
    return sorted(moved, key=lambda r: r.hour)


def _coastal(rs: list[Reading]) -> list[Reading]:
    return _cheap_sensor(_time_zone(_partial_weather(_quarter(rs))))


SCENARIOS: dict[str, Callable[[list[Reading]], list[Reading]]] = {
    "quarter": _quarter,
    "no-weather": _no_weather,
    "partial-weather": _partial_weather,
    "time-zone": _time_zone,
    "cheap-sensor": _cheap_sensor,
    "coastal": _coastal,
    "unrelated-network": _unrelated,
}


def apply_scenario(name: str, readings: list[Reading]) -> list[Reading]:
    """One station's readings (in event-time order) as the scenario sees them."""
    return SCENARIOS[name](readings)


def shift_hours(name: str) -> int:
    """How far the scenario moves event time (the scored year moves with it)."""
    return _SHIFT_HOURS if name in ("time-zone", "coastal") else 0
